"""Sample-level DP-SGD (peers.privacy.dp_sgd): per-sample gradients clipped and noised through
Opacus, Poisson-sampled batches, epsilon from Opacus' accountant, the plain model on the wire."""

import asyncio
import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from peers.data import load_local_data
from peers.models import build_model
from peers.privacy.accountant import ALPHAS
from peers.privacy.dp_sgd import DPSGDTrainer
from peers.training import LocalTrainer
from tests.federation import run_federation

DATA = load_local_data("digits:0/1", seed=0)


def trainer(cls=DPSGDTrainer, seed=0, **kwargs):
    torch.set_num_threads(1)
    return cls(build_model("mlp", 64, 10, seed=0), DATA, lr=0.1, batch_size=32, device="cpu", seed=seed, **kwargs)


def moved(t, steps: int) -> float:
    before = {k: v.clone() for k, v in t.state().items()}
    t.train(steps)
    return math.sqrt(sum(float((v - before[k]).pow(2).sum()) for k, v in t.state().items()))


def test_it_learns_and_sends_the_plain_models_state():
    private = trainer(noise_multiplier=0.8, max_grad_norm=1.0)
    plain = trainer(LocalTrainer)
    private.train(300)
    assert private.evaluate().accuracy > 0.6
    assert private.state().keys() == plain.state().keys()  # no Opacus prefix on the wire


def test_per_sample_gradients_are_clipped():
    """With no noise and a tiny bound, 50 steps move the model at most lr * C * (batch / B) each."""
    clip = 1e-3
    tiny = moved(trainer(noise_multiplier=0.0, max_grad_norm=clip), 50)
    free = moved(trainer(LocalTrainer), 50)
    assert tiny <= 50 * 0.1 * clip * 3  # a Poisson batch over 3x its expected size: probability ~1e-12
    assert free > 100 * tiny


@pytest.mark.parametrize("clip", [1e-3, 0.5, 100.0])  # every sample clipped / some / none
def test_the_linear_path_clips_and_sums_exactly_as_opacus_does(clip):
    """MLPs take the per-layer norm path (no per-sample gradient materialised): its gradient for a
    batch is the one Opacus' per-sample hooks give, clipped per sample, summed, over the
    expected batch size."""
    import copy

    from opacus import GradSampleModule
    from torch.nn import functional as F

    fast = trainer(noise_multiplier=0.0, max_grad_norm=clip)
    assert fast.fast is not None
    reference = GradSampleModule(copy.deepcopy(fast.model), loss_reduction="sum")
    x, y = fast.X[:40], fast.y[:40]
    fast.fast.step(fast.model, x, y)
    F.cross_entropy(reference(x), y, reduction="sum").backward()
    params = dict(reference.named_parameters())
    per_sample = {name.removeprefix("_module."): p.grad_sample for name, p in params.items()}
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_sample.values()))
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    for name, param in fast.model.named_parameters():
        expected = torch.einsum("i,i...->...", factor, per_sample[name]) / fast.batch_size
        assert torch.allclose(param.grad, expected, rtol=1e-4, atol=1e-7), name


def test_models_beyond_linear_layers_keep_opacus():
    cnn = DPSGDTrainer(
        build_model("cnn", 64, 10, seed=0, input_shape=(1, 8, 8)),
        DATA,
        lr=0.1,
        batch_size=32,
        device="cpu",
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    assert cnn.fast is None and cnn.train(2).samples_seen > 0


def test_the_noise_reaches_the_model():
    quiet = moved(trainer(noise_multiplier=0.0, max_grad_norm=1e-3), 20)
    noisy = moved(trainer(noise_multiplier=2.0, max_grad_norm=1e-3), 20)
    assert noisy > 5 * quiet


def test_epsilon_is_opacus_accountant_s_for_the_steps_taken():
    t = trainer(noise_multiplier=1.1, max_grad_norm=1.0)
    assert t.epsilon() == 0.0
    t.train(40)
    t.train(60)
    reference = RDPAccountant()
    for _ in range(100):
        reference.step(noise_multiplier=1.1, sample_rate=32 / DATA.samples)
    assert t.epsilon() == pytest.approx(reference.get_epsilon(1e-5, alphas=ALPHAS), rel=1e-9)
    assert t.epsilon(more_steps=50) > t.epsilon()


def test_a_model_without_per_sample_gradients_is_refused():
    with_batchnorm = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(ValueError, match="DP-SGD cannot train this model"):
        DPSGDTrainer(with_batchnorm, DATA, lr=0.1, batch_size=32, device="cpu", noise_multiplier=1.0, max_grad_norm=1.0)


def test_a_job_with_sample_level_dp_reports_the_epsilon_it_spends():
    reports, _, _ = asyncio.run(
        run_federation(2, 2, graph="complete", dp_level="sample", dp_noise=1.0, dp_clip=1.0, local_steps=20)
    )
    spent = {r["round"]: r["epsilon"] for r in reports}
    assert 0 < spent[1] < spent[2]
