"""Spectral properties of mixing matrices (numpy; kept apart from the stdlib-only topology)."""

from __future__ import annotations

import numpy as np


def mixing_matrix(rows: list[dict[int, float]]) -> np.ndarray:
    """The n x n matrix W with W[i, j] = rows[i][j] (0 where j is not in row i)."""
    n = len(rows)
    W = np.zeros((n, n), dtype=np.float64)
    for i, row in enumerate(rows):
        for j, w in row.items():
            if not 0 <= j < n:
                raise ValueError(f"row {i} names position {j}, outside 0..{n - 1}")
            W[i, j] = w
    return W


def second_eigenvalue_modulus(rows_or_matrix) -> float:
    """|lambda_2|: the second largest eigenvalue modulus (SLEM) of W (0 for a single peer)."""
    W = rows_or_matrix if isinstance(rows_or_matrix, np.ndarray) else mixing_matrix(rows_or_matrix)
    if W.shape[0] < 2:
        return 0.0
    eig = np.linalg.eigvalsh(W) if np.allclose(W, W.T) else np.linalg.eigvals(W)
    moduli = np.sort(np.abs(eig))[::-1]
    return float(moduli[1])


def spectral_gap(rows_or_matrix) -> float:
    """1 - |lambda_2| of W. 1 for exact averaging (complete graph), 0 for a disconnected graph;
    gossip over W shrinks the distance to the average by about |lambda_2| per step."""
    return float(min(1.0, max(0.0, 1.0 - second_eigenvalue_modulus(rows_or_matrix))))
