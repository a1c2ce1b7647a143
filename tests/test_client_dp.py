"""Client-level differential privacy (peers.privacy): updates clipped and noised before they
leave a peer, epsilon counted by Opacus' RDP accountant, and a peer that trains no round past
the job's budget."""

import asyncio
import math
import time
from dataclasses import replace

import pytest
import torch
from opacus.accountants import RDPAccountant

from peers import topology
from peers.data import load_local_data
from peers.plans import round_plans
from peers.privacy import ClientDPAccountant, epsilon_after, privatize, rounds_within_budget
from peers.privacy.accountant import ALPHAS
from peers.privacy.client_dp import update_norm
from peers.protocol import JobConfig, ProtocolError, node_channel, to_message
from peers.simulate import SimConfig, within_privacy_budget
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey
from peers.worker import Peer
from tests.federation import BASE_CONFIG


def models(scale: float = 1.0):
    gen = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(200, 50, generator=gen), "steps": torch.tensor(7)}
    trained = {"w": start["w"] + scale * torch.randn(200, 50, generator=gen), "steps": torch.tensor(9)}
    return start, trained


def test_an_update_above_the_bound_is_clipped_to_it_and_one_below_is_kept():
    start, trained = models(scale=1.0)
    assert update_norm(start, trained) > 5
    clipped = privatize(start, trained, clip=5.0, noise_multiplier=0.0)
    assert update_norm(start, clipped) == pytest.approx(5.0, rel=1e-5)
    assert clipped["steps"].item() == 9  # integer buffers pass unchanged
    small_start, small = models(scale=1e-3)
    kept = privatize(small_start, small, clip=5.0, noise_multiplier=0.0)
    torch.testing.assert_close(kept["w"], small["w"])


def test_the_noise_reaches_the_update_with_the_calibrated_spread():
    start, trained = models(scale=1.0)
    clipped = privatize(start, trained, clip=2.0, noise_multiplier=0.0)
    noised = privatize(start, trained, clip=2.0, noise_multiplier=1.5, generator=torch.Generator().manual_seed(1))
    noise = (noised["w"] - clipped["w"]).double()
    assert float(noise.std()) == pytest.approx(1.5 * 2.0, rel=0.03)
    assert abs(float(noise.mean())) < 0.05


def test_epsilon_is_opacus_rdp_accountant_s_own():
    for sigma, rounds in ((1.0, 1), (1.0, 100), (2.0, 30), (4.0, 500)):
        stepped = RDPAccountant()
        for _ in range(rounds):
            stepped.step(noise_multiplier=sigma, sample_rate=1.0)
        assert epsilon_after(rounds, sigma) == pytest.approx(stepped.get_epsilon(1e-5, alphas=ALPHAS), rel=1e-12)
        # and never above the classic RDP conversion of the Gaussian mechanism (T a / 2s^2 per order)
        classic = min(rounds * a / (2 * sigma**2) + math.log(1e5) / (a - 1) for a in ALPHAS)
        assert epsilon_after(rounds, sigma) <= classic + 1e-9


def test_the_budget_allows_the_most_rounds_that_stay_within_it():
    for budget, sigma in ((10.0, 1.0), (8.0, 2.0), (3.0, 4.0)):
        k = rounds_within_budget(budget, sigma)
        assert k >= 1 and epsilon_after(k, sigma) <= budget < epsilon_after(k + 1, sigma)
    assert rounds_within_budget(0.1, 0.5) == 0
    accountant = ClientDPAccountant(2.0, 8.0)
    for _ in range(rounds_within_budget(8.0, 2.0)):
        accountant.spend()
    assert not accountant.can_spend()
    with pytest.raises(ValueError, match="budget"):
        accountant.spend()


def test_job_config_refuses_noise_without_a_bound_and_bad_numbers():
    for bad in ({"dp_noise": 1.0}, {"dp_clip": -1.0}, {"dp_noise": math.nan, "dp_clip": 1}, {"dp_delta": 0.0}):
        with pytest.raises(ProtocolError):
            JobConfig(**bad)


def test_a_peer_trains_no_round_past_its_budget(caplog):
    """The platform plans 3 rounds of a job whose budget covers 2 releases: the peer reports
    rounds 1 and 2 with the epsilon it spent, says in round 2's report that its budget allows no
    more (the platform ends the job there), and leaves the job: round 3 never touches its data."""
    sigma = 2.0
    config = replace(BASE_CONFIG, local_steps=5, dp_clip=1.0, dp_noise=sigma, dp_epsilon=epsilon_after(2, sigma) + 0.01)
    platform, node = NodeKey.generate(), NodeKey.generate()
    transport, reports = MemoryTransport(), Reports()
    peer = Peer(1, node, load_local_data("digits:0/2"), transport, reports, platform_key=platform.public_key_hex)

    async def run():
        task = asyncio.create_task(peer.run(max_jobs=1))
        for number in (1, 2, 3):
            (plan,) = round_plans(
                job_id=1,
                round=number,
                total_rounds=3,
                members=[(1, node.public_key_hex), (2, NodeKey.generate().public_key_hex)],
                rows=topology.build("complete", 2),
                config=config,
                deadline=time.time() + 1.5,
                max_payload_bytes=10_000_000,
                sign=platform.sign,
            )[:1]
            await transport.send(node_channel(1), to_message(plan))
            await asyncio.sleep(2.0)  # its neighbour never sends: it mixes alone at the deadline
        await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert [(m["round"], m["epsilon"]) for m in reports.messages] == [
        (1, pytest.approx(epsilon_after(1, sigma))),
        (2, pytest.approx(epsilon_after(2, sigma))),
    ]
    assert [m["budget_spent"] for m in reports.messages] == [False, True]
    assert "privacy budget" in caplog.text and "allows no round after 2" in caplog.text


class Reports:
    def __init__(self):
        self.messages = []

    async def report(self, message):
        self.messages.append(message)


def test_a_simulation_ends_at_the_last_round_within_its_budget():
    cfg = SimConfig(peers=4, rounds=50, dp_clip=1.0, dp_noise=2.0, dp_epsilon=8.0)
    assert within_privacy_budget(cfg).rounds == rounds_within_budget(8.0, 2.0) < 50
    assert within_privacy_budget(replace(cfg, dp_epsilon=0.0)).rounds == 50
    with pytest.raises(ValueError, match="already costs"):
        within_privacy_budget(replace(cfg, dp_noise=0.3, dp_epsilon=0.5))
