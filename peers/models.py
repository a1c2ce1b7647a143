"""Small classifiers shared by all peers of a job."""

from __future__ import annotations

import torch
from torch import nn

MODEL_CHOICES = ("logreg", "mlp")


def build_model(name: str, num_features: int, num_classes: int, *, hidden: int = 64,
                seed: int | None = None) -> nn.Module:
    """Build a model; with `seed`, every caller gets bit-identical initial weights."""
    if name not in MODEL_CHOICES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CHOICES)}")
    if num_features < 1 or num_classes < 1:
        raise ValueError(f"need num_features >= 1 and num_classes >= 1, got {num_features}, {num_classes}")
    if name == "mlp" and hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")

    def make() -> nn.Module:
        if name == "logreg":
            return nn.Linear(num_features, num_classes)
        return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    if seed is None:
        return make()
    # Seed only inside a forked RNG so the caller's global torch RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()
