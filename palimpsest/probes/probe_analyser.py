"""The `probes` analyser: can the post model's hidden states still be decoded into the forgotten answers?"""

from __future__ import annotations

from typing import Literal

import numpy as np

from palimpsest.audit.finalize import Measurement
from palimpsest.capture import capture, layer_of, resid_post_sites
from palimpsest.probes.data import TEST_SETS, TRAIN_SETS, ProbeSplit, gather, probe_splits
from palimpsest.probes.figures import probe_accuracy_figures
from palimpsest.probes.linear import fit_probe, grouped_cv_accuracy, shuffle_by_group, true_label_scores
from palimpsest.probes.truth import (
    Statements,
    answer_pool,
    fit_truth_probe,
    item_scores,
    shuffled_labels,
    statements,
    truth_items,
)
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

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


class ProbesConfig(AnalyserConfig):
    # the token positions a probe reads (last prompt token, last subject token, mean over the answer span)
    positions: tuple[Literal["last", "subject", "answer_mean"], ...] = ("last", "subject")
    C: float = 0.1  # inverse L2 strength of the logistic-regression probes
    cv_folds: int = 3  # grouped cross-validation folds for the cv_acc_* summary (<= 1: skipped)
    min_gap: float = 0.1  # the pre model's probe must beat the floor by this (true-answer probability)
    min_train_items: int = 8  # an attribute is probed only with at least this many training items of other subjects
    sites: tuple[str, ...] | None = None  # the sites probed (None: every residual-stream site of the pre model)
    # answer: a probe per attribute classifies the answer (labels must recur across subjects); truth: a probe
    # tells true statements from false ones (probes/truth.py); auto: answer where at least half the forget answers
    # occur among other subjects' answers, else truth
    mode: Literal["auto", "answer", "truth"] = "auto"
    n_false: int = 3  # truth: false candidates per item (its perturbed answers, else other answers to the attribute)
    min_holdout_items: int = 4  # truth: the never-known holdout floor needs this many holdout items


