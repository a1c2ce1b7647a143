"""Round plans from a topology's mixing rows: one function for the platform's orchestration,
the local simulator, the benchmarks and the tests (stdlib only, like peers.topology; the
caller's ``sign`` is the platform key's, so no crypto library is imported here)."""

from __future__ import annotations

from collections.abc import Callable

from peers.protocol import SERVER_RULES, ConsentGrant, JobConfig, Neighbour, RoundPlan, node_channel, plan_bytes


def round_plans(
    *,
    job_id: int,
    round: int,
    total_rounds: int,
    members: list[tuple[int, str]],
    rows: list[dict[int, float]],
    config: JobConfig,
    deadline: float,
    max_payload_bytes: int,
    sign: Callable[[bytes], bytes],
    validator: tuple[int, str] | None = None,
    consent_expiry: dict[int, float] | None = None,
) -> list[RoundPlan]:
    """One signed plan per member; members[i] = (node id, Ed25519 public key hex) at position i
    and rows[i] its mixing weights by position (rows[i][i] is the self weight). Each plan
    carries the member's consent grant for this round (the platform sends plans only to members
    whose consent stands) and is signed with ``sign`` (the platform key's).

    With a ``validator`` (node id, public key), every member also sends it its model, and the
    validator gets a plan of its own (role "validate", the members as its neighbours) after theirs.

    With ``config.secure_aggregation`` each neighbour entry also names that neighbour's own
    neighbours and their keys: the senders a member masks against when it sends to it.

    A member's grant expires at the round's deadline or, when ``consent_expiry`` gives one for
    its node id (unix seconds), at its consent's expiry if that comes first.

    With a centralized rule (``config.rule`` in SERVER_RULES) the rows must be a star centred on
    position 0 (peers.topology.star): members[0] is the round's aggregator, named in every
    member's plan (``aggregator``); its row's weights are the ones it averages with."""
    if len(rows) != len(members):
        raise ValueError(f"{len(rows)} mixing rows for {len(members)} members")
    aggregator = 0
    if config.rule in SERVER_RULES and members:
        if any(not set(row) <= {0, i} for i, row in enumerate(rows) if i):
            raise ValueError(f"rule {config.rule!r} is centralized: its rows must be a star centred on position 0")
        aggregator = members[0][0]
    plans = []
    for index, (node_id, _) in enumerate(members):
        row = rows[index]
        neighbours = [
            Neighbour(
                node_id=other,
                channel=node_channel(other),
                weight=row[j],
                public_key=key,
                neighbourhood=_neighbourhood(members, rows[j], j) if config.secure_aggregation else {},
            )
            for j, (other, key) in enumerate(members)
            if j != index and j in row
        ]
        plan = RoundPlan(
            job_id=job_id,
            round=round,
            total_rounds=total_rounds,
            node_id=node_id,
            deadline=deadline,
            config=config,
            neighbours=neighbours,
            self_weight=row[index],
            max_payload_bytes=max_payload_bytes,
            consent=ConsentGrant(
                job_id=job_id,
                node_id=node_id,
                dataset=config.dataset,
                expires_at=min(deadline, (consent_expiry or {}).get(node_id, deadline)),
            ),
            validators=[] if validator is None else [_neighbour(*validator, 0.0)],
            aggregator=aggregator,
        )
        plan.signature = sign(plan_bytes(plan))
        plans.append(plan)
    if validator is not None and members:
        node_id = validator[0]
        plan = RoundPlan(
            job_id=job_id,
            round=round,
            total_rounds=total_rounds,
            node_id=node_id,
            deadline=deadline,
            config=config,
            neighbours=[_neighbour(other, key, 1.0 / len(members)) for other, key in members],
            self_weight=0.0,
            max_payload_bytes=max_payload_bytes,
            consent=ConsentGrant(job_id=job_id, node_id=node_id, dataset=config.dataset, expires_at=deadline),
            role="validate",
        )
        plan.signature = sign(plan_bytes(plan))
        plans.append(plan)
    return plans


def _neighbour(node_id: int, public_key: str, weight: float) -> Neighbour:
    return Neighbour(node_id=node_id, channel=node_channel(node_id), weight=weight, public_key=public_key)


def _neighbourhood(members: list[tuple[int, str]], row: dict[int, float], position: int) -> dict[str, str]:
    """The neighbours of the member at ``position`` (by its mixing row): node id as str -> key."""
    return {str(members[k][0]): members[k][1] for k in sorted(row) if k != position}
