"""Results of pure computations on a model (teacher-forced scores, captures, greedy answers), kept inside a
`session()`, so an audit, or a demo and a validation run that audit one pre model against many post models,
computes each of them once. Outside a session nothing is kept: a model fine-tuned in place between two audits in
a notebook is never scored from before.

A result is reused only while the model computes what it computed then: no forward hook or pre-hook is installed
(an intervention is active: the result would be the edited model's), the model is in the same train/eval mode,
and no parameter was replaced or edited in place since (each parameter's identity, storage and autograd version
counter).
Anything else (an offloaded model, whose parameters accelerate swaps on every forward pass; inference-mode weights
without version counters) is simply computed again.
"""

from __future__ import annotations

import copy
import os
import weakref
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator, TypeVar

import torch

T = TypeVar("T")
_STORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DISABLED = "PALIMPSEST_NO_MEMO"  # set to 1 to compute everything afresh (benchmarks of the uncached path)
_OPEN_SESSIONS = [0]
_HELD = [False]


@contextmanager
def session() -> Iterator[None]:
    """Keep results while the block runs (nested blocks share the outermost one's); dropped when it ends. Inside,
    a model's weights must change only through operations that move their version counters (in-place tensor ops,
    load_state_dict), or `forget(model)` must follow the change: fused optimizers write without moving them."""
    _OPEN_SESSIONS[0] += 1
    try:
        yield
    finally:
        _OPEN_SESSIONS[0] -= 1
        if not _OPEN_SESSIONS[0]:
            _STORE.clear()


def model_stamp(model: torch.nn.Module) -> tuple | None:
    """What the model computes, cheaply: None when that cannot be vouched for (a hook is installed, a weight has
    no version counter)."""
    from torch.nn.modules import module as module_globals

    if module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks:
        return None
    for sub in model.modules():
        if sub._forward_hooks or sub._forward_pre_hooks:
            return None
    try:
        weights = tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())
    except RuntimeError:  # inference tensors track no version
        return None
    return (model.training, weights)


def hold_for_process() -> None:
    """A session for the rest of this process: for worker processes that audit many post models against the
    reference models they keep loaded (the demo's and validate's pools). Not for a user's own process."""
    if not _HELD[0]:
        _HELD[0] = True
        _OPEN_SESSIONS[0] += 1


def memoized(model: torch.nn.Module, key: Hashable, compute: Callable[[], T], *, share: bool = False) -> T:
    """`compute()`, or inside a `session()` the value it gave for `key` on this very model in the same state (see
    the module doc).

    The key must hold every input the result depends on. A reused value is a deep copy unless `share` (tensors the
    callers never write to, such as captures)."""
    if not _OPEN_SESSIONS[0] or os.environ.get(_DISABLED) == "1" or not isinstance(model, torch.nn.Module):
        return compute()
    stamp = model_stamp(model)
    if stamp is None:
        return compute()
    store = _STORE.get(model)
    if store is None:
        store = _STORE[model] = {}
    kept = store.get(key)
    if kept is not None and kept[0] == stamp:
        return kept[1] if share else copy.deepcopy(kept[1])
    value = compute()
    if model_stamp(model) == stamp:
        store[key] = (stamp, value)
        return value if share else copy.deepcopy(value)
    return value


def forget(model: torch.nn.Module) -> None:
    """Drop every result kept for `model`."""
    _STORE.pop(model, None)
