"""A steering strength sweep (8 strengths x 64 items) as batched hooked forwards (`add_per_row`: one strength per
batch row, items repeated) versus one hooked forward per (item, strength), in one run; the results must agree.

Run: python benchmarks/restoration.py   (the last line is the JSON result)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import best_of, random_llama, random_texts, result_line  # noqa: E402

N_ITEMS, LENGTH, STRENGTHS, ROWS = 64, 16, (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0), 128


def main() -> None:
    import numpy as np
    import torch

    from palimpsest.concepts import Item
    from palimpsest.models import load_model
    from palimpsest.restoration import sweep, sweep_one_by_one

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="palimpsest-bench-restore-"))
    loaded = load_model(random_llama(work / "model", hidden=128, layers=4, seed=0))
    texts = random_texts(N_ITEMS, LENGTH + 1, seed=2)
    items = [Item(prompt=" ".join(t.split()[:-1]), answer=t.split()[-1]) for t in texts]
    site = "blocks.2.hook_resid_post"
    # a direction that changes answers as the strength grows: the unembedding of the first item's answer
    answer_id = loaded.tokenizer.convert_tokens_to_ids(items[0].answer)
    vector = loaded.model.lm_head.weight[answer_id].detach().clone() * 0.5

    batched_out = sweep(loaded, items, site, vector, STRENGTHS, batch_size=ROWS)
    loop_out = sweep_one_by_one(loaded, items, site, vector, STRENGTHS)  # also warms both paths
    agree = bool(np.array_equal(batched_out, loop_out))
    t_batched = best_of(lambda: sweep(loaded, items, site, vector, STRENGTHS, batch_size=ROWS), 3)
    t_loop = best_of(lambda: sweep_one_by_one(loaded, items, site, vector, STRENGTHS), 1)
    ratio = t_loop / t_batched
    print(f"one forward per (item, strength): {t_loop * 1000:.0f} ms; batched add_per_row sweep "
          f"({ROWS} rows per forward): {t_batched * 1000:.0f} ms; results identical: {agree}; "
          f"answers flipped by the sweep: {int(batched_out.any(0).sum() - batched_out.all(0).sum())}")
    print(result_line("restoration_strength_sweep", ratio, ">= 4", ratio >= 4.0 and agree,
                      n_items=N_ITEMS, n_strengths=len(STRENGTHS), loop_ms=round(t_loop * 1000, 1),
                      batched_ms=round(t_batched * 1000, 1), results_identical=agree))


if __name__ == "__main__":
    main()

# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
