"""FedAvg under secure aggregation (peers.secagg.fedavg, `python -m peers simulate --secagg`):
the aggregator's mean of masked uploads is FedAvg's mean, with or without dropouts, and a job
trains to the same accuracy with SecAgg on as off."""

import pytest
import torch

from peers.secagg.fedavg import default_threshold, secure_weighted_mean
from peers.simulate import SimConfig, run_simulation
from peers.training import mix


def uploads(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (float(50 + 10 * i), {"w": torch.randn(32, 16, generator=gen), "b": torch.randn(16, generator=gen)})
        for i in range(n)
    ]


def assert_close(a: dict, b: dict) -> None:
    for name in b:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert float((a[name].double() - b[name].double()).norm()) <= 1e-6 * float(b[name].double().norm())


def test_the_mean_of_masked_uploads_is_fedavgs_mean():
    ups = uploads(6)
    assert_close(secure_weighted_mean(ups, round=1), mix(ups))


def test_participants_that_drop_after_sharing_leave_the_mean_of_the_others():
    ups = uploads(7, seed=1)
    dropped = frozenset({2, 5})
    survivors = [u for i, u in enumerate(ups) if i not in dropped]
    assert default_threshold(7) == 5
    assert_close(secure_weighted_mean(ups, round=3, dropped=dropped), mix(survivors))
    with pytest.raises(ValueError, match="survivors"):
        secure_weighted_mean(ups, round=3, dropped=frozenset({0, 1, 2}))  # 4 left, 5 needed


def run(secagg: bool):
    cfg = SimConfig(
        peers=6,
        topology="star",
        rule="fedavg",
        rounds=8,
        local_steps=10,
        lr=0.2,
        lr_schedule="constant",
        partition="iid",
        device="cpu",
        secagg=secagg,
    )
    return run_simulation(cfg)


def test_a_star_job_trains_as_well_with_secagg_as_without():
    plain, masked = run(False), run(True)
    assert masked.rounds[-1].global_accuracy > 0.8
    assert abs(masked.rounds[-1].global_accuracy - plain.rounds[-1].global_accuracy) <= 0.005


def test_secagg_is_refused_for_gossip_rules():
    with pytest.raises(ValueError, match="star"):
        run_simulation(SimConfig(peers=4, topology="ring", rule="mean", rounds=1, secagg=True, device="cpu"))
