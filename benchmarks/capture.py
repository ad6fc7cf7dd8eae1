"""Capture of every layer's residual stream for pre + post vs plain HF forwards with output_hidden_states=True.

Also: peak RSS of streaming capture for 1x and 10x the tokens (each in a fresh process).
Run: python benchmarks/capture.py   (the last line is the JSON result)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import best_of, peak_rss_mb, random_llama, random_texts, result_line, run_child  # noqa: E402

N_PROMPTS, LENGTH, BATCH = 64, 48, 16


def _stream_child(model_dir: str, n_texts: str, out_dir: str) -> None:
    import torch

    from palimpsest.capture import capture_to_disk, resid_post_sites
    from palimpsest.models import load_model

    torch.set_num_threads(2)
    loaded = load_model(model_dir)
    texts = random_texts(int(n_texts), LENGTH, seed=1)
    capture_to_disk(loaded.model, loaded.tokenizer, texts, resid_post_sites(loaded.model), out_dir, batch_size=BATCH)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "texts": int(n_texts)}))


def main() -> None:
    import torch

    from palimpsest.capture import capture, encode, resid_post_sites
    from palimpsest.models import load_model

    work = Path(tempfile.mkdtemp(prefix="palimpsest-bench-"))
    pre_dir = random_llama(work / "pre", seed=0)
    post_dir = random_llama(work / "post", seed=1)
    pre, post = load_model(pre_dir), load_model(post_dir)
    texts = random_texts(N_PROMPTS, LENGTH)
    sites = resid_post_sites(pre.model)

    def plain() -> None:
        with torch.inference_mode():
            for loaded in (pre, post):
                for start in range(0, N_PROMPTS, BATCH):
                    batch = encode(loaded.tokenizer, texts[start:start + BATCH])
                    hidden = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                          position_ids=batch.position_ids, output_hidden_states=True).hidden_states
                    [h[batch.attention_mask.bool()].float().cpu() for h in hidden[1:]]

    def ours() -> None:
        for loaded in (pre, post):
            capture(loaded.model, loaded.tokenizer, texts, sites, position="all", batch_size=BATCH)

    plain()
    ours()  # warm both paths
    results = {}
    for backend in ("torch", "transformer_lens", "nnsight"):
        def run(backend=backend) -> None:
            for loaded in (pre, post):
                capture(loaded.model, loaded.tokenizer, texts, sites, position="all", batch_size=BATCH, backend=backend)
        run()
        t_plain = best_of(plain, 3)
        results[backend] = best_of(run, 3) / t_plain
        print(f"{backend:>17}: {results[backend]:.3f}x the plain forward ({t_plain * 1000:.0f} ms plain)")

    this = str(Path(__file__).resolve())
    one = run_child(this, "--stream-child", str(pre_dir), "32", str(work / "s1"))
    ten = run_child(this, "--stream-child", str(pre_dir), "320", str(work / "s10"))
    rss_ratio = ten["peak_rss_mb"] / one["peak_rss_mb"]
    print(f"streaming peak RSS: 1x {one['peak_rss_mb']:.0f} MB, 10x {ten['peak_rss_mb']:.0f} MB ({rss_ratio:.2f}x)")
    ratio = results["torch"]
    print(result_line("capture", ratio, "<= 1.10", ratio <= 1.10 and rss_ratio < 1.5,
                      transformer_lens_ratio=round(results["transformer_lens"], 3),
                      nnsight_ratio=round(results["nnsight"], 3), stream_rss_ratio_10x=round(rss_ratio, 3),
                      stream_rss_target="< 1.5"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--stream-child":
        _stream_child(*sys.argv[2:5])
    else:
        main()

# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
