"""Clip a peer's round update and add Gaussian noise: the Gaussian mechanism at the client level."""

from __future__ import annotations

import math

import torch


def update_norm(start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> float:
    """L2 norm of ``trained - start`` over all floating-point tensors."""
    total = 0.0
    for name, t in trained.items():
        if t.is_floating_point():
            total += float((t.double() - start[name].double()).pow(2).sum())
    return math.sqrt(total)


@torch.no_grad()
def privatize(
    start: dict[str, torch.Tensor],
    trained: dict[str, torch.Tensor],
    *,
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """``start + clip_C(trained - start) + N(0, (noise_multiplier * C)^2)`` per floating-point
    coordinate, C = ``clip``; integer buffers (step counters) pass unchanged. The noise is drawn
    fresh (``generator``: a seeded one, for tests)."""
    if not (math.isfinite(clip) and clip > 0) or not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"need clip > 0 and noise_multiplier >= 0, got {clip}, {noise_multiplier}")
    if start.keys() != trained.keys():
        raise ValueError("start and trained models have different tensors")
    norm = update_norm(start, trained)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    sigma = noise_multiplier * clip
    out = {}
    for name, t in trained.items():
        if not t.is_floating_point():
            out[name] = t.detach().clone()
            continue
        base = start[name].detach()
        update = (t.detach() - base) * scale
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float64) * sigma if sigma else 0.0
        out[name] = (base.double() + update.double() + noise).to(t.dtype)
    return out
