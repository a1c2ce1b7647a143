"""The platform's part, in one process: the one driver that the local simulator, the benchmarks
and the tests use to run real :class:`peers.worker.Peer` objects without the platform.

Each round it builds the plans exactly as ``platform/jobs/orchestration.py`` does (the topology's
Metropolis-Hastings rows through :func:`peers.plans.round_plans`; position i is ``members[i]``),
sends them over a transport (in memory or Redis), and collects the reports the peers post, as
the platform's report endpoint would. Links whose weights missed a deadline are passed to the
topology of the next round, as the platform does for dynamic graphs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from peers.plans import round_plans
from peers.protocol import NO_WEIGHTS_BEFORE_DEADLINE, JobConfig, node_channel, plan_bytes, to_message
from peers.wire.signing import NodeKey

JOB_ID = 1
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
# topology(round, cut links as position pairs) -> mixing rows by position
Topology = Callable[[int, frozenset], list[dict[int, float]]]


@dataclass
class RoundResult:
    round: int
    reports: list[dict]  # as posted by the peers, in arrival order
    seconds: float  # from the first plan sent to the last report received


@dataclass
class InMemoryPlatform:
    """Plans out, reports in. Give it to each Peer as its ``reporter``."""

    config: JobConfig
    total_rounds: int
    round_timeout_s: float = 120.0
    job_id: int = JOB_ID
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    on_report: Callable[[dict], Awaitable[None] | None] | None = None  # e.g. score the peer's model
    key: NodeKey = field(default_factory=NodeKey.generate)  # signs the plans, as the platform's key does
    by_round: dict[int, list[dict]] = field(default_factory=dict)
    _expected: dict[int, int] = field(default_factory=dict)  # round -> reports that complete it
    _complete: dict[int, asyncio.Event] = field(default_factory=dict)

    @property
    def public_key_hex(self) -> str:
        """What peers pin (``Peer(platform_key=...)``), as they do from the platform's hello."""
        return self.key.public_key_hex

    async def report(self, message: dict) -> None:
        """What a Peer calls to report a round (the platform's ``POST /api/v1/reports``)."""
        got = self.by_round.setdefault(message["round"], [])
        got.append(message)
        if self.on_report is not None:
            result = self.on_report(message)
            if asyncio.iscoroutine(result):
                await result
        if len(got) >= self._expected.get(message["round"], 1):
            self._completion(message["round"]).set()  # one wake-up per round, not per report

    def _completion(self, r: int) -> asyncio.Event:
        return self._complete.setdefault(r, asyncio.Event())

    async def run(
        self,
        peers: dict,
        transport,
        topology: Topology,
        *,
        joins_at: dict[int, int] | None = None,
        on_round: Callable[[RoundResult], None] | None = None,
        validator: tuple[int, Any] | None = None,
        exclude: Callable[[int], set[int]] | None = None,
    ) -> list[RoundResult]:
        """Drive every round. ``peers`` maps node id -> Peer, in position order; ``transport``
        sends the plans; ``joins_at`` maps node id -> the first round its peer takes part in (it
        starts then; until then its neighbours' weights wait in its inbox); ``validator`` is
        (node id, Peer) of the job's validator, whose score reports count like the others;
        ``exclude(r)`` names nodes left out from round r on (flagged attackers, as the platform
        leaves them out): they get no plan, and their neighbours' weights for them fold into
        their self weights."""
        joins_at = joins_at or {}
        everyone = dict(peers) if validator is None else {**peers, validator[0]: validator[1]}
        members = [(node_id, peer.key.public_key_hex) for node_id, peer in peers.items()]
        scorer = None if validator is None else (validator[0], validator[1].key.public_key_hex)
        position = {node_id: i for i, (node_id, _) in enumerate(members)}
        tasks: dict[int, asyncio.Task] = {}
        cut: set[tuple[int, int]] = set()
        results = []
        try:
            for r in range(1, self.total_rounds + 1):
                for node_id, peer in everyone.items():
                    if node_id not in tasks and joins_at.get(node_id, 1) <= r:
                        tasks[node_id] = asyncio.create_task(peer.run(max_jobs=1))
                gone = exclude(r) if exclude is not None else set()
                rows = _without(topology(r, frozenset(cut)), {position[g] for g in gone if g in position})
                plans = round_plans(
                    job_id=self.job_id,
                    round=r,
                    total_rounds=self.total_rounds,
                    members=members,
                    rows=rows,
                    config=self.config,
                    deadline=time.time() + self.round_timeout_s,
                    max_payload_bytes=self.max_payload_bytes,
                    sign=self.key.sign,
                    validator=scorer,
                )
                active = [plan for plan in plans if plan.node_id in tasks and plan.node_id not in gone]
                if validator is not None:  # the validator scores the members still planned
                    for plan in active:
                        if plan.role == "validate":
                            plan.neighbours = [n for n in plan.neighbours if n.node_id not in gone]
                            plan.signature = self.key.sign(plan_bytes(plan))
                for node_id in gone & tasks.keys():
                    tasks.pop(node_id).cancel()  # left out for good: its peer stops
                self._expected[r] = len(active)
                started = time.perf_counter()
                await asyncio.gather(*(transport.send(node_channel(p.node_id), to_message(p)) for p in active))
                reports = await self._reports_of(r, {p.node_id for p in active}, tasks)
                result = RoundResult(r, reports, time.perf_counter() - started)
                for rep in reports:
                    for item in rep.get("rejected", []):  # a validator's scores have none
                        if item["reason"] == NO_WEIGHTS_BEFORE_DEADLINE and item["sender"] in position:
                            a, b = sorted((position[rep["node_id"]], position[item["sender"]]))
                            cut.add((a, b))
                results.append(result)
                if on_round is not None:
                    on_round(result)
                trained = [rep for rep in reports if rep.get("type", "peer.report") == "peer.report"]
                if trained and all(rep.get("budget_spent") for rep in trained):
                    break  # every peer's privacy budget is spent: the job ends here, as on the platform
            await asyncio.wait_for(asyncio.gather(*tasks.values()), timeout=60)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        return results

    async def _reports_of(self, r: int, expected: set[int], tasks: dict[int, asyncio.Task]) -> list[dict]:
        """Wait until every expected peer reported round r; fail fast when one stopped instead."""
        give_up = time.monotonic() + self.round_timeout_s + 30
        while True:
            got = self.by_round.get(r, [])
            reported = {rep["node_id"] for rep in got}
            if expected <= reported:
                return list(got)
            for node_id in expected - reported:
                task = tasks[node_id]
                if task.done():
                    task.result()  # re-raise what stopped the peer
                    raise RuntimeError(f"node {node_id} stopped before reporting round {r}")
            if time.monotonic() > give_up:
                raise RuntimeError(f"round {r}: only {len(reported & expected)} of {len(expected)} peers reported")
            complete = self._completion(r)
            complete.clear()
            with contextlib.suppress(TimeoutError):  # wake every second to check for stopped peers
                await asyncio.wait_for(complete.wait(), timeout=1.0)


def _without(rows: list[dict[int, float]], gone: set[int]) -> list[dict[int, float]]:
    """Mixing rows with the positions in ``gone`` left out: each remaining row's weight for them
    goes to its self weight (the row still sums to 1); their own rows are emptied to self only."""
    if not gone:
        return rows
    out = []
    for i, row in enumerate(rows):
        if i in gone:
            out.append({i: 1.0})
            continue
        kept = {j: w for j, w in row.items() if j not in gone}
        kept[i] = kept.get(i, 0.0) + sum(w for j, w in row.items() if j in gone)
        out.append(kept)
    return out
