"""Bulyan (El Mhamdi et al., ICML 2018) on top of Krum, as in the paper and Flower.

1. Selection, recursive: Krum picks one update from the pool, which moves it to the
   selection; repeated until theta = n - 2f updates are selected. Each round scores the
   remaining pool only (n' - f - 2 neighbours, at least one; see ``peers.rules.krum``), so this
   is not the same as scoring once and keeping the theta best.
2. Aggregation, coordinate-wise over the selection: the beta = theta - 2f = n - 4f values
   closest to the coordinate's median (mean of the middle pair for even theta), averaged.

Param ``f`` (Byzantine count, required). Requires n >= 4f + 3.
``weights`` are validated but not used (the coordinate-wise stage is an order statistic).
"""

from __future__ import annotations

import torch
from torch import Tensor

from peers.rules import _flat, krum

NAME = "bulyan"


@torch.no_grad()
def aggregate(updates: list[dict[str, Tensor]], weights: list[float] | None = None, **params) -> dict[str, Tensor]:
    """Bulyan with ``f`` tolerated Byzantine updates."""
    p = _flat.take_params(params, {"f": _flat.REQUIRED}, NAME)
    spec = _flat.validate(updates, NAME)
    n = len(updates)
    _flat.normalise_weights(weights, n, NAME)
    f = _flat.as_count(p["f"], "f", NAME)
    if n < 4 * f + 3:
        raise ValueError(f"{NAME}: needs n >= 4f + 3 updates; got n={n}, f={f} (n must be >= {4 * f + 3})")
    theta = n - 2 * f
    beta = theta - 2 * f
    chosen = select(updates, f, theta, spec)
    return _flat.coordinatewise(updates, spec, lambda rows: closest_to_median_mean(rows, beta), NAME, rows=chosen)


def select(updates: list[dict[str, Tensor]], f: int, theta: int, spec: _flat.Spec) -> list[int]:
    """Indices of the ``theta`` updates Krum picks one at a time, each pick leaving the pool (ties
    to the lower index). Distances are computed once: removing an update changes no other."""
    d = krum.pairwise_sq_distances(updates, spec, NAME)
    pool, chosen = list(range(len(updates))), []
    for _ in range(theta):
        scores = krum.scores_from_distances(d[pool][:, pool], f)
        chosen.append(pool.pop(int(torch.argmin(scores))))  # argmin: the first minimum
    return chosen


def closest_to_median_mean(s: list[Tensor], beta: int) -> Tensor:
    """Elementwise mean of the ``beta`` values closest to the median, given rows ``s`` sorted
    elementwise. Those values are a window s[j : j + beta] of the sorted order; sliding it one
    step right (drop s[j], take s[j + beta]) pays iff s[j + beta] is closer to the median than
    s[j], and since the sides only move apart that holds for a prefix of j. So the window sum
    is sum(s[:beta]) plus the increments s[j + beta] - s[j] where that holds (ties stay left):
    2f cheap row operations instead of a stack + topk + gather per block."""
    med = _flat.sorted_median(s)
    acc = s[0].clone()
    for r in s[1:beta]:
        acc.add_(r)
    for j in range(len(s) - beta):
        right, left = s[j + beta], s[j]
        acc.add_(torch.where((right - med) < (med - left), right - left, 0.0))
    return acc.div_(beta)
