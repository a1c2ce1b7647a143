"""Coordinate-wise median (Yin et al., 2018): for every parameter, the median of the n values;
for even n, the mean of the two middle values (as ``numpy.median``; ``torch.median`` would
return the lower one). Tolerates up to ceil(n/2) - 1 arbitrary updates per coordinate.

``weights`` are validated but not used: an order statistic is taken over updates, not over
self-reported sample counts (which a Byzantine peer could inflate).

Computed block by block (``_flat.column_rows``: n row copies of c coordinates, sorted by a
sorting network while in cache), which is faster than ``torch.stack(flat).median(0)`` on CPU and needs ~1 MB
extra instead of n*P*4 bytes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from peers.rules import _flat

NAME = "median"


@torch.no_grad()
def aggregate(updates: list[dict[str, Tensor]], weights: list[float] | None = None, **params) -> dict[str, Tensor]:
    """Coordinate-wise median; takes no parameters."""
    _flat.take_params(params, {}, NAME)
    spec = _flat.validate(updates, NAME)
    _flat.normalise_weights(weights, len(updates), NAME)
    return _flat.coordinatewise(updates, spec, _flat.sorted_median, NAME)
