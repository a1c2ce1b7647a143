"""The validator: a peer run by the job's creator that holds validation data (it never leaves
this object) and scores every peer's model of a round with :func:`peers.scoring.score_round`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from peers.data import LocalData
from peers.scoring import DEFAULT_PERMUTATIONS, RoundScores, score_round
from peers.training import EVAL_BATCH


class Validator:
    """``evaluate(state)``: mean cross-entropy of ``model`` loaded with ``state`` on (X, y);
    ``score(reference, updates)``: the round's contribution scores."""

    def __init__(
        self,
        model: nn.Module,
        X: np.ndarray | Tensor,
        y: np.ndarray | Tensor,
        *,
        device: torch.device | str = "cpu",
        method: str = "shapley",
        permutations: int = DEFAULT_PERMUTATIONS,
        seed: int = 0,
    ):
        if len(X) == 0 or len(X) != len(y):
            raise ValueError(f"need as many labels as validation rows (> 0), got {len(X)} and {len(y)}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.X = torch.as_tensor(X, dtype=torch.float32).to(self.device)
        self.y = torch.as_tensor(y, dtype=torch.int64).to(self.device)
        self.method, self.permutations, self.seed = method, permutations, seed

    @classmethod
    def from_local_data(cls, model: nn.Module, data: LocalData, **kwargs) -> Validator:
        """Validate on a LocalData's evaluation split (``load_local_data(...)``)."""
        return cls(model, data.X_eval, data.y_eval, **kwargs)

    @torch.no_grad()
    def evaluate(self, state: Mapping[str, Tensor]) -> float:
        """Mean per-sample cross-entropy on the validation data (eval mode, no grad)."""
        self.model.load_state_dict(dict(state), strict=True)
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for s in range(0, len(self.y), EVAL_BATCH):
            logits = self.model(self.X[s : s + EVAL_BATCH]).float()
            total += F.cross_entropy(logits, self.y[s : s + EVAL_BATCH], reduction="sum").double()
        return float(total) / len(self.y)

    def score(
        self,
        reference: Mapping[str, Tensor],
        updates: Mapping[int, Mapping[str, Tensor]],
        weights: Mapping[int, float] | None = None,
    ) -> RoundScores:
        return score_round(
            reference,
            updates,
            self.evaluate,
            weights=weights,
            method=self.method,
            permutations=self.permutations,
            seed=self.seed,
        )
