"""sae-lens training throughput fed through palimpsest's data path (safetensors shards -> sae-lens mixing buffer)
vs the same SAE fed by a bare in-memory tensor iterator, in one run; target >= 0.9x.

Also: peak RSS of training from shards holding 1x and 10x the activations (one epoch each, fresh processes);
target < 1.5x. Run: python benchmarks/sae.py   (the last line is the JSON result)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import peak_rss_mb, random_llama, random_texts, result_line, run_child  # noqa: E402

HIDDEN, LENGTH, SITE = 512, 48, "blocks.1.hook_resid_post"
TEXTS_1X = 400  # ~19k tokens x 512 floats = ~40 MB of activations; 10x = ~400 MB
SAMPLES = 24_576  # training samples for the throughput comparison


def _config(total: int):
    from palimpsest.sae import SAEConfig

    return SAEConfig(expansion=2, k=16, total_tokens=total, batch_size=512, shuffle_buffer=16_384)


def _store(model_dir: str, n_texts: int, out_dir: Path) -> Path:
    from palimpsest.capture import capture_to_disk
    from palimpsest.models import load_model

    if (out_dir / "manifest.json").is_file():
        return out_dir
    loaded = load_model(model_dir)
    capture_to_disk(loaded.model, loaded.tokenizer, random_texts(n_texts, LENGTH, seed=1), [SITE], out_dir,
                    batch_size=32)
    return out_dir


def _bare_batches(acts, batch_size: int):
    import torch

    while True:
        order = torch.randperm(acts.shape[0])
        for start in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[order[start:start + batch_size]]


def _rss_child(store_dir: str) -> None:
    import torch

    from palimpsest.capture import ShardedActivations
    from palimpsest.sae import shard_batches, train_sae

    torch.set_num_threads(1)
    store = ShardedActivations(store_dir)
    cfg = _config(store.rows // 512 * 512)  # one epoch over the whole store
    start = time.perf_counter()
    train_sae(shard_batches(store, SITE, cfg.batch_size, buffer_size=cfg.shuffle_buffer), HIDDEN, cfg)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "rows": store.rows, "seconds": time.perf_counter() - start,
                      "store_mb": store.rows * HIDDEN * 4 / 2**20}))


def main() -> None:
    import torch

    from palimpsest.capture import ShardedActivations
    from palimpsest.sae import shard_batches, train_sae

    torch.set_num_threads(1)
    work = Path(os.environ.get("PALIMPSEST_BENCH_DIR") or tempfile.mkdtemp(prefix="palimpsest-bench-sae-"))
    model_dir = random_llama(work / "model", hidden=HIDDEN, layers=2)
    one = _store(str(model_dir), TEXTS_1X, work / "s1")
    store = ShardedActivations(one)
    in_memory = store.load(SITE)
    cfg = _config(SAMPLES)

    def ours() -> float:
        start = time.perf_counter()
        train_sae(shard_batches(store, SITE, cfg.batch_size, buffer_size=cfg.shuffle_buffer), HIDDEN, cfg)
        return time.perf_counter() - start

    def bare() -> float:
        start = time.perf_counter()
        train_sae(_bare_batches(in_memory, cfg.batch_size), HIDDEN, cfg)
        return time.perf_counter() - start

    ours(), bare()  # warm both paths
    t_ours, t_bare = min(ours() for _ in range(3)), min(bare() for _ in range(3))
    tps_ours, tps_bare = SAMPLES / t_ours, SAMPLES / t_bare
    ratio = tps_ours / tps_bare
    print(f"training throughput: palimpsest shards {tps_ours:,.0f} tok/s, bare tensor {tps_bare:,.0f} tok/s "
          f"({ratio:.3f}x); {store.rows} rows in store, d_in {HIDDEN}")

    ten = _store(str(model_dir), TEXTS_1X * 10, work / "s10")
    this = str(Path(__file__).resolve())
    r1 = run_child(this, "--rss-child", str(one))
    r10 = run_child(this, "--rss-child", str(ten))
    rss_ratio = r10["peak_rss_mb"] / r1["peak_rss_mb"]
    print(f"peak RSS training one epoch from shards: 1x ({r1['store_mb']:.0f} MB of activations) "
          f"{r1['peak_rss_mb']:.0f} MB, 10x ({r10['store_mb']:.0f} MB) {r10['peak_rss_mb']:.0f} MB ({rss_ratio:.2f}x)")
    print(result_line("sae", ratio, ">= 0.90", ratio >= 0.9 and rss_ratio < 1.5, tokens_per_s_ours=round(tps_ours),
                      tokens_per_s_bare=round(tps_bare), rss_ratio=round(rss_ratio, 3), rss_target="< 1.5",
                      rss_1x_mb=round(r1["peak_rss_mb"]), rss_10x_mb=round(r10["peak_rss_mb"]),
                      store_10x_mb=round(r10["store_mb"])))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2])
    else:
        main()

# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
