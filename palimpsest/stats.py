"""Calibration of residue scores between a floor and a ceiling, with bootstrap confidence intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float


@dataclass(frozen=True)
class Calibrated:
    residue: float | None
    ci: tuple[float, float] | None
    floor: float
    ceiling: float
    post: float
    # the ceiling is not above the floor by this margin: the measure cannot separate them
    degenerate: bool


def calibrate_value(post: float, floor: float, ceiling: float, min_gap: float = 1e-6) -> float | None:
    gap = ceiling - floor
    if not np.isfinite(gap) or gap <= min_gap:
        return None
    return float(np.clip((post - floor) / gap, 0.0, 1.0))


def _as_array(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def calibrate(
    post: Float[np.ndarray, " n"] | list[float],
    floor: Float[np.ndarray, " m"] | list[float] | float,
    ceiling: Float[np.ndarray, " k"] | list[float] | float,
    *,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    min_gap: float = 1e-6,
    paired: bool = False,
) -> Calibrated:
    """Residue = (mean(post) - mean(floor)) / (mean(ceiling) - mean(floor)), clipped to [0, 1].

    Per-item arrays are resampled by bootstrap (jointly when `paired`, i.e. the three arrays are the same items),
    giving a percentile interval; scalar floors or ceilings are held fixed.
    """
    post_arr, floor_arr, ceil_arr = _as_array(post), _as_array(floor), _as_array(ceiling)
    point_post, point_floor, point_ceil = post_arr.mean(), floor_arr.mean(), ceil_arr.mean()
    residue = calibrate_value(point_post, point_floor, point_ceil, min_gap)
    if residue is None:
        return Calibrated(None, None, float(point_floor), float(point_ceil), float(point_post), True)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        if paired and len(post_arr) == len(floor_arr) == len(ceil_arr):
            idx = rng.integers(0, len(post_arr), len(post_arr))
            p, f, c = post_arr[idx].mean(), floor_arr[idx].mean(), ceil_arr[idx].mean()
        else:
            p = post_arr[rng.integers(0, len(post_arr), len(post_arr))].mean()
            f = floor_arr[rng.integers(0, len(floor_arr), len(floor_arr))].mean() if len(floor_arr) > 1 else point_floor
            c = ceil_arr[rng.integers(0, len(ceil_arr), len(ceil_arr))].mean() if len(ceil_arr) > 1 else point_ceil
        value = calibrate_value(p, f, c, min_gap)
        samples.append(residue if value is None else value)
    alpha = (1 - ci_level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return Calibrated(residue, (float(lo), float(hi)), float(point_floor), float(point_ceil), float(point_post), False)


def bootstrap_mean_ci(values, *, n_bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    arr = _as_array(values)
    if len(arr) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), (n_bootstrap, len(arr)))].mean(axis=1)
    alpha = (1 - ci_level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return (float(lo), float(hi))


def bootstrap_ci_independent(statistic, sizes: tuple[int, ...], *, n_bootstrap: int = 1000,
                             ci_level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of a statistic of several samples resampled independently (e.g. members and non-members
    of an AUC); `bootstrap_ci` resamples arrays of the same items jointly.

    `sizes`: the number of units of each sample. Each replicate draws one index array per sample, in order,
    `rng.integers(0, n, n)`, and calls `statistic(*indices)`; a replicate whose statistic is None (undefined on that
    resample) is dropped. None when every replicate was undefined.
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_bootstrap):
        value = statistic(*(rng.integers(0, n, n) for n in sizes))
        if value is not None:
            values.append(value)
    if not values:
        return None
    alpha = (1 - ci_level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(statistic, *arrays, n_bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0
                 ) -> tuple[float, float] | None:
    """Percentile interval of `statistic(*resampled)`, the arrays (same length: the same items) resampled jointly.

    Each draw takes one index vector `rng.integers(0, n, n)` and indexes every array with it; draws whose statistic
    is None or not finite are dropped; None when none is left (or the arrays are empty). Pass `np.arange(n)` to get
    the resampled indices themselves (a statistic over several tensors of the same items).
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap_ci resamples the arrays jointly: lengths differ ({[len(a) for a in arrays]})")
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        value = statistic(*(a[idx] for a in arrays))
        if value is not None and np.isfinite(value):
            samples.append(float(value))
    if not samples:
        return None
    alpha = (1 - ci_level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return (float(lo), float(hi))
