"""The `probes` analyser: can the post model's hidden states still be decoded into the forgotten answers?"""

from __future__ import annotations

import numpy as np

from palimpsest.capture import layer_of, resid_post_sites
from palimpsest.probes.data import ProbeSplit, gather, probe_splits
from palimpsest.probes.figures import per_layer_figure
from palimpsest.probes.linear import fit_probe, grouped_cv_accuracy, shuffle_by_group, true_label_scores
from palimpsest.stats import calibrate
from palimpsest.types import AuditConfig, Result, inconclusive, register

VARIANTS = ("pre", "post", "floor", "transfer", "shuffled")


def _site_scores(acts, models: list[str], site: str, position: str, splits: list[ProbeSplit], *, c: float,
                 seed: int) -> dict:
    """Per-item true-label probability and correctness of every probe variant at one site, over all attributes."""
    sets = sorted({name for split in splits for name, _ in (*split.train, *split.test)})
    feats = {m: {s: acts.get(m, site, s, position) for s in sets} for m in models}
    prob: dict[str, list] = {v: [] for v in VARIANTS}
    correct: dict[str, list] = {v: [] for v in VARIANTS}
    for split in splits:
        probes = {}
        for m in models:
            x_train, x_test = gather(feats[m], split.train), gather(feats[m], split.test)
            probes[m] = fit_probe(x_train, split.train_labels, c=c)
            p, k = true_label_scores(probes[m], x_test, split.test_labels)
            prob[m].append(p)
            correct[m].append(k)
        x_post_test = gather(feats["post"], split.test)
        # transfer: the probe learned on the pre model, read on the post model's representations
        p, k = true_label_scores(probes["pre"], x_post_test, split.test_labels)
        prob["transfer"].append(p)
        correct["transfer"].append(k)
        shuffled = shuffle_by_group(split.train_labels, split.train_groups, seed=seed)
        control = fit_probe(gather(feats["post"], split.train), shuffled, c=c)
        p, k = true_label_scores(control, x_post_test, split.test_labels)
        prob["shuffled"].append(p)
        correct["shuffled"].append(k)
    return {"prob": {v: np.concatenate(prob[v]) for v in VARIANTS if prob[v]},
            "acc": {v: np.concatenate(correct[v]) for v in VARIANTS if correct[v]}}


def _cv_accuracy(acts, model: str, site: str, position: str, splits: list[ProbeSplit], *, folds: int, c: float
                 ) -> float | None:
    """Grouped (by subject) cross-validated accuracy on the training pool: how well the probe generalises."""
    values = []
    for split in splits:
        feats = {s: acts.get(model, site, s, position) for s in {name for name, _ in split.train}}
        value = grouped_cv_accuracy(gather(feats, split.train), split.train_labels, split.train_groups,
                                    folds=folds, c=c)
        if value is not None:
            values.append(value)
    return float(np.mean(values)) if values else None


