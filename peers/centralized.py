"""Centralized baselines through the star's aggregator: FedAvg, FedProx and FedAdam.

FedAvg (McMahan et al., 2017) averages the peers' models weighted by training samples.
FedProx (Li et al., 2020) adds mu/2 * ||w - w_global||^2 to every peer's local objective.
FedAdam (Reddi et al., 2021) treats avg - global as a pseudo-gradient and steps the global
model with Adam on the aggregator.
"""

from __future__ import annotations

import contextlib

import torch

from peers.protocol import SERVER_RULES

__all__ = ["SERVER_RULES", "FedAdam", "proximal"]


@contextlib.contextmanager
def proximal(model: torch.nn.Module, anchor: dict[str, torch.Tensor], mu: float):
    """While active, every backward pass adds mu * (w - anchor) to each parameter's gradient."""
    if mu < 0:
        raise ValueError(f"FedProx mu must be >= 0, got {mu}")
    handles = []
    for name, param in model.named_parameters():
        target = anchor[name].to(param.device, param.dtype)
        handles.append(param.register_hook(lambda grad, p=param, t=target: grad + mu * (p.detach() - t)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class FedAdam:
    """Server-side Adam on the pseudo-gradient (average of the peers' models - global model)."""

    def __init__(self, lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3):
        self.lr, self.betas, self.tau = lr, betas, tau
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def step(self, global_state: dict[str, torch.Tensor], average: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b1, b2 = self.betas
        out = {}
        for name, g in global_state.items():
            delta = average[name] - g
            m = self.m.setdefault(name, torch.zeros_like(g)).mul_(b1).add_(delta, alpha=1 - b1)
            v = self.v.setdefault(name, torch.zeros_like(g)).mul_(b2).addcmul_(delta, delta, value=1 - b2)
            out[name] = g + self.lr * m / (v.sqrt() + self.tau)
        return out
