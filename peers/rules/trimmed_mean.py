"""Coordinate-wise trimmed mean (Yin et al., 2018): for every parameter, drop the k largest
and k smallest of the n values and average the remaining n - 2k. Tolerates k arbitrary
updates per coordinate.

Parameter ``trim`` (default 0.2): a float in [0, 0.5) is a fraction per side,
k = floor(trim * n); an int is k itself. n - 2k must be >= 1.
``weights`` are validated but not used (order statistics; see ``median``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from peers.rules import _flat

NAME = "trimmed_mean"


def trim_count(trim: object, n: int, rule: str = NAME) -> int:
    """Values dropped per side for ``trim`` (fraction in [0, 0.5) or count) among ``n``."""
    if isinstance(trim, bool):
        raise ValueError(f"{rule}: trim must be a fraction in [0, 0.5) or an integer count, got {trim!r}")
    if isinstance(trim, int):
        k = trim
        if k < 0:
            raise ValueError(f"{rule}: trim count must be >= 0, got {k}")
    elif isinstance(trim, float):
        if not math.isfinite(trim) or not 0.0 <= trim < 0.5:
            raise ValueError(f"{rule}: trim fraction must be in [0, 0.5), got {trim}")
        k = math.floor(trim * n)
    else:
        raise ValueError(f"{rule}: trim must be a fraction in [0, 0.5) or an integer count, got {trim!r}")
    if n - 2 * k < 1:
        raise ValueError(f"{rule}: trimming {k} per side leaves nothing of {n} updates (need n - 2*trim >= 1)")
    return k


@torch.no_grad()
def aggregate(updates: list[dict[str, Tensor]], weights: list[float] | None = None, **params) -> dict[str, Tensor]:
    """Coordinate-wise trimmed mean; param ``trim`` (fraction per side or count, default 0.2)."""
    p = _flat.take_params(params, {"trim": 0.2}, NAME)
    spec = _flat.validate(updates, NAME)
    n = len(updates)
    _flat.normalise_weights(weights, n, NAME)
    k = trim_count(p["trim"], n)

    return _flat.coordinatewise(updates, spec, lambda s: _flat.sorted_mean(s[k : n - k]), NAME)
