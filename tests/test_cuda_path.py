"""The CUDA path: training, a federation of real Peers and the aggregation rules on a GPU.

Every test runs on "cpu" everywhere and again on "cuda" where a GPU is present (this machine and
CI have none, so the "cuda" cases are reported as skipped here; they were run on the lent H100
with ``bench/run_on_gpu.sh``, see docs/benchmarks.md). The CPU case is the reference each CUDA
case must agree with.
"""

import asyncio
from dataclasses import replace

import pytest
import torch

from peers import topology
from peers.data import load_local_data
from peers.federation import InMemoryPlatform
from peers.models import build_model
from peers.rules import RULES
from peers.training import LocalTrainer, select_device
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey
from peers.worker import Peer
from tests.federation import BASE_CONFIG

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")),
]
RULE_PARAMS = {
    "trimmed_mean": {"trim": 1},
    "krum": {"f": 1},
    "multi_krum": {"f": 1},
    "bulyan": {"f": 1},
    "norm_clip": {"max_norm": 5.0},
}


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_learns_on_device_and_hands_back_cpu_float32(device):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = load_local_data("digits:0/1", seed=0)
    trainer = LocalTrainer(
        build_model("mlp", data.num_features, data.num_classes, seed=0),
        data,
        lr=0.1,
        batch_size=32,
        device=select_device(device),
        seed=0,
        momentum=0.9,
    )
    assert trainer.X.device.type == device and next(trainer.model.parameters()).device.type == device
    before = trainer.evaluate()
    result = trainer.train(200)
    after = trainer.evaluate()
    assert after.accuracy > 0.85 and after.loss < before.loss, (before, after)
    assert result.samples_seen == 200 * 32
    state = trainer.state()  # what goes on the wire: host memory, float32, detached
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 and not v.requires_grad for v in state.values())
    state = {k: torch.zeros_like(v) for k, v in state.items()}
    trainer.load_state(state)  # a mixed model (host tensors) lands back on the device
    assert next(trainer.model.parameters()).device.type == device
    assert all(float(p.detach().abs().sum()) == 0.0 for p in trainer.model.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_federation_of_peers_trains_on_device(device):
    """Four real Peers (signed plans, signed weights, in-memory transport) train on `device`;
    the mixed models agree with each other and learn."""
    n, rounds = 4, 3
    config = replace(BASE_CONFIG, local_steps=40)
    platform = InMemoryPlatform(config, rounds, round_timeout_s=60)
    transport = MemoryTransport()
    peers = {
        i: Peer(
            i,
            NodeKey.generate(),
            load_local_data(f"digits:{i - 1}/{n}"),
            transport,
            platform,
            platform_key=platform.public_key_hex,
            device=device,
        )
        for i in range(1, n + 1)
    }
    results = asyncio.run(platform.run(peers, transport, lambda r, cut: topology.build("complete", n)))
    reports = [rep for result in results for rep in result.reports]
    assert len(reports) == n * rounds
    last = [rep for rep in reports if rep["round"] == rounds]
    assert min(rep["accuracy"] for rep in last) > 0.8, last


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_on_device_matches_cpu(name, device):
    gen = torch.Generator().manual_seed(3)
    updates = [
        {"w": torch.randn(64, 32, generator=gen), "b": torch.randn(32, generator=gen), "steps": torch.tensor(5)}
        for _ in range(7)
    ]
    weights = [1.0, 2.0, 1.0, 3.0, 1.0, 1.0, 2.0]
    params = RULE_PARAMS.get(name, {})
    reference = RULES[name](updates, weights, **params)
    on_device = [{k: v.to(device) for k, v in u.items()} for u in updates]
    result = RULES[name](on_device, weights, **params)
    assert result.keys() == reference.keys()
    for key, value in result.items():
        assert value.device.type == device and value.dtype == reference[key].dtype
        torch.testing.assert_close(value.cpu(), reference[key], rtol=1e-5, atol=1e-5)
