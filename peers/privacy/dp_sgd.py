"""Sample-level DP-SGD (Abadi et al. 2016) through Opacus: every sample's gradient is clipped to
``max_grad_norm`` and Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm``
is added to their sum, each step; batches are drawn by Poisson sampling (each sample with
probability batch/N), which is what the RDP accountant's bound assumes.

``DPSGDTrainer`` is a ``LocalTrainer`` whose training steps run through Opacus' per-sample
gradient hooks (``GradSampleModule``) and ``DPOptimizer``; the model, its state on the wire and
evaluation are the plain ones, so its peers cannot tell it from any other.

Models made of ``nn.Linear`` layers only (the MLPs) take a faster, exact path instead
(``LinearDPStep``): per-sample gradients of a linear layer are outer products ``g_i x_i^T`` of
the layer's output gradient and input, so their norms come from ``||g_i||^2 (||x_i||^2 + 1)``
and the clipped sum from one matrix product ``(c * g)^T x``, without materialising a gradient
per sample (Goodfellow 2015; "ghost clipping", Li et al. 2022). Same clipping, same noise, same
division by the expected batch size as Opacus; a test holds the two equal.
"""

from __future__ import annotations

import time
import warnings

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn import functional as F

from peers.data import LocalData
from peers.privacy.accountant import ALPHAS, DEFAULT_DELTA
from peers.training import LocalTrainer, TrainResult

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
        self.accountant = RDPAccountant()
        linears = linear_layers(self.model)
        self.fast = (
            LinearDPStep(linears, noise_multiplier, max_grad_norm, self.batch_size, self.generator) if linears else None
        )
        if self.fast is None:
            # Opacus' per-sample gradient hooks (its functorch mode was 3.7x slower on the peers' MLP)
            self.train_module = GradSampleModule(self.model)
            self.optimizer = DPOptimizer(
                self.optimizer,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                expected_batch_size=self.batch_size,
            )

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
        result = self._train_linear(steps) if self.fast is not None else super().train(steps)
        for _ in range(max(0, steps)):
            self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return result

    def _train_linear(self, steps: int) -> TrainResult:
        """LocalTrainer.train with each step's gradient made by LinearDPStep."""
        start = time.perf_counter()
        if steps <= 0:
            return TrainResult(float("nan"), 0, 0.0)
        assert self.fast is not None
        self.model.train()
        losses, seen = [], 0
        for _ in range(steps):
            idx = self._next_batch()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(self.fast.step(self.model, self.X[idx], self.y[idx]))
            self.optimizer.step()
            seen += len(idx)
        mean = torch.stack(losses).float().sum().item() / steps
        return TrainResult(mean, seen, time.perf_counter() - start)

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


def linear_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The model's Linear layers when they hold every trainable parameter (else None)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    covered = {id(p) for m in linears for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return linears if linears and all(id(p) in covered for p in trainable) else None


class LinearDPStep:
    """One DP-SGD step's gradient for a model whose parameters all live in Linear layers fed
    (batch, features) inputs: per-sample norms and the clipped sum from each layer's input and
    output gradient, then Gaussian noise; sets ``.grad`` of every parameter."""

    def __init__(self, linears, noise_multiplier: float, max_grad_norm: float, expected_batch: int, generator):
        self.linears = linears
        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        self.expected_batch = expected_batch
        self.generator = generator
        self._inputs: dict[nn.Module, torch.Tensor] = {}
        self._outputs: dict[nn.Module, torch.Tensor] = {}
        for layer in linears:
            layer.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        if torch.is_grad_enabled():
            self._inputs[module], self._outputs[module] = inputs[0].detach(), output

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Set the parameters' gradients for one step on (x, y); returns the batch's mean loss."""
        self._inputs.clear()
        self._outputs.clear()
        loss = F.cross_entropy(model(x), y, reduction="sum")  # per-sample losses' sum: raw per-sample grads
        outputs = [self._outputs[m] for m in self.linears]
        grads = torch.autograd.grad(loss, outputs)  # only what reaches the outputs: no weight grads
        norms = torch.zeros(len(y), dtype=torch.float32, device=x.device)
        for layer, g in zip(self.linears, grads):
            a = self._inputs[layer]
            if a.dim() != 2:
                raise ValueError("the linear DP-SGD path needs (batch, features) inputs to every layer")
            extra = 1.0 if layer.bias is not None else 0.0
            norms += g.float().pow(2).sum(1) * (a.float().pow(2).sum(1) + extra)
        scale = (self.max_grad_norm / (norms.sqrt() + 1e-6)).clamp(max=1.0)
        std = self.noise_multiplier * self.max_grad_norm
        for layer, g in zip(self.linears, grads):
            clipped = g * scale.to(g.dtype).unsqueeze(1)
            weight = clipped.t() @ self._inputs[layer]
            layer.weight.grad = (weight + std * self._noise(weight)) / self.expected_batch
            if layer.bias is not None:
                bias = clipped.sum(0)
                layer.bias.grad = (bias + std * self._noise(bias)) / self.expected_batch
        return loss.detach() / len(y)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)