@register
class LinearProbes:
    name = "probes"
    kind = "residue"
    title = "Linear probes (representation residue)"
    description = (
        "Per layer and position (subject token, last prompt token), a logistic-regression probe per attribute is "
        "trained on other people's items (split by subject, so it never sees the forget people) and tested on the "
        "forget items: how well does each model's hidden state decode the forgotten answer? The score is the "
        "probability the probe gives the true answer. Ceiling = the pre model; floor = the floor model (a model "
        "that never learned the items) when there is one, else a probe trained on subject-shuffled labels. "
        "'transfer' is the pre model's probe read on the post model. Residue near 1: the answers are as decodable "
        "as before unlearning (suppression); near 0: no more decodable than in a model that never learned them."
    )

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        opt = lambda key, default: config.option(self.name, key, default)  # noqa: E731
        positions = tuple(opt("positions", ("last", "subject")))
        c, cv_folds, min_gap = float(opt("C", 0.1)), int(opt("cv_folds", 3)), float(opt("min_gap", 0.1))
        min_train = int(opt("min_train_items", 8))
        if len(concept.forget) < config.min_items:
            return inconclusive(self.name, f"only {len(concept.forget)} forget items (< min_items={config.min_items})")
        splits = [s for s in probe_splits(concept) if len(s.train) >= min_train and s.n_classes >= 2]
        if not splits:
            return inconclusive(self.name, "no attribute has enough training items of other subjects "
                                           f"(>= {min_train} items, >= 2 answers) to train a probe")
        seen = float(np.mean([s.test_labels_seen for s in splits]))
        models = ["pre", "post"] + (["floor"] if pair.floor is not None else [])
        floor_key = "floor" if pair.floor is not None else "shuffled"
        floor_source = "floor model (never learned the items)" if pair.floor is not None else \
            "probe trained on subject-shuffled labels"
        sites = list(opt("sites", resid_post_sites(pair.pre.model)))
        rows, scores = [], {}
        for position in positions:
            for site in sites:
                res = _site_scores(acts, models, site, position, splits, c=c, seed=config.seed)
                scores[(site, position)] = res
                layer = layer_of(site)
                for variant, values in res["prob"].items():
                    rows.append({"layer": layer, "site": site, "position": position, "variant": variant,
                                 "prob_true": float(values.mean()), "accuracy": float(res["acc"][variant].mean())})
        # the site where the pre model decodes the answers best above the floor; chosen without looking at post
        gaps = {key: res["prob"]["pre"].mean() - res["prob"][floor_key].mean() for key, res in scores.items()}
        best = max(gaps, key=gaps.get)
        res = scores[best]
        cv = {m: _cv_accuracy(acts, m, best[0], best[1], splits, folds=cv_folds, c=c) if cv_folds > 1 else None
              for m in ("pre", "post")}
        cal = calibrate(res["prob"]["post"], res["prob"][floor_key], res["prob"]["pre"], paired=True,
                        n_bootstrap=config.n_bootstrap, ci_level=config.ci_level, seed=config.seed)
        summary = {
            "best_site": best[0], "best_position": best[1], "n_test_items": int(len(res["prob"]["pre"])),
            "attributes": [s.attribute for s in splits], "test_answers_seen_in_training": seen,
            **{f"acc_{v}": float(res["acc"][v].mean()) for v in res["acc"]},
            **{f"prob_{v}": float(res["prob"][v].mean()) for v in res["prob"]},
            "cv_acc_pre": cv["pre"], "cv_acc_post": cv["post"],
        }
        test_items = [concept.items(name)[i] for split in splits for name, i in split.test]
        per_item = [{"prompt": it.prompt, "answer": it.answer, "subject": it.subject, "attribute": it.attribute,
                     **{f"p_{v}": float(res["prob"][v][i]) for v in res["prob"]}} for i, it in enumerate(test_items)]
        notes = [f"residue read at {best[0]} ({best[1]} position), the site where the pre model's probe is furthest "
                 f"above the floor ({gaps[best]:.2f} in true-answer probability)"]
        common = dict(floor=cal.floor, ceiling=cal.ceiling, post=cal.post, floor_source=floor_source,
                      summary=summary, per_item=per_item, tables={"per_layer": rows})
        if seen < 0.5:
            notes.append(f"only {seen:.0%} of forget answers occur among the training answers of other subjects")
        if cal.residue is None or gaps[best] < min_gap:
            result = inconclusive(self.name, f"the probe on the pre model does not decode the forget answers above "
                                             f"the floor (gap {gaps[best]:.2f} < min_gap={min_gap}); no residue can "
                                             "be measured", **common)
            result.notes.extend(notes)
        else:
            result = Result(name=self.name, kind=self.kind, status="ok", residue=cal.residue, ci=cal.ci, notes=notes,
                            evidence=(f"a probe trained on other people decodes the forgotten answers from the post "
                                      f"model with p={cal.post:.2f} (pre {cal.ceiling:.2f}, floor {cal.floor:.2f}) "
                                      f"at {best[0]}/{best[1]}"), **common)
        for position in positions:
            result.add_figure(f"Probe accuracy per layer ({position} position)", per_layer_figure(
                [r for r in rows if r["position"] == position], x="layer", y="accuracy", series="variant",
                title=f"Probe accuracy on forget items, {position} position", y_title="accuracy"))
        return result
