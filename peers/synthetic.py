"""FedProx's Synthetic(alpha, beta) federated benchmark (Li et al., 2020), generated locally.

Device k draws its own model W_k, b_k ~ N(u_k, 1) with u_k ~ N(0, alpha) (alpha: how much the
local models differ) and its own inputs x ~ N(v_k, Sigma) with v_k ~ N(B_k, 1), B_k ~ N(0, beta)
(beta: how much the local data differ), Sigma diagonal with Sigma_jj = j^-1.2; labels are
argmax(softmax(W_k x + b_k)). Sample counts per device follow a lognormal power law.
"""

from __future__ import annotations

import numpy as np

DIM = 60
CLASSES = 10


def synthetic_federated(
    alpha: float,
    beta: float,
    parts: int,
    *,
    seed: int = 0,
    dim: int = DIM,
    classes: int = CLASSES,
    mean_samples: float = 4.0,
    min_samples: int = 50,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`parts` (X float32 (n_k, dim), y int64 (n_k,)) shards, one per device."""
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got {alpha}, {beta}")
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    rng = np.random.default_rng(seed)
    sizes = (rng.lognormal(mean_samples, 2.0, parts).astype(int) + min_samples).clip(max=5000)
    sigma = np.arange(1, dim + 1, dtype=np.float64) ** -1.2
    shards = []
    for k in range(parts):
        u = rng.normal(0, np.sqrt(alpha))
        B = rng.normal(0, np.sqrt(beta))
        W = rng.normal(u, 1, (dim, classes))
        b = rng.normal(u, 1, classes)
        v = rng.normal(B, 1, dim)
        X = rng.normal(v, np.sqrt(sigma), (sizes[k], dim))
        y = np.argmax(X @ W + b, axis=1)
        shards.append((X.astype(np.float32), y.astype(np.int64)))
    return shards
