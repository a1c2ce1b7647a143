"""Self-centred clipping for gossip (ClippedGossip: He, Karimireddy & Jaggi, 2022, "Byzantine-
robust decentralized learning via ClippedGossip").

A peer moves towards each neighbour by at most ``tau``:
x_i <- x_i + sum_j w_j * clip(x_j - x_i, tau), clip(v, tau) = v * min(1, tau / ||v||),
with ``updates[0]`` the peer's own model (the worker passes itself first) and ``w`` the mixing
weights normalised over all of ``updates``. With no clipping this is the weighted mean; a
neighbour that sends anything (scaled, flipped, noise) moves the peer by at most ``w_j * tau``.

``tau`` is adaptive unless given: the (m - f)-th smallest of the m neighbours' distances to
x_i, so the f farthest are clipped to the distance of the nearest ones that remain. With at most
f Byzantine neighbours, tau is at most the farthest honest neighbour's distance: the attackers
cannot raise it, and an honest neighbourhood is averaged almost as the mean does (f = 0: exactly).

Params: ``f`` (int >= 0, default 0), ``tau`` (finite > 0, optional; overrides the adaptive one).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from peers.rules import _flat, norm_clip
from peers.rules.mean import linear_combination

NAME = "clipped_gossip"


def adaptive_tau(distances: list[float], f: int) -> float:
    """The (m - f)-th smallest neighbour distance (0 when f >= m: nobody is trusted to move us)."""
    m = len(distances)
    if f >= m:
        return 0.0
    return sorted(distances)[m - f - 1]


@torch.no_grad()
def aggregate(updates: list[dict[str, Tensor]], weights: list[float] | None = None, **params) -> dict[str, Tensor]:
    """Own model (``updates[0]``) plus each neighbour's clipped pull, weighted."""
    p = _flat.take_params(params, {"f": 0, "tau": None}, NAME)
    spec = _flat.validate(updates, NAME)
    ws = _flat.normalise_weights(weights, len(updates), NAME)
    f = p["f"]
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"{NAME}: f must be an integer >= 0, got {f!r}")
    own = updates[0]
    distances = norm_clip.norms(updates[1:], spec, own)
    if not all(math.isfinite(d) for d in distances):
        _flat.raise_nonfinite(updates, spec, NAME, "a neighbour's distance is not finite")
    given = p["tau"]
    if given is None:
        tau = adaptive_tau(distances, f)
    elif isinstance(given, bool) or not isinstance(given, (int, float)) or not math.isfinite(given) or given <= 0:
        raise ValueError(f"{NAME}: tau must be finite and > 0, got {given!r}")
    else:
        tau = float(given)
    if tau <= 0:  # no neighbour is trusted to move us (or all sit exactly on us)
        return linear_combination([own], [1.0], spec, NAME)
    scale = [1.0, *norm_clip.clip_factors(distances, tau)]
    coefs = [w * s for w, s in zip(ws, scale, strict=True)]
    # x_0 + sum_j c_j (x_j - x_0) = sum_j c_j x_j + (1 - sum_j c_j) x_0, c_0 included in the sum
    return linear_combination([*updates, own], [*coefs, 1.0 - math.fsum(coefs)], spec, NAME)
