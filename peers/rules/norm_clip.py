"""Norm clipping then weighted mean (Sun et al., 2019, "Can you really backdoor FL?").

Each update's L2 norm -- over the whole model, or of its difference from ``reference`` (e.g.
the current global/local model) when given -- is scaled down to at most ``max_norm``:
delta_i <- delta_i * min(1, max_norm / ||delta_i||). The result is the weighted mean of the
clipped updates (``reference + mean of clipped deltas`` when a reference is given), so no
single update moves the result by more than ``w_i * max_norm`` and the result stays within
``max_norm`` of the reference (of the origin without one).

Params: ``max_norm`` (finite, > 0, required), ``reference`` (state dict, optional).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from peers.rules import _flat
from peers.rules.mean import linear_combination

NAME = "norm_clip"


def _check_reference(reference: object, spec: _flat.Spec) -> dict[str, Tensor]:
    if not isinstance(reference, dict):
        raise ValueError(f"{NAME}: reference must be a state dict, got {type(reference).__name__}")
    names = spec.names()
    if set(reference) != set(names):
        missing = sorted(set(names) - set(reference))
        extra = sorted(set(reference) - set(names))
        raise ValueError(
            f"{NAME}: reference tensor names differ (missing: {missing or 'none'}; unexpected: {extra or 'none'})"
        )
    for e in spec.entries:
        t = reference[e.name]
        if not isinstance(t, Tensor) or tuple(t.shape) != e.shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{NAME}: reference {e.name!r} is {got}, updates have shape {e.shape}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{NAME}: reference tensor {e.name!r} contains non-finite values (NaN or Inf)")
    return reference


#: values per float64 partial norm: few ops, and each chunk's float64 copy stays in cache
NORM_CHUNK = 1 << 16


def _norm(t: Tensor) -> float:
    """L2 norm accumulated in float64 chunk by chunk, for any dtype: torch's float32 norm of 25M
    values is off by 1e-3 (and so would be the clip factor), and a float64 copy of a whole big
    tensor would double its memory."""
    parts = [torch.linalg.vector_norm(c.to(torch.float64)) for c in t.reshape(-1).split(NORM_CHUNK)]
    return float(torch.linalg.vector_norm(torch.stack(parts)))


@torch.no_grad()
def norms(
    updates: list[dict[str, Tensor]], spec: _flat.Spec, reference: dict[str, Tensor] | None = None
) -> list[float]:
    """L2 norm of each update (or of update - reference) over all its tensors."""
    out = []
    for u in updates:
        sq = 0.0
        for e in spec.entries:
            t = u[e.name].detach()
            if reference is not None:
                r = reference[e.name].detach()
                t = torch.sub(t, r) if t.is_floating_point() and t.dtype == r.dtype else t.double() - r.double()
            sq += _norm(t) ** 2
        out.append(math.sqrt(sq))
    return out


def clip_factors(norms_: list[float], max_norm: float) -> list[float]:
    return [1.0 if nrm <= max_norm else max_norm / nrm for nrm in norms_]


@torch.no_grad()
def aggregate(updates: list[dict[str, Tensor]], weights: list[float] | None = None, **params) -> dict[str, Tensor]:
    """Clip each update (or its delta from ``reference``) to ``max_norm``, then weighted mean."""
    p = _flat.take_params(params, {"max_norm": _flat.REQUIRED, "reference": None}, NAME)
    spec = _flat.validate(updates, NAME)
    ws = _flat.normalise_weights(weights, len(updates), NAME)
    max_norm = p["max_norm"]
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)):
        raise ValueError(f"{NAME}: max_norm must be a number, got {max_norm!r}")
    max_norm = float(max_norm)
    if not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"{NAME}: max_norm must be finite and > 0, got {max_norm}")
    reference = None if p["reference"] is None else _check_reference(p["reference"], spec)
    ns = norms(updates, spec, reference)
    if not all(math.isfinite(x) for x in ns):
        _flat.raise_nonfinite(updates, spec, NAME, "an update's norm is not finite")
    coefs = [w * s for w, s in zip(ws, clip_factors(ns, max_norm), strict=True)]
    if reference is None:
        return linear_combination(updates, coefs, spec, NAME)
    # reference + sum_i c_i (u_i - reference) = sum_i c_i u_i + (1 - sum_i c_i) reference
    return linear_combination([*updates, reference], [*coefs, 1.0 - math.fsum(coefs)], spec, NAME)