@register
class LinearProbes(Analyser):
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
    Config = ProbesConfig
    modalities = frozenset({"text", "image"})  # image: Analyser.run hands it to palimpsest.vision.measures.probes
    needs = frozenset({"activations"})  # captures of every model at every residual-stream site

    def measure(self, ctx) -> Measurement | Result:
        opts: ProbesConfig = ctx.opts
        splits = [s for s in probe_splits(ctx.concept) if len(s.train) >= opts.min_train_items and s.n_classes >= 2]
        seen = float(np.mean([s.test_labels_seen for s in splits])) if splits else 0.0
        if opts.mode == "truth" or (opts.mode == "auto" and (not splits or seen < 0.5)):
            why = ("mode=truth" if opts.mode == "truth" else
                   f"auto: only {seen:.0%} of the forget answers occur among other subjects' answers, so an answer "
                   "classifier cannot name them" if splits else
                   f"auto: no attribute has >= {opts.min_train_items} training items of other subjects with >= 2 "
                   "answers for an answer classifier")
            return self._measure_truth(ctx, why)
        if not splits:
            return inconclusive(self.name, "no attribute has enough training items of other subjects "
                                           f"(>= {opts.min_train_items} items, >= 2 answers) to train a probe; "
                                           "to make it conclusive: add retain/neighbour items of other subjects "
                                           "sharing the forget answers, or use mode=truth")
        has_floor = ctx.pair.floor is not None
        floor_key = "floor" if has_floor else "shuffled"
        floor_source = "floor model (never learned the items)" if has_floor else \
            "probe trained on subject-shuffled labels"
        rows, scores = self._score_sites(ctx, splits)
        # the site where the pre model decodes the answers best above the floor; chosen without looking at post
        gaps = {key: res["prob"]["pre"].mean() - res["prob"][floor_key].mean() for key, res in scores.items()}
        best = max(gaps, key=gaps.get)
        res = scores[best]
        cv = {m: _cv_accuracy(ctx.acts, m, best[0], best[1], splits, folds=opts.cv_folds, c=opts.C)
              if opts.cv_folds > 1 else None for m in ("pre", "post")}
        summary = {
            "mode": "answer", "best_site": best[0], "best_position": best[1], "n_test_items": int(len(res["prob"]["pre"])),
            "attributes": [s.attribute for s in splits], "test_answers_seen_in_training": seen,
            **{f"acc_{v}": float(res["acc"][v].mean()) for v in res["acc"]},
            **{f"prob_{v}": float(res["prob"][v].mean()) for v in res["prob"]},
            "cv_acc_pre": cv["pre"], "cv_acc_post": cv["post"],
        }
        notes = [f"residue read at {best[0]} ({best[1]} position), the site where the pre model's probe is furthest "
                 f"above the floor ({gaps[best]:.2f} in true-answer probability)"]
        if seen < 0.5:
            notes.append(f"only {seen:.0%} of forget answers occur among the training answers of other subjects")
        return Measurement(
            post=res["prob"]["post"], floor=res["prob"][floor_key], ceiling=res["prob"]["pre"],
            floor_source=floor_source, paired=True, min_gap=opts.min_gap, gap=float(gaps[best]),
            degenerate=("the probe on the pre model does not decode the forget answers above the floor (gap "
                        f"{gaps[best]:.2f} < min_gap={opts.min_gap}); no residue can be measured"),
            evidence=("a probe trained on other people decodes the forgotten answers from the post model with "
                      f"p={{post:.2f}} (pre {{ceiling:.2f}}, floor {{floor:.2f}}) at {best[0]}/{best[1]}"),
            summary=summary, per_item=_per_item(ctx.concept, splits, res), tables={"per_layer": rows}, notes=notes)

    def _score_sites(self, ctx, splits: list[ProbeSplit]) -> tuple[list[dict], dict]:
        """Every probe variant at every (site, position): the per-layer table rows and the per-item scores."""
        opts: ProbesConfig = ctx.opts
        models = ["pre", "post"] + (["floor"] if ctx.pair.floor is not None else [])
        sites = list(opts.sites) if opts.sites is not None else list(resid_post_sites(ctx.pair.pre.model))
        rows, scores = [], {}
        for position in opts.positions:
            for site in sites:
                res = _site_scores(ctx.acts, models, site, position, splits, c=opts.C, seed=ctx.config.seed)
                scores[(site, position)] = res
                layer = layer_of(site)
                for variant, values in res["prob"].items():
                    rows.append({"layer": layer, "site": site, "position": position, "variant": variant,
                                 "prob_true": float(values.mean()), "accuracy": float(res["acc"][variant].mean())})
        return rows, scores

    def _measure_truth(self, ctx, why: str) -> Measurement | Result:
        """The truth-probe measurement (probes/truth.py): floor = the floor model, else never-known holdout facts
        read by the pre model's probe, else labels shuffled within each item."""
        opts: ProbesConfig = ctx.opts
        concept, seed = ctx.concept, ctx.config.seed
        train_items, test_items = truth_items(concept, TEST_SETS, TRAIN_SETS)
        pool = answer_pool([it for _, _, it in concept.all_items()])
        sets = {"train": statements(train_items, pool, n_false=opts.n_false, seed=seed),
                "test": statements(test_items, pool, n_false=opts.n_false, seed=seed + 1),
                "holdout": statements(concept.holdout, pool, n_false=opts.n_false, seed=seed + 2)}
        if sets["train"].n_items < opts.min_train_items or sets["test"].n_items == 0:
            return inconclusive(self.name, f"truth probe: {sets['train'].n_items} training items of other subjects "
                                f"with a false candidate (needs >= {opts.min_train_items}) and "
                                f"{sets['test'].n_items} forget items; to make it conclusive: add retain/neighbour "
                                "items of other subjects (with perturbed_answers, or sharing an attribute)")
        has_floor = ctx.pair.floor is not None
        has_holdout = sets["holdout"].n_items >= opts.min_holdout_items
        models = ["pre", "post"] + (["floor"] if has_floor else [])
        sites = list(opts.sites) if opts.sites is not None else list(resid_post_sites(ctx.pair.pre.model))
        feats = {m: {name: _statement_acts(ctx, m, st, sites) for name, st in sets.items() if len(st)}
                 for m in models}
        floor_key = "floor" if has_floor else "holdout_pre" if has_holdout else "shuffled"
        floor_source = {"floor": "floor model (never learned the items)",
                        "holdout_pre": f"never-known holdout facts ({sets['holdout'].n_items} items) read by the "
                                       "pre model's truth probe",
                        "shuffled": "truth probe trained on labels shuffled within each item"}[floor_key]
        rows, scores = [], {}
        for site in sites:
            res = _truth_site_scores(feats, models, site, sets, has_holdout, c=opts.C, seed=seed)
            scores[site] = res
            for variant, values in res["prob"].items():
                rows.append({"layer": layer_of(site), "site": site, "position": "statement", "variant": variant,
                             "prob_true": float(values.mean()), "accuracy": float(res["acc"][variant].mean())})
        # the site where the pre model's probe is furthest above the floor; chosen without looking at post
        gaps = {site: res["prob"]["pre"].mean() - res["prob"][floor_key].mean() for site, res in scores.items()}
        best = max(gaps, key=gaps.get)
        res = scores[best]
        chance = float(res["chance"].mean())
        summary = {"mode": "truth", "mode_reason": why, "best_site": best, "best_position": "statement",
                   "n_train_items": sets["train"].n_items, "n_test_items": sets["test"].n_items,
                   "n_holdout_items": sets["holdout"].n_items, "chance": chance,
                   **{f"acc_{v}": float(res["acc"][v].mean()) for v in res["acc"]},
                   **{f"prob_{v}": float(res["prob"][v].mean()) for v in res["prob"]}}
        notes = [f"truth probe ({why}): true vs false statements of other subjects, read at the statement's last "
                 f"token; residue read at {best}, where the pre model's probe is furthest above the floor "
                 f"({gaps[best]:.2f} in P(true statement); chance {chance:.2f})"]
        if has_holdout and not has_floor:
            notes.append(f"never-known holdout floor: pre {res['prob']['holdout_pre'].mean():.2f}, post "
                         f"{res['prob']['holdout_post'].mean():.2f}; shuffled-label floor "
                         f"{res['prob']['shuffled'].mean():.2f}")
        if not has_floor and not has_holdout:
            notes.append(f"no floor model and {sets['holdout'].n_items} holdout items (< min_holdout_items="
                         f"{opts.min_holdout_items}): the floor is the shuffled-label probe; add never-known holdout "
                         "items or pass --floor for a stronger one")
        test_rows = [test_items[i] for i in sets["test"].kept]
        per_item = [{"prompt": it.prompt, "answer": it.answer, "subject": it.subject,
                     **{f"p_{v}": float(res["prob"][v][i]) for v in ("pre", "post", "transfer", "shuffled")}}
                    for i, it in enumerate(test_rows)]
        return Measurement(
            post=res["prob"]["post"], floor=res["prob"][floor_key], ceiling=res["prob"]["pre"],
            floor_source=floor_source, paired=floor_key in ("floor", "shuffled"), min_gap=opts.min_gap,
            gap=float(gaps[best]),
            degenerate=("the truth probe on the pre model does not tell the forget facts' true statements above the "
                        f"floor ({floor_source}: gap {gaps[best]:.2f} < min_gap={opts.min_gap}); no residue can be "
                        "measured"),
            evidence=("a truth probe trained on other subjects still tells the forgotten facts' true statements from "
                      f"false ones in the post model with p={{post:.2f}} (pre {{ceiling:.2f}}, floor {{floor:.2f}}, "
                      f"chance {chance:.2f}) at {best}"),
            summary=summary, per_item=per_item, tables={"per_layer": rows}, notes=notes)

    def figures(self, measured: Measurement, ctx) -> dict:
        rows = measured.tables["per_layer"]
        positions = list(dict.fromkeys(r["position"] for r in rows))
        return probe_accuracy_figures(rows, positions, n=measured.summary.get("n_test_items"))


