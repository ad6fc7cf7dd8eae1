"""The `logit_lens` analyser: at which layers does the post model still form the forgotten answer?"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from palimpsest.audit.finalize import Measurement
from palimpsest.capture import answer_ids
from palimpsest.probes.figures import per_layer_figure
from palimpsest.probes.lens import Readout, TunedLens, answer_prob_rank
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

SETS = ("forget", "paraphrases", "neighbours", "retain")
LENSES = ("logit", "tuned")


def _first_answer_ids(tokenizer, items) -> torch.Tensor:
    return torch.tensor([answer_ids(tokenizer, it.answer, it.prompt)[0] for it in items], dtype=torch.long)


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


def _lens_stats(ctx, reader: dict[str, str], lenses: tuple[str, ...], sets: list[str], use_holdout: bool,
                readouts: dict[str, Readout], tuned: dict[str, TunedLens | None]
                ) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]:
    """stats[(model, set, lens)] = (prob [layers, n], rank [layers, n]) of the first answer token; lens "own" = the
    model's own readout (only for a model read through another's)."""
    acts = ctx.acts
    stats: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
    for m in reader:
        for s in sets + (["holdout"] if use_holdout and m == "post" else []):
            targets = _first_answer_ids(acts.models[m].tokenizer, acts.items(s))
            layers = acts.layers(m, s, "last")
            variants = list(lenses) + (["own"] if reader[m] != m else [])
            for lens in variants:
                streams = [tuned[reader[m]].translate(layer, resid) if lens == "tuned" else resid
                           for layer, resid in enumerate(layers)]
                stats[(m, s, lens)] = _read_layers(readouts[m if lens == "own" else reader[m]], streams, targets)
    return stats


LENS_ROWS = 2048  # rows unembedded per matrix product (several layers at once: [rows, vocab] floats each)


def _read_layers(readout: Readout, streams: list[torch.Tensor], targets: torch.Tensor
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(prob [layers, n], rank [layers, n]) of each row's target token, every layer's rows unembedded together in
    chunks of about LENS_ROWS rows (one large matrix product instead of one per layer)."""
    n = len(targets)
    if n == 0:
        empty = np.zeros((len(streams), 0))
        return empty, empty.copy()
    per_chunk = max(1, LENS_ROWS // n)
    probs, ranks = [], []
    for start in range(0, len(streams), per_chunk):
        chunk = streams[start:start + per_chunk]
        p, r = answer_prob_rank(readout.logits(torch.cat(chunk)), targets.repeat(len(chunk)))
        probs.append(p.reshape(len(chunk), n))
        ranks.append(r.reshape(len(chunk), n))
    return np.concatenate(probs), np.concatenate(ranks)


def _layer_rows(stats, reader: dict[str, str]) -> list[dict]:
    rows = []
    for (m, s, lens), (probs, ranks) in stats.items():
        for layer in range(probs.shape[0]):
            rows.append({"layer": layer, "model": m, "set": s, "lens": lens, "readout": m if lens == "own"
                         else reader[m], "prob": float(probs[layer].mean()),
                         "median_rank": float(np.median(ranks[layer])), "top1": float((ranks[layer] == 0).mean())})
    return rows


class _Layers:
    """Reads the stats over the forget sets: the best intermediate layer (every layer but the last) per item."""

    def __init__(self, stats, forget_sets: list[str], n_layers: int):
        self.stats, self.forget_sets, self.mid = stats, forget_sets, slice(0, n_layers - 1)

    def best_mid(self, m: str, lens: str, which: list[str] | None = None) -> np.ndarray:
        return np.concatenate([self.stats[(m, s, lens)][0][self.mid].max(0) for s in which or self.forget_sets])

    def ranks_of(self, m: str, lens: str) -> tuple[np.ndarray, np.ndarray]:
        """(best intermediate-layer rank under `lens`, rank in the model's actual output)."""
        rk = np.concatenate([self.stats[(m, s, lens)][1] for s in self.forget_sets], axis=1)
        out_lens = "own" if (m, self.forget_sets[0], "own") in self.stats else "logit"
        out = np.concatenate([self.stats[(m, s, out_lens)][1][-1] for s in self.forget_sets])
        return rk[self.mid].min(0), out


class LogitLensConfig(AnalyserConfig):
    lens: Literal["logit", "tuned"] = "logit"  # the lens the residue is read through (tuned falls back to logit)
    # whose final norm + unembedding decodes the post model: the pre model's ("pre") or its own ("own")
    readout: Literal["pre", "own"] = "pre"
    signature_top_k: int = 5  # suppression signature: the answer in the top k mid-network but not at the output
    min_gap: float = 0.02  # the pre model's best intermediate layer must beat the floor by this (probability)
    tuned_max_tokens: int = 4096  # at most this many retain/neighbour tokens fit the tuned-lens translators
    ridge: float = 1e-2  # ridge penalty of the tuned-lens least-squares fit


@register
class LogitLens(Analyser):
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
    Config = LogitLensConfig
    modalities = frozenset({"text"})
    needs = frozenset({"activations"})  # every layer's residual stream at the last prompt token (and all tokens)

    def measure(self, ctx) -> Measurement | Result:
        opts: LogitLensConfig = ctx.opts
        pair, acts = ctx.pair, ctx.acts
        n_layers = pair.pre.n_layers
        if n_layers < 2:
            return inconclusive(self.name, "the model has a single layer: no intermediate layer to read")
        models = ["pre", "post"] + (["floor"] if pair.floor is not None else [])
        # whose readout decodes each model: the post model's residual stream is read by the pre model's final norm
        # and unembedding (readout="pre"), so that a change to the output layer alone cannot hide the answer
        reader = {m: ("pre" if m == "post" and opts.readout == "pre" else m) for m in models}
        tuned = {r: _fit_tuned_lens(acts, r, opts.tuned_max_tokens, ctx.config.seed, opts.ridge)
                 for r in dict.fromkeys(reader.values())}
        lenses = LENSES if all(t is not None for t in tuned.values()) else ("logit",)
        lens = opts.lens if opts.lens in lenses else "logit"
        sets = [s for s in SETS if acts.items(s)]
        use_holdout = pair.floor is None and bool(acts.items("holdout"))
        readouts = {m: Readout.of(acts.models[m].model) for m in models}
        stats = _lens_stats(ctx, reader, lenses, sets, use_holdout, readouts, tuned)
        rows = _layer_rows(stats, reader)
        forget_sets = [s for s in ("forget", "paraphrases") if s in sets]
        read = _Layers(stats, forget_sets, n_layers)
        post_x, pre_x = read.best_mid("post", lens), read.best_mid("pre", lens)
        if pair.floor is not None:
            floor_x, floor_source, paired = read.best_mid("floor", lens), "floor model", True
        elif use_holdout:
            floor_x, floor_source, paired = read.best_mid("post", lens, ["holdout"]), \
                "never-trained holdout items on the post model", False
        else:
            vocab = readouts["post"].logits(acts.layers("post", "forget", "last")[0][:1]).shape[-1]
            floor_x, floor_source, paired = np.array([1.0 / vocab]), "uniform chance (1/vocab)", False
        signature = {f"{m}_{name}": self._signature(read, m, name, opts.signature_top_k)
                     for m in models for name in lenses}
        post_sig = signature[f"post_{lens}"]
        summary = {
            "lens": lens, "readout": opts.readout, "lenses": list(lenses),
            "best_mid_prob_pre": float(pre_x.mean()), "best_mid_prob_post": float(post_x.mean()),
            "best_mid_prob_floor": float(np.mean(floor_x)), "signature": signature,
            "suppression_signature": bool(post_sig["share_suppressed_late"] >= 0.5),
        }
        forget_items = [it for s in forget_sets for it in acts.items(s)]
        return Measurement(
            post=post_x, floor=floor_x, ceiling=pre_x, floor_source=floor_source, paired=paired,
            min_gap=opts.min_gap, degenerate=("the pre model's intermediate layers do not form the forget answers "
                                              f"above the floor (gap {{gap:.3f}} < {opts.min_gap})"),
            evidence=("at its best intermediate layer the post model gives the forgotten answer p={post:.2f} (pre "
                      "{ceiling:.2f}, floor {floor:.2f}); at the output its median rank is "
                      f"{post_sig['output_rank_median']:.0f}"),
            summary=summary, per_item=self._per_item(read, lens, forget_items, post_x, pre_x),
            tables={"per_layer": rows}, notes=self._notes(opts, lens, lenses, n_layers, post_sig),
            extra={"lenses": lenses})

    @staticmethod
    def _signature(read: _Layers, m: str, lens: str, top_k: int) -> dict:
        mid_rank, final_rank = read.ranks_of(m, lens)
        return {
            "best_mid_rank_median": float(np.median(mid_rank)),
            "output_rank_median": float(np.median(final_rank)),
            # the answer is in the top-k at some intermediate layer but not in the model's output
            "share_suppressed_late": float(((mid_rank < top_k) & (final_rank >= top_k)).mean()),
        }

    @staticmethod
    def _per_item(read: _Layers, lens: str, items, post_x: np.ndarray, pre_x: np.ndarray) -> list[dict]:
        mid_post, final_post = read.ranks_of("post", lens)
        mid_pre, final_pre = read.ranks_of("pre", lens)
        return [{"prompt": it.prompt, "answer": it.answer, "best_mid_prob_post": float(post_x[i]),
                 "best_mid_prob_pre": float(pre_x[i]), "best_mid_rank_post": int(mid_post[i]),
                 "output_rank_post": int(final_post[i]), "best_mid_rank_pre": int(mid_pre[i]),
                 "output_rank_pre": int(final_pre[i])} for i, it in enumerate(items)]

    @staticmethod
    def _notes(opts: LogitLensConfig, lens: str, lenses: tuple[str, ...], n_layers: int, post_sig: dict) -> list[str]:
        notes = [f"{lens} lens; the post model is read through the {opts.readout} model's final norm and "
                 f"unembedding ('own' rows: its own); residue from the best of layers 0..{n_layers - 2}"]
        if lenses == ("logit",):
            notes.append("tuned lens skipped: too few retain/neighbour tokens to fit the translators")
        if post_sig["share_suppressed_late"] >= 0.5:
            notes.append(f"suppression signature: for {post_sig['share_suppressed_late']:.0%} of forget items the "
                         f"answer is in the top {opts.signature_top_k} at an intermediate layer of the post model "
                         "but not at the output")
        return notes

    def figures(self, measured: Measurement, ctx) -> dict:
        rows = measured.tables["per_layer"]
        return {f"{lens} lens: answer probability per layer": per_layer_figure(
            [dict(r, series=f"{r['model']} {r['set']}") for r in rows if r["lens"] == lens and r["set"] in
             ("forget", "retain")] + [dict(r, series=f"post {r['set']} (own readout)") for r in rows
                                      if lens == "logit" and r["lens"] == "own" and r["set"] == "forget"],
            x="layer", y="prob", series="series", title=f"{lens} lens: P(correct answer) per layer",
            y_title="probability") for lens in measured.extra["lenses"]}
