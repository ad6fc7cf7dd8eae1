"""The `logit_lens` analyser: at which layers does the post model still form the forgotten answer?"""

from __future__ import annotations

import numpy as np
import torch

from palimpsest.capture import answer_ids
from palimpsest.probes.figures import per_layer_figure
from palimpsest.probes.lens import Readout, TunedLens, answer_prob_rank
from palimpsest.stats import calibrate
from palimpsest.types import AuditConfig, Result, inconclusive, register

SETS = ("forget", "paraphrases", "neighbours", "retain")
LENSES = ("logit", "tuned")


def _first_answer_ids(tokenizer, items) -> torch.Tensor:
    return torch.tensor([answer_ids(tokenizer, it.answer)[0] for it in items], dtype=torch.long)


def _fit_tuned_lens(acts, model: str, max_tokens: int, seed: int, ridge: float) -> TunedLens | None:
    """Fit on a model's residual streams over every prompt token of the retain/neighbour items (never forget)."""
    streams = None
    for name in ("retain", "neighbours"):
        if not acts.items(name):
            continue
        layers = acts.layers(model, name, "all")
        streams = layers if streams is None else [torch.cat([a, b]) for a, b in zip(streams, layers, strict=True)]
    if streams is None or streams[0].shape[0] < 16:
        return None
    if streams[0].shape[0] > max_tokens:
        keep = torch.randperm(streams[0].shape[0], generator=torch.Generator().manual_seed(seed))[:max_tokens]
        streams = [s[keep] for s in streams]
    return TunedLens.fit(streams, ridge=ridge)