def _statement_acts(ctx, model: str, stmts: Statements, sites: list[str]) -> dict:
    """Every site's activation at each statement's last token (one forward pass per batch reads all sites)."""
    loaded = ctx.acts.models[model]
    return capture(loaded.model, loaded.tokenizer, list(stmts.texts), sites, position="last",
                   backend=ctx.config.backend, batch_size=ctx.config.batch_size, model_name=model)


def _truth_site_scores(feats: dict, models: list[str], site: str, sets: dict[str, Statements], has_holdout: bool,
                       *, c: float, seed: int) -> dict:
    """Per-item P(true statement) and correctness of every truth-probe variant at one site."""
    def x(model: str, name: str):
        return feats[model][name][site].double().numpy()

    train, test, holdout = sets["train"], sets["test"], sets["holdout"]
    probes = {m: fit_truth_probe(x(m, "train"), train.labels, c=c) for m in models}
    out = {m: item_scores(probes[m], x(m, "test"), test) for m in models}
    out["transfer"] = item_scores(probes["pre"], x("post", "test"), test)
    control = fit_truth_probe(x("post", "train"), shuffled_labels(train, seed=seed), c=c)
    out["shuffled"] = item_scores(control, x("post", "test"), test)
    if has_holdout:
        out["holdout_pre"] = item_scores(probes["pre"], x("pre", "holdout"), holdout)
        out["holdout_post"] = item_scores(probes["post"], x("post", "holdout"), holdout)
    return {"prob": {v: r[0] for v, r in out.items()}, "acc": {v: r[1] for v, r in out.items()},
            "chance": out["pre"][2]}


def _per_item(concept, splits: list[ProbeSplit], res: dict) -> list[dict]:
    test_items = [concept.items(name)[i] for split in splits for name, i in split.test]
    return [{"prompt": it.prompt, "answer": it.answer, "subject": it.subject, "attribute": it.attribute,
             **{f"p_{v}": float(res["prob"][v][i]) for v in res["prob"]}} for i, it in enumerate(test_items)]
