"""Krum and multi-Krum (Blanchard et al., NeurIPS 2017).

Each update i gets a score: the sum of squared L2 distances (over the whole model) to its
n - f - 2 nearest other updates. Krum returns the update with the lowest score; multi-Krum
averages the ``m`` lowest-scoring updates (scores computed once), weighted by their
``weights`` renormalised over the selection. Requires n > 2f + 2.

Params: ``f`` (number of Byzantine updates tolerated, required), ``m`` (how many to select;
Krum: 1, multi-Krum: default n - f, at most n - f). Ties go to the lower index. With m=1 the
result is a copy of the selected update, bit for bit in every dtype.

Pairwise distances are summed block by block, in float64, from the differences x - y
themselves (no [n, P] copy of the inputs). The Gram expansion |x|^2 + |y|^2 - 2 x.y cancels
catastrophically when updates are close, which is when Krum's choice is delicate: it put two
random 1M-weight updates at distance 1e-4 8x too far apart, and picked the wrong one of five
updates with a relative spread of 1e-6 in 2 random cases of 10.
"""

from __future__ import annotations

import torch
from torch import Tensor

from peers.rules import _flat
from peers.rules.mean import linear_combination

NAME = "krum"
MULTI_NAME = "multi_krum"


@torch.no_grad()
def pairwise_sq_distances(updates: list[dict[str, Tensor]], spec: _flat.Spec, rule: str = NAME) -> Tensor:
    """[n, n] float64 squared L2 distances between whole updates (n >= 2), from differences."""
    n = len(updates)
    first, second = torch.triu_indices(n, n, 1).tolist()
    upper = torch.zeros(len(first), dtype=torch.float64, device=spec.device)
    for _, _, rows in _flat.column_rows(updates, spec, dtype=torch.float64):
        # one small single-threaded norm per pair and block (see _flat.column_rows); in float64
        # the difference of two float32 values is exact unless they are 2**29 times apart
        norms = [torch.linalg.vector_norm(rows[j] - rows[i]) for i, j in zip(first, second, strict=True)]
        upper += torch.stack(norms).square_()
    if not bool(torch.isfinite(upper).all()):  # a NaN or Inf reaches every distance of its update
        _flat.raise_nonfinite(updates, spec, rule, "a pairwise distance is not finite")
    d = torch.zeros((n, n), dtype=torch.float64, device=spec.device)
    d[first, second] = upper
    return d + d.T


def check_f(f: object, n: int, rule: str) -> int:
    f = _flat.as_count(f, "f", rule)
    if n <= 2 * f + 2:
        raise ValueError(f"{rule}: needs n > 2f + 2 updates; got n={n}, f={f} (n must be >= {2 * f + 3})")
    return f


def scores_from_distances(d: Tensor, f: int) -> Tensor:
    """Krum score of each row: sum of its n - f - 2 smallest distances to the others; at least
    one (as Flower), for Bulyan's last Krum rounds on fewer than 2f + 3 updates."""
    n = d.shape[0]
    k = max(1, n - f - 2)
    # the diagonal (0, self) sorts first since distances are >= 0; drop it explicitly instead
    off = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), float("inf"))
    return off.sort(dim=1).values[:, :k].sum(dim=1)


def select(
    updates: list[dict[str, Tensor]], f: int, m: int, spec: _flat.Spec | None = None, rule: str = NAME
) -> list[int]:
    """Indices of the ``m`` updates with the lowest Krum scores (ascending score, ties by index)."""
    if spec is None:
        spec = _flat.validate(updates, rule)
    n = len(updates)
    f = check_f(f, n, rule)
    m = _flat.as_count(m, "m", rule, minimum=1)
    if m > n - f:
        raise ValueError(f"{rule}: m={m} would select more than n - f = {n - f} updates")
    scores = scores_from_distances(pairwise_sq_distances(updates, spec, rule), f)
    order = torch.argsort(scores.cpu(), stable=True)
    return [int(i) for i in order[:m]]


@torch.no_grad()
def _aggregate(updates, weights, f, m, rule: str) -> dict[str, Tensor]:
    spec = _flat.validate(updates, rule)
    n = len(updates)
    ws = _flat.normalise_weights(weights, n, rule)
    if m is None:  # multi-Krum default
        m = n - check_f(f, n, rule)
    chosen = select(updates, f, m, spec, rule)
    total = sum(ws[i] for i in chosen)
    if total <= 0:
        raise ValueError(f"{rule}: every selected update {chosen} has weight 0")
    if len(chosen) == 1:  # the update itself: averaging in float would round int64 beyond 2**53
        return {e.name: updates[chosen[0]][e.name].detach().clone() for e in spec.entries}
    return linear_combination([updates[i] for i in chosen], [ws[i] / total for i in chosen], spec, rule)


def aggregate(updates: list[dict[str, Tensor]], weights: list[float] | None = None, **params) -> dict[str, Tensor]:
    """Krum: the single update (``m=1``) closest to its n - f - 2 neighbours. Params ``f``, ``m``."""
    p = _flat.take_params(params, {"f": _flat.REQUIRED, "m": 1}, NAME)
    return _aggregate(updates, weights, p["f"], p["m"], NAME)


def multi_krum(updates: list[dict[str, Tensor]], weights: list[float] | None = None, **params) -> dict[str, Tensor]:
    """Multi-Krum: weighted mean of the ``m`` (default n - f) best-scored updates. Params ``f``, ``m``."""
    p = _flat.take_params(params, {"f": _flat.REQUIRED, "m": None}, MULTI_NAME)
    return _aggregate(updates, weights, p["f"], p["m"], MULTI_NAME)
