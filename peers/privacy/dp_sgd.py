"""Sample-level DP-SGD (Abadi et al. 2016) through Opacus: every sample's gradient is clipped to
``max_grad_norm`` and Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm``
is added to their sum, each step; batches are drawn by Poisson sampling (each sample with
probability batch/N), which is what the RDP accountant's bound assumes.

``DPSGDTrainer`` is a ``LocalTrainer`` whose training steps run through Opacus' per-sample
gradient hooks (``GradSampleModule``) and ``DPOptimizer``; the model, its state on the wire and
evaluation are the plain ones, so its peers cannot tell it from any other.
"""

from __future__ import annotations

import warnings

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from peers.data import LocalData
from peers.privacy.accountant import ALPHAS, DEFAULT_DELTA
from peers.training import LocalTrainer

# Opacus' hooks fire on inputs that need no gradient (the data): expected, and said every step.
# Process-wide and narrow: peers train in threads, where catch_warnings() would race.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


class DPSGDTrainer(LocalTrainer):
    is_dp_sgd = True

    def __init__(
        self,
        model: nn.Module,
        data: LocalData,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float = DEFAULT_DELTA,
        **kwargs,
    ):
        if not (noise_multiplier >= 0 and max_grad_norm > 0):
            raise ValueError(
                f"need noise_multiplier >= 0 and max_grad_norm > 0, got {noise_multiplier}, {max_grad_norm}"
            )
        errors = ModuleValidator.validate(model, strict=False)
        if errors:  # BatchNorm mixes samples: no per-sample gradient exists (use GroupNorm)
            raise ValueError(f"DP-SGD cannot train this model: {'; '.join(str(e) for e in errors)}")
        super().__init__(model, data, **kwargs)
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.delta = delta
        self.sample_rate = self.batch_size / data.samples
        # Opacus' per-sample gradient hooks (its functorch mode was 3.7x slower on the peers' MLP)
        self.train_module = GradSampleModule(self.model)
        self.optimizer = DPOptimizer(
            self.optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=self.batch_size,
        )
        self.accountant = RDPAccountant()

    def _next_batch(self) -> torch.Tensor:
        """Poisson sampling: every sample independently with probability batch/N (an empty draw,
        probability (1 - q)^N, is drawn again)."""
        n = self.data.samples
        while True:
            chosen = torch.rand(n, generator=self.generator, device=self.device) < self.sample_rate
            idx = chosen.nonzero().squeeze(1)
            if idx.numel():
                return idx

    def train(self, steps: int):
        result = super().train(steps)
        for _ in range(max(0, steps)):
            self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return result

    def epsilon(self, more_steps: int = 0) -> float:
        """Epsilon spent so far (at ``delta``), or after ``more_steps`` further steps."""
        history = list(self.accountant.history)
        if more_steps:
            history.append((self.noise_multiplier, self.sample_rate, more_steps))
        if not history:
            return 0.0
        accountant = RDPAccountant()
        accountant.history = history
        with warnings.catch_warnings():  # Opacus suggests wider orders near its bounds; ours are wide
            warnings.simplefilter("ignore", UserWarning)
            return float(accountant.get_epsilon(self.delta, alphas=ALPHAS))
