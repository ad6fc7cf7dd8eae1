"""The whole `probes` analyser vs the activation capture it needs alone, on the organism (and SmolLM2 with --smollm2).

Both sides are measured in this run on the same pair and concept: capture = every (model, item set, position) the
analyser reads, into a fresh Activations; whole = a fresh Activations plus the analyser (capture + probes).
Run: python benchmarks/probes.py [--smollm2] [--pre DIR --post DIR [--floor DIR] --concept C.yaml]
(the last line is the JSON result)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import result_line  # noqa: E402

TARGET = 5.0  # whole analyser <= 5x the capture alone


def _organism_pair():
    from palimpsest.models import ModelPair, load_model
    from palimpsest.organism import (
        build_oracle,
        build_organism,
        load_world,
        organism_concept,
        retain_training_items,
    )
    from palimpsest.unlearn import unlearn

    cache = os.environ.get("PALIMPSEST_CACHE")
    world = load_world(0)
    concept = organism_concept(world)
    pre_dir = build_organism(0, cache)
    pre = load_model(pre_dir, name="pre")
    post = unlearn("suppress", load_model(pre_dir, name="post"), list(concept.forget),
                   retain_training_items(world, concept, max_items=256))
    forget_people = tuple(dict.fromkeys(it.subject for it in concept.forget))
    floor = load_model(build_oracle(0, forget_people, cache), name="floor")
    return ModelPair(pre, post, floor), concept


def _smollm2_pair():
    """SmolLM2 against itself with a 50-item country -> capital concept (timing does not depend on unlearning)."""
    from palimpsest.concepts import ConceptSpec, Item
    from palimpsest.models import ModelPair, smollm2

    capitals = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
                ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Greece", "Athens"),
                ("Portugal", "Lisbon"), ("Austria", "Vienna")]
    templates = ["The capital of {c} is", "{c}'s capital city is", "The capital city of {c} is called",
                 "Q: What is the capital of {c}? A:", "The seat of government of {c} is"]
    items = [Item(prompt=t.format(c=c), answer=a, subject=c, attribute="capital") for c, a in capitals
             for t in templates]
    concept = ConceptSpec(name="capitals", forget=items[:10], retain=items[10:])
    model = smollm2()
    return ModelPair(model, model), concept


def measure(pair, concept, label: str) -> dict:
    import torch

    import palimpsest.probes  # noqa: F401
    from palimpsest.audit.runner import run_one
    from palimpsest.capture import Activations, resid_post_sites
    from palimpsest.probes.data import TEST_SETS, TRAIN_SETS
    from palimpsest.types import AuditConfig

    config = AuditConfig(n_bootstrap=200)
    sets = [s for s in (*TRAIN_SETS, *TEST_SETS) if concept.items(s)]
    site = resid_post_sites(pair.pre.model)[0]
    torch.set_num_threads(1)  # the shared CI box has 2 cores; oversubscription distorts both sides

    def capture_only() -> None:
        acts = Activations.for_pair(pair, concept)
        for model in pair.models():
            for s in sets:
                for position in ("last", "subject"):
                    acts.get(model, site, s, position)  # one pass reads every layer's residual stream

    def whole() -> None:
        run_one("probes", pair, concept, Activations.for_pair(pair, concept), config)

    capture_only()  # warm up
    t0 = time.perf_counter()
    capture_only()
    t_capture = time.perf_counter() - t0
    t0 = time.perf_counter()
    whole()
    t_whole = time.perf_counter() - t0
    layers = pair.pre.n_layers
    print(f"{label}: capture {t_capture:.2f}s, whole probes analyser {t_whole:.2f}s "
          f"({t_whole / layers:.2f}s per layer, {layers} layers), ratio {t_whole / t_capture:.2f}")
    return {"capture_s": round(t_capture, 3), "whole_s": round(t_whole, 3), "layers": layers,
            "per_layer_s": round(t_whole / layers, 3), "ratio": t_whole / t_capture}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smollm2", action="store_true", help="also time SmolLM2-135M on a 50-item concept")
    parser.add_argument("--pre")
    parser.add_argument("--post")
    parser.add_argument("--floor")
    parser.add_argument("--concept")
    args = parser.parse_args()
    if args.pre:
        from palimpsest.concepts import load_concept
        from palimpsest.models import load_pair

        pair, concept = load_pair(args.pre, args.post, floor_source=args.floor), load_concept(args.concept)
        label = "given pair"
    else:
        pair, concept = _organism_pair()
        label = "organism"
    main_result = measure(pair, concept, label)
    extra = {}
    if args.smollm2:
        smol = measure(*_smollm2_pair(), "smollm2")
        extra = {f"smollm2_{k}": (round(v, 3) if isinstance(v, float) else v) for k, v in smol.items()}
    else:
        extra["smollm2"] = "skipped (pass --smollm2; loading takes ~18 s and 30 layers of probes ~minutes on 2 cores)"
    ratio = main_result.pop("ratio")
    print(result_line("probes", ratio, f"<= {TARGET}", ratio <= TARGET, model=label, **main_result, **extra))


if __name__ == "__main__":
    main()

# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
