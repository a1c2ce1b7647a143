"""Round plans from a topology's mixing rows: one function for the platform's orchestration,
the local simulator, the benchmarks and the tests (stdlib only, like peers.topology; the
caller's ``sign`` is the platform key's, so no crypto library is imported here)."""

from __future__ import annotations

from collections.abc import Callable

from peers.protocol import SERVER_RULES, ConsentGrant, JobConfig, Neighbour, RoundPlan, node_channel, plan_bytes
from peers.topology import Tree, tree_layout


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
    member's plan (``aggregator``); its row's weights are the ones it averages with.

    With ``config.secagg_tree_group`` (the aggregation tree, ``peers.star_tree``) the star's
    centre must be the lowest id, the root of ``tree_layout``; each member is also linked to its
    group's aggregator (weight 0: the tree averages by count), and only the entry of the node a
    member masks for names a neighbourhood (``tree_neighbourhoods``)."""
    if len(rows) != len(members):
        raise ValueError(f"{len(rows)} mixing rows for {len(members)} members")
    aggregator = 0
    if config.rule in SERVER_RULES and members:
        if any(not set(row) <= {0, i} for i, row in enumerate(rows) if i):
            raise ValueError(f"rule {config.rule!r} is centralized: its rows must be a star centred on position 0")
        aggregator = members[0][0]
    tree = aggregation_tree([m for m, _ in members], config.secagg_tree_group)
    if tree is not None and tree.root != aggregator:
        raise ValueError(f"the aggregation tree's root is node {tree.root}, the star's centre node {aggregator}")
    extra = tree_links(tree) if tree is not None else {}
    masks_for = tree_neighbourhoods(tree, dict(members)) if tree is not None else {}

    def neighbourhood(node_id: int, other: int, j: int) -> dict[str, str]:
        if tree is not None:
            return masks_for.get(node_id, {}).get(other, {})
        return _neighbourhood(members, rows[j], j) if config.secure_aggregation else {}

    plans = []
    for index, (node_id, _) in enumerate(members):
        row = rows[index]
        linked = extra.get(node_id, set())
        neighbours = [
            Neighbour(
                node_id=other,
                channel=node_channel(other),
                weight=row.get(j, 0.0),
                public_key=key,
                neighbourhood=neighbourhood(node_id, other, j),
            )
            for j, (other, key) in enumerate(members)
            if j != index and (j in row or other in linked)
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


def aggregation_tree(node_ids: list[int], group_size: int) -> Tree | None:
    """The round's aggregation tree over its members (``JobConfig.secagg_tree_group``), or None
    (no tree, or too few members for one)."""
    if not group_size or len(node_ids) < 2:
        return None
    return tree_layout(node_ids, group_size)


def tree_links(tree: Tree) -> dict[int, set[int]]:
    """The links a tree adds to the star: each member with its group's aggregator, both ways."""
    links: dict[int, set[int]] = {}
    for g in tree.groups:
        for m in g.members:
            if m != g.aggregator:
                links.setdefault(m, set()).add(g.aggregator)
                links.setdefault(g.aggregator, set()).add(m)
    return links


def tree_neighbourhoods(tree: Tree, keys: dict[int, str]) -> dict[int, dict[int, dict[str, str]]]:
    """node -> {the node it masks for: that recipient's senders at its level (id as str -> key)}:
    a member masks for its group's aggregator among the group's other members, an aggregator its
    group's sum for the root among the other aggregators; the root masks for nobody."""
    out: dict[int, dict[int, dict[str, str]]] = {}
    uppers = {str(a): keys[a] for a in tree.aggregators if a != tree.root}
    for g in tree.groups:
        senders = {str(m): keys[m] for m in g.members if m != g.aggregator}
        for m in g.members:
            if m != g.aggregator:
                out[m] = {g.aggregator: senders}
        if g.aggregator != tree.root:
            out[g.aggregator] = {tree.root: uppers}
    return out


def links(node_ids: list[int], rows: list[dict[int, float]], tree_group: int = 0) -> dict[int, set[int]]:
    """Each member's neighbours in its plan (whom it may send to): its row's, and the tree's."""
    out = {node_ids[i]: {node_ids[j] for j in row if j != i} for i, row in enumerate(rows)}
    tree = aggregation_tree(node_ids, tree_group)
    for node_id, more in (tree_links(tree) if tree is not None else {}).items():
        out.setdefault(node_id, set()).update(more)
    return out


def _neighbour(node_id: int, public_key: str, weight: float) -> Neighbour:
    return Neighbour(node_id=node_id, channel=node_channel(node_id), weight=weight, public_key=public_key)


def _neighbourhood(members: list[tuple[int, str]], row: dict[int, float], position: int) -> dict[str, str]:
    """The neighbours of the member at ``position`` (by its mixing row): node id as str -> key."""
    return {str(members[k][0]): members[k][1] for k in sorted(row) if k != position}
