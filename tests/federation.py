"""An in-memory federation for tests: real Peers over MemoryTransport, driven round by round
the way the platform drives them (plans with Metropolis-Hastings weights)."""
import asyncio
import time

from peers import topology
from peers.data import load_local_data
from peers.plans import round_plans
from peers.protocol import RoundPlan, node_channel, to_message
from peers.wire.signing import NodeKey
from peers.transport.memory import MemoryTransport
from peers.worker import Peer

BASE_CONFIG = {"model": "mlp", "hidden": 32, "lr": 0.3, "local_steps": 30, "batch_size": 32, "seed": 11,
               "num_features": 64, "num_classes": 10}


class CollectedReports:
    """The in-memory counterpart of the platform's report endpoint."""

    def __init__(self):
        self.reports = []

    async def report(self, message: dict) -> None:
        self.reports.append(message)


def make_plans(n: int, round_number: int, keys, rounds: int, config: dict, graph: str = "ring",
               deadline_s: float = 20) -> list[RoundPlan]:
    return round_plans(job_id=1, round=round_number, total_rounds=rounds,
                       members=[(i, keys[i].public_key_hex) for i in range(1, n + 1)],
                       rows=topology.build(graph, n), config=config, deadline=time.time() + deadline_s,
                       max_payload_bytes=50_000_000)


async def run_federation(n=4, rounds=2, *, graph="ring", attacks=None, late=None, deadline_s=20, **config):
    """Run `rounds` rounds; `attacks` maps node -> attack mode; `late` maps node -> first round
    it takes part in (its peer starts then). Returns (reports, peers, transport)."""
    attacks, late = attacks or {}, late or {}
    cfg = {**BASE_CONFIG, **config}
    transport = MemoryTransport()
    reporter = CollectedReports()
    keys = {i: NodeKey.generate() for i in range(1, n + 1)}
    peers = {i: Peer(i, keys[i], load_local_data(f"digits:{i - 1}/{n}"), transport, reporter,
                     attack=attacks.get(i, "none")) for i in range(1, n + 1)}
    tasks = {}
    for r in range(1, rounds + 1):
        for i, peer in peers.items():
            if i not in tasks and late.get(i, 1) <= r:
                tasks[i] = asyncio.create_task(peer.run(max_jobs=1))
        for plan in make_plans(n, r, keys, rounds, cfg, graph, deadline_s):
            if late.get(plan.node_id, 1) <= r:
                await transport.send(node_channel(plan.node_id), to_message(plan))
        expected = sum(1 for i in peers if late.get(i, 1) <= r)
        while sum(1 for rep in reporter.reports if rep["round"] == r) < expected:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*tasks.values()), timeout=60)
    return reporter.reports, peers, transport
