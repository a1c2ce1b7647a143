"""Local SGD training, evaluation and weighted model averaging."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from peers.data import LocalData

EVAL_BATCH = 8192


# On an H100 (bench train, 2026-11-26) bf16 autocast made MLPs of 5 k and 2.1 M parameters
# 0.76x and 0.79x as fast as plain float32; above this size it is used (see bench train's mlp-xl).
AUTOCAST_MIN_PARAMS = 8_000_000


def select_device(spec: str = "auto") -> torch.device:
    """'auto' -> cuda when available else cpu; 'cpu'; 'cuda' / 'cuda:N' (errors without CUDA)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {spec!r} requested but CUDA is not available (torch {torch.__version__}); use 'cpu' or 'auto'"
            )
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) present")
        return dev
    raise ValueError(f"unknown device {spec!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(lr: float, schedule: str, round: int, total_rounds: int) -> float:
    """The learning rate for ``round`` (1-based) of ``total_rounds``.

    ``constant``: ``lr`` throughout. ``cosine``: from ``lr`` in round 1 down to ``lr /
    total_rounds`` in the last round along half a cosine. In decentralized SGD the peers'
    models drift apart by an amount that grows with the step size; decaying it lets the
    gossip pull them together by the end (Koloskova et al. 2020)."""
    if check_lr_schedule(schedule) == "constant" or total_rounds <= 1:
        return lr
    progress = min(max(round - 1, 0), total_rounds - 1) / (total_rounds - 1)
    return lr / total_rounds + (lr - lr / total_rounds) * 0.5 * (1 + math.cos(math.pi * progress))


def check_lr_schedule(schedule: str) -> str:
    """``schedule`` if it is one of ``LR_SCHEDULES``; raises ``ValueError`` otherwise."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of: {', '.join(LR_SCHEDULES)}")
    return schedule


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean minibatch loss over the steps
    samples_seen: int
    duration_s: float


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean per-sample loss (nan when there is no eval data)
    accuracy: float
    samples: int


def _to_device(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class LocalTrainer:
    """Minibatch SGD over a peer's LocalData; tensors live on `device` for the trainer's lifetime."""

    is_dp_sgd = False  # peers.privacy.dp_sgd.DPSGDTrainer: sample-level DP, with its own accountant

    def __init__(
        self,
        model: nn.Module,
        data: LocalData,
        *,
        lr: float,
        batch_size: int,
        device: torch.device | str,
        seed: int = 0,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
    ):
        if data.samples == 0:
            raise ValueError("no training samples")
        if lr <= 0 or batch_size < 1:
            raise ValueError(f"need lr > 0 and batch_size >= 1, got lr={lr}, batch_size={batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.data = data
        self.batch_size = min(batch_size, data.samples)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.X = _to_device(data.X_train.astype(np.float32, copy=False), self.device)
        self.y = _to_device(data.y_train.astype(np.int64, copy=False), self.device)
        self.X_eval = _to_device(data.X_eval.astype(np.float32, copy=False), self.device)
        self.y_eval = _to_device(data.y_eval.astype(np.int64, copy=False), self.device)
        # bf16 autocast on CUDA pays for its cast kernels only on models big enough to be bound by
        # their matrix products; small ones are bound by kernel launches, which the casts add to.
        params = sum(p.numel() for p in self.model.parameters())
        self.mixed_precision = self.device.type == "cuda" and params >= AUTOCAST_MIN_PARAMS
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.train_module: nn.Module = self.model  # what training steps run through (DP-SGD wraps it)
        self._order = torch.empty(0, dtype=torch.long, device=self.device)
        self._cursor = 0

    def set_lr(self, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"need lr > 0, got {lr}")
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _autocast(self):
        if self.mixed_precision:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _next_batch(self) -> torch.Tensor:
        """Indices of the next minibatch; reshuffles once an epoch is used up."""
        if self._cursor + self.batch_size > len(self._order):
            self._order = torch.randperm(self.data.samples, generator=self.generator, device=self.device)
            self._cursor = 0
        idx = self._order[self._cursor : self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return idx

    def train(self, steps: int) -> TrainResult:
        """Run `steps` SGD steps; the loss is synced to host once, at the end."""
        start = time.perf_counter()
        if steps <= 0:
            return TrainResult(float("nan"), 0, 0.0)
        self.model.train()
        losses = []  # summed once at the end: no extra tensor op per step
        for _ in range(steps):
            idx = self._next_batch()
            with self._autocast():
                loss = F.cross_entropy(self.train_module(self.X[idx]), self.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        mean = torch.stack(losses).float().sum().item() / steps
        return TrainResult(mean, steps * self.batch_size, time.perf_counter() - start)

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Loss and accuracy on the eval split."""
        n = len(self.y_eval)
        if n == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for s in range(0, n, EVAL_BATCH):
            X, y = self.X_eval[s : s + EVAL_BATCH], self.y_eval[s : s + EVAL_BATCH]
            with self._autocast():
                logits = self.model(X)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
        return EvalResult(loss_sum.item() / n, correct.item() / n, n)

    def state(self) -> dict[str, torch.Tensor]:
        """Detached CPU float32 copies of the model's state."""
        return {
            k: v.detach().to(device="cpu", dtype=torch.float32, copy=True) for k, v in self.model.state_dict().items()
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy `state` (same names and shapes) into the model in place."""
        live = self.model.state_dict()  # detached tensors sharing the parameters' storage
        if live.keys() != state.keys() or any(tuple(state[k].shape) != tuple(v.shape) for k, v in live.items()):
            self.model.load_state_dict(state, strict=True)  # raises with torch's detailed message
            return
        with torch.no_grad():  # same effect as load_state_dict, without its per-module machinery
            for k, v in live.items():
                v.copy_(state[k])


def mix(weighted_states: list[tuple[float, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Weighted average of (weight, state) pairs, weights renormalised to sum to 1: the `mean`
    aggregation rule in the pair form the simulator and benchmarks use."""
    from peers.rules import mean

    if not weighted_states:
        raise ValueError("mix needs at least one (weight, state) pair")
    return mean.aggregate([state for _, state in weighted_states], [w for w, _ in weighted_states])
