"""A neighbour sending NaN, mis-shaped or hash-mismatched weights is rejected with a logged
reason that reaches the report, and the round still completes with everyone else."""
import asyncio
import logging
import time

import pytest
import torch

from peers import topology
from peers.data import load_local_data
from peers.protocol import Neighbour, RoundPlan, node_channel, to_message
from peers.signing import NodeKey
from peers.transport.memory import MemoryTransport
from peers.worker import Peer

N = 4
ATTACKER = 4
CONFIG = {"model": "mlp", "hidden": 32, "lr": 0.3, "local_steps": 30, "batch_size": 32, "seed": 11,
          "num_features": 64, "num_classes": 10}


class CollectedReports:
    """The in-memory counterpart of the platform's report endpoint."""

    def __init__(self):
        self.reports = []

    async def report(self, message: dict) -> None:
        self.reports.append(message)


def plans(round_number: int, keys: dict[int, NodeKey], rounds: int) -> list[RoundPlan]:
    weights = topology.build("ring", N)
    out = []
    for i in range(N):
        node = i + 1
        out.append(RoundPlan(
            job_id=1, round=round_number, total_rounds=rounds, node_id=node, deadline=time.time() + 20,
            config=CONFIG, self_weight=weights[i][i], max_payload_bytes=10_000_000,
            neighbours=[Neighbour(node_id=j + 1, channel=node_channel(j + 1), weight=w, public_key=keys[j + 1].public_key_hex)
                        for j, w in weights[i].items() if j != i],
        ))
    return out


async def run_federation(attack: str, rounds: int = 2):
    transport = MemoryTransport()
    reporter = CollectedReports()
    keys = {n: NodeKey.generate() for n in range(1, N + 1)}
    peers = [
        Peer(n, keys[n], load_local_data(f"digits:{n - 1}/{N}"), transport, reporter,
             attack=attack if n == ATTACKER else "none")
        for n in range(1, N + 1)
    ]
    tasks = [asyncio.create_task(p.run(max_jobs=1)) for p in peers]
    for r in range(1, rounds + 1):
        for plan in plans(r, keys, rounds):
            await transport.send(node_channel(plan.node_id), to_message(plan))
        while sum(1 for rep in reporter.reports if rep["round"] == r) < N:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    return reporter.reports, peers


@pytest.mark.parametrize("attack, reason", [
    ("nan", "non-finite"), ("shape", "wrong shape"), ("bad-hash", "sha256 mismatch"),
])
def test_bad_weights_are_rejected_and_the_round_completes(attack, reason, caplog):
    caplog.set_level(logging.WARNING, logger="peers.worker")
    reports, peers = asyncio.run(run_federation(attack))

    assert len(reports) == 2 * N  # every peer reported every round
    neighbours_of_attacker = {1, 3}
    for rep in reports:
        rejected = {item["sender"]: item["reason"] for item in rep["rejected"]}
        if rep["node_id"] in neighbours_of_attacker:
            assert set(rejected) == {ATTACKER}
            assert reason in rejected[ATTACKER]
        else:
            assert rejected == {}
    assert f"rejected weights from {ATTACKER}" in caplog.text and reason in caplog.text
    # The honest peers' models stayed clean and still learn.
    for peer in peers[:3]:
        state = peer.jobs.get(1)
        assert state is None  # job finished and was released
    honest_final = [r["accuracy"] for r in reports if r["round"] == 2 and r["node_id"] != ATTACKER]
    assert all(0.5 < a <= 1.0 for a in honest_final), honest_final


def test_honest_federation_rejects_nothing():
    reports, _ = asyncio.run(run_federation("none"))
    assert all(rep["rejected"] == [] for rep in reports)
    assert all(torch.isfinite(torch.tensor(rep["accuracy"])) for rep in reports)