@register
class LogitLens:
    name = "logit_lens"
    kind = "residue"
    title = "Logit lens and tuned lens (where the answer still forms)"
    description = (
        "Each layer's residual stream at the last prompt token is decoded through the final norm and unembedding "
        "(logit lens), and through a per-layer affine translator fitted by least squares on generic (retain) "
        "tokens (tuned lens); the table gives the probability and rank of the correct first answer token per layer "
        "for forget, paraphrase, neighbour and retain items. The post model is read through the pre model's norm "
        "and unembedding (rows with lens 'own': through its own), so an edit of the output layer alone cannot hide "
        "an answer the residual stream still forms. The final layer's own lens is the model's output, so the "
        "residue uses the best intermediate layer: the forget answers' probability there on the post model, "
        "between the floor model (or never-trained holdout items) and the pre model. Suppression signature: the "
        "answer ranks high at intermediate layers of the post model but not in its output."
    )

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        opt = lambda key, default: config.option(self.name, key, default)  # noqa: E731
        lens_for_residue = opt("lens", "logit")
        readout_from = opt("readout", "pre")  # post read through "pre": the pre model's norm+unembedding; or "own"
        top_k = int(opt("signature_top_k", 5))
        min_gap = float(opt("min_gap", 0.02))
        if lens_for_residue not in LENSES:
            raise ValueError(f"logit_lens option lens={lens_for_residue!r}: use one of {', '.join(LENSES)}")
        if len(concept.forget) < config.min_items:
            return inconclusive(self.name, f"only {len(concept.forget)} forget items (< min_items={config.min_items})")
        n_layers = pair.pre.n_layers
        if n_layers < 2:
            return inconclusive(self.name, "the model has a single layer: no intermediate layer to read")
        models = ["pre", "post"] + (["floor"] if pair.floor is not None else [])
        # whose readout decodes each model: the post model's residual stream is read by the pre model's final norm
        # and unembedding (readout="pre"), so that a change to the output layer alone cannot hide the answer
        reader = {m: ("pre" if m == "post" and readout_from == "pre" else m) for m in models}
        tuned: dict[str, TunedLens | None] = {}
        for r in dict.fromkeys(reader.values()):
            tuned[r] = _fit_tuned_lens(acts, r, int(opt("tuned_max_tokens", 4096)), config.seed,
                                       float(opt("ridge", 1e-2)))
        lenses = LENSES if all(t is not None for t in tuned.values()) else ("logit",)
        if lens_for_residue not in lenses:
            lens_for_residue = "logit"
        sets = [s for s in SETS if acts.items(s)]
        use_holdout = pair.floor is None and bool(acts.items("holdout"))
        readouts = {m: Readout.of(acts.models[m].model) for m in models}
        # stats[(model, set, lens)] = (prob [layers, n], rank [layers, n]); lens "own" = the model's own readout
        stats: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
        for m in models:
            for s in sets + (["holdout"] if use_holdout and m == "post" else []):
                targets = _first_answer_ids(acts.models[m].tokenizer, acts.items(s))
                layers = acts.layers(m, s, "last")
                variants = list(lenses) + (["own"] if reader[m] != m else [])
                for lens in variants:
                    probs, ranks = [], []
                    for layer, resid in enumerate(layers):
                        h = tuned[reader[m]].translate(layer, resid) if lens == "tuned" else resid
                        p, r = answer_prob_rank(readouts[m if lens == "own" else reader[m]].logits(h), targets)
                        probs.append(p)
                        ranks.append(r)
                    stats[(m, s, lens)] = (np.stack(probs), np.stack(ranks))
        rows = []
        for (m, s, lens), (probs, ranks) in stats.items():
            for layer in range(probs.shape[0]):
                rows.append({"layer": layer, "model": m, "set": s, "lens": lens, "readout": m if lens == "own"
                             else reader[m], "prob": float(probs[layer].mean()),
                             "median_rank": float(np.median(ranks[layer])), "top1": float((ranks[layer] == 0).mean())})
        forget_sets = [s for s in ("forget", "paraphrases") if s in sets]
        mid = slice(0, n_layers - 1)

        def best_mid(m: str, lens: str, which=forget_sets) -> np.ndarray:
            return np.concatenate([stats[(m, s, lens)][0][mid].max(0) for s in which])

        def ranks_of(m: str, lens: str) -> tuple[np.ndarray, np.ndarray]:
            """(best intermediate-layer rank under `lens`, rank in the model's actual output)."""
            rk = np.concatenate([stats[(m, s, lens)][1] for s in forget_sets], axis=1)
            out_lens = "own" if (m, forget_sets[0], "own") in stats else "logit"
            out = np.concatenate([stats[(m, s, out_lens)][1][-1] for s in forget_sets])
            return rk[mid].min(0), out

        post_x, pre_x = best_mid("post", lens_for_residue), best_mid("pre", lens_for_residue)
        if pair.floor is not None:
            floor_x, floor_source, paired = best_mid("floor", lens_for_residue), "floor model", True
        elif use_holdout:
            floor_x, floor_source, paired = best_mid("post", lens_for_residue, ["holdout"]), \
                "never-trained holdout items on the post model", False
        else:
            vocab = readouts["post"].logits(acts.layers("post", "forget", "last")[0][:1]).shape[-1]
            floor_x, floor_source, paired = np.array([1.0 / vocab]), "uniform chance (1/vocab)", False
        cal = calibrate(post_x, floor_x, pre_x, paired=paired, n_bootstrap=config.n_bootstrap,
                        ci_level=config.ci_level, seed=config.seed)
        signature = {}
        for m in models:
            for lens in lenses:
                mid_rank, final_rank = ranks_of(m, lens)
                signature[f"{m}_{lens}"] = {
                    "best_mid_rank_median": float(np.median(mid_rank)),
                    "output_rank_median": float(np.median(final_rank)),
                    # the answer is in the top-k at some intermediate layer but not in the model's output
                    "share_suppressed_late": float(((mid_rank < top_k) & (final_rank >= top_k)).mean()),
                }
        post_sig = signature[f"post_{lens_for_residue}"]
        summary = {
            "lens": lens_for_residue, "readout": readout_from, "lenses": list(lenses),
            "best_mid_prob_pre": float(pre_x.mean()), "best_mid_prob_post": float(post_x.mean()),
            "best_mid_prob_floor": float(np.mean(floor_x)), "signature": signature,
            "suppression_signature": bool(post_sig["share_suppressed_late"] >= 0.5),
        }
        forget_items = [it for s in forget_sets for it in acts.items(s)]
        per_item = []
        mid_post, final_post = ranks_of("post", lens_for_residue)
        mid_pre, final_pre = ranks_of("pre", lens_for_residue)
        for i, it in enumerate(forget_items):
            per_item.append({"prompt": it.prompt, "answer": it.answer, "best_mid_prob_post": float(post_x[i]),
                             "best_mid_prob_pre": float(pre_x[i]), "best_mid_rank_post": int(mid_post[i]),
                             "output_rank_post": int(final_post[i]), "best_mid_rank_pre": int(mid_pre[i]),
                             "output_rank_pre": int(final_pre[i])})
        notes = [f"{lens_for_residue} lens; the post model is read through the {readout_from} model's final norm and "
                 f"unembedding ('own' rows: its own); residue from the best of layers 0..{n_layers - 2}"]
        if lenses == ("logit",):
            notes.append("tuned lens skipped: too few retain/neighbour tokens to fit the translators")
        if post_sig["share_suppressed_late"] >= 0.5:
            notes.append(f"suppression signature: for {post_sig['share_suppressed_late']:.0%} of forget items the "
                         f"answer is in the top {top_k} at an intermediate layer of the post model but not at the "
                         "output")
        common = dict(floor=cal.floor, ceiling=cal.ceiling, post=cal.post, floor_source=floor_source,
                      summary=summary, per_item=per_item, tables={"per_layer": rows})
        if cal.residue is None or cal.ceiling - cal.floor < min_gap:
            result = inconclusive(self.name, "the pre model's intermediate layers do not form the forget answers "
                                             f"above the floor (gap {cal.ceiling - cal.floor:.3f} < {min_gap})",
                                  **common)
            result.notes.extend(notes)
        else:
            result = Result(name=self.name, kind=self.kind, status="ok", residue=cal.residue, ci=cal.ci, notes=notes,
                            evidence=(f"at its best intermediate layer the post model gives the forgotten answer "
                                      f"p={cal.post:.2f} (pre {cal.ceiling:.2f}, floor {cal.floor:.2f}); at the output "
                                      f"its median rank is {post_sig['output_rank_median']:.0f}"), **common)
        for lens in lenses:
            result.add_figure(f"{lens} lens: answer probability per layer", per_layer_figure(
                [dict(r, series=f"{r['model']} {r['set']}") for r in rows if r["lens"] == lens and r["set"] in
                 ("forget", "retain")] + [dict(r, series=f"post {r['set']} (own readout)") for r in rows
                                          if lens == "logit" and r["lens"] == "own" and r["set"] == "forget"],
                x="layer", y="prob", series="series", title=f"{lens} lens: P(correct answer) per layer",
                y_title="probability"))
        return result
