"""Directions of an output-layer-only edit: when unlearning left the residual stream as it was and changed only
the output layer, the subspace the edit reads from is the row space of the weight difference (post head - pre
head). Projecting it out of the final hidden state is the orthogonalization attack for that case."""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from palimpsest.capture import ablate_subspace
from palimpsest.devices import read_tensor

HEAD_SITE = "ln_final.hook_normalized"  # the final hidden state, as the output layer reads it
# singular values below this share of the largest count as numerical noise, not part of the edit
RANK_TOLERANCE = 1e-4


def head_weight(model: torch.nn.Module) -> Float[Tensor, "vocab d"]:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding layer")
    return read_tensor(head).float()  # on the head's device; loaded from accelerate's offload when on meta


def head_edit_basis(pre: torch.nn.Module, other: torch.nn.Module, max_rank: int) -> Float[Tensor, "k d"] | None:
    """The top right singular vectors of (other head - pre head), up to `max_rank` and its numerical rank;
    None when the heads are equal or differ in shape. Computed on the pre head's device (the other head is moved
    there: the two models may sit on different devices); the basis comes back on the CPU."""
    before, after = head_weight(pre), head_weight(other)
    if before.shape != after.shape:
        return None
    after = after.to(before.device)
    diff = after - before
    if float(diff.norm()) <= RANK_TOLERANCE * float(before.norm()):
        return None
    _, singular, vh = torch.linalg.svd(diff, full_matrices=False)
    rank = int((singular > RANK_TOLERANCE * singular[0]).sum())
    return vh[:min(rank, max_rank)].cpu().contiguous()


def random_basis(k: int, d: int, generator: torch.Generator) -> Float[Tensor, "k d"]:
    """An orthonormal basis of a random k-dimensional subspace (the chance control)."""
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=generator))
    return q.T.contiguous()


def subspace_candidates(basis: Float[Tensor, "k d"], ranks: Sequence[int]) -> dict[tuple[str, str], list]:
    """One candidate edit per rank r: project the top r basis vectors out of the final hidden state."""
    return {(f"head top-{r}", "output layer"): [(HEAD_SITE, ablate_subspace(basis[:r]))]
            for r in sorted(set(ranks)) if 1 <= r <= basis.shape[0]}
