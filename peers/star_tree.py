"""Secure aggregation over an aggregation tree, live: the star's job option ``secagg_tree_group``.

The round's members are cut into groups (``peers.topology.tree_layout``: sorted ids in groups of
about g, each group's lowest id its aggregator); the star's centre, the cohort's lowest id, is the
first group's aggregator and the tree's root. The platform's signed plan links every member to the
root (the star) and to its group's aggregator, and names a neighbourhood on one entry only: the
node this member masks for and that node's senders at its level (``peers.plans``).

* A member masks its model for its group's aggregator among the group's other members
  (``Peer._send_masked`` on the plan narrowed to that one entry) and adopts the root's global model.
* An aggregator is itself a contributor: it sums its members' masked models
  (``Peer._secure_neighbours``, dropped members' masks removed by the survivors' corrections), adds
  its own model in the clear, and masks that group sum, with the count of models in it as one more
  coordinate (``COUNT``), for the root among the other aggregators. Then it adopts the global model.
* The root does the same for its own group, then unmasks the sum of the other groups' sums (and of
  their counts), divides the whole by the count, applies the server rule (``peers.star.finish``:
  FedAdam's step as on the star) and sends the global model to every member (its plan links them).

Weights: equal, as the star's signed row, applied before masking as a count. The root takes its
own group's count from what arrived, and the other groups' total count from the aggregators'
masked ``COUNT`` coordinate: it checks that total against the signed layout (an integer between
one per group that arrived and those groups' sizes) and drops the other groups' sum if it is out of
range, but within that range it trusts the aggregators' word for it, as it trusts their sums (an
aggregator that lies about either skews the round; masking cannot check inputs).

Dropouts: a member that drops is recovered in its group as on the star. An aggregator that drops
takes its group's models out of the round: the root asks the other aggregators to remove its masks
and averages the groups that arrived; the dropped group's members still adopt the global model. A
root that drops leaves every member on its own model that round (as a star without its centre).
Fewer than two aggregators below the root (one would hand it its group's sum): they send nothing
and the root averages its own group only (the job form refuses such a layout).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from peers import star
from peers.protocol import NO_WEIGHTS_BEFORE_DEADLINE, Neighbour, RoundPlan
from peers.topology import tree_layout
from peers.wire.format import all_finite, describe

log = logging.getLogger("peers.star_tree")
# ``peer: Any`` is a peers.worker.Peer and ``state: Any`` its JobState, as in peers.star.

COUNT = "star_tree.count"  # the extra coordinate of a group's sum: how many models are in it
# Deadline margins before the deadline: an aggregator stops waiting for its members, then for
# their survivors' corrections; the root for the aggregators, then for theirs; then it sends.
GROUP_CUTOFF_MARGINS = 6
GROUP_GIVE_UP_MARGINS = 5
ROOT_CUTOFF_MARGINS = 4
ROOT_GIVE_UP_MARGINS = 3
TREE_COUNT_OUT_OF_RANGE = "aggregation tree: the groups' count is out of range"


@dataclass
class Role:
    """A member's place in the tree, from its signed plan."""

    up: Neighbour | None  # the node it masks for (None: the root)
    down: list[Neighbour]  # the members that mask for it (its group's others, as an aggregator)
    uppers: list[Neighbour]  # the root only: the other groups' aggregators
    sizes: dict[int, int]  # the root only: aggregator -> its group's size


def role(plan: RoundPlan, node_id: int) -> Role:
    """ValueError when the plan does not describe a place in the job's tree."""
    root = plan.aggregator
    by_id = {n.node_id: n for n in plan.neighbours}
    if node_id == root:  # linked to everyone: it lays out the tree itself, as the platform did
        tree = tree_layout([node_id, *by_id], plan.config.secagg_tree_group)
        if tree.root != node_id:
            raise ValueError(f"the tree's root is node {tree.root}, not this star's centre")
        return Role(
            up=None,
            down=[by_id[m] for m in tree.groups[0].members if m != node_id],
            uppers=[by_id[a] for a in tree.aggregators if a != node_id],
            sizes={g.aggregator: len(g.members) for g in tree.groups},
        )
    ups = [n for n in plan.neighbours if str(node_id) in n.neighbourhood]
    if len(ups) != 1 or root not in by_id:
        raise ValueError(f"the plan names {len(ups)} nodes to mask for (one expected) and the root linked")
    up = ups[0]
    down = [n for n in plan.neighbours if n.node_id not in (root, up.node_id)]
    if down and up.node_id != root:
        raise ValueError("an aggregator masks for the root only")
    return Role(up=up, down=down, uppers=[], sizes={})


async def exchange(peer, plan: RoundPlan, state, local: dict) -> star.Exchanged:
    """The round's exchange after training, by this member's role in the tree."""
    try:
        place = role(plan, peer.node_id)
    except ValueError as exc:
        log.warning("node %s: no place in the aggregation tree (%s); it keeps its model", peer.node_id, exc)
        return star.Exchanged(local, 0, 0, {}, 0)
    if place.up is None:
        return await _root(peer, plan, state, local, place)
    if not place.down:  # a member: masked for its group's aggregator
        sent = await peer._send_masked(_narrowed(plan, [place.up]), state, local)
        return await star.adopt_global(peer, plan, state, local, sent)
    total, count, rejected, received = await _group_sum(peer, plan, state, local, place.down)
    sent = 0
    if count and len(place.up.neighbourhood) >= 2:  # masked among the other aggregators
        sent = await peer._send_masked(_narrowed(plan, [place.up]), _counted(state), {**total, COUNT: _count(count)})
    return await star.adopt_global(peer, plan, state, local, sent, rejected, received)


async def _root(peer, plan: RoundPlan, state, local: dict, place: Role) -> star.Exchanged:
    total, count, rejected, received = await _group_sum(peer, plan, state, local, place.down)
    if len(place.uppers) >= 2:
        others, more, got = await _groups(peer, plan, state, local, place, rejected)
        received += got
        if others is not None:
            total = {k: total[k] + others[k] for k in total} if count else others
            count += more
    state.payloads.pop(plan.round, None)  # a late upload stays unread: its masks may be removed already
    rejected.update(state.rejected.pop(plan.round, {}))
    done = star.Exchanged(local, 0, received, rejected, max(count - 1, 0))
    if not count:
        return done
    average = {k: (v / count).to(local[k].dtype) for k, v in total.items()}
    return await star.finish(peer, plan, state, local, average, done)


async def _groups(peer, plan: RoundPlan, state, local: dict, place: Role, rejected: dict[int, str]):
    """The root's second level: (the sum of the other groups' sums or None, their count, bytes)."""
    uppers = {n.node_id for n in place.uppers}
    cutoff = plan.deadline - ROOT_CUTOFF_MARGINS * peer.deadline_margin_s
    received, rejected_now = await _wait_for(peer, plan, state, uppers, cutoff)
    rejected.update(rejected_now)
    shape = {**_float64(local), COUNT: _count(0)}
    give_up = plan.deadline - ROOT_GIVE_UP_MARGINS * peer.deadline_margin_s
    sums = await peer._secure_neighbours(
        _narrowed(plan, place.uppers), _counted(state), shape, received, rejected, give_up
    )
    for a in uppers - received.keys():
        rejected.setdefault(a, NO_WEIGHTS_BEFORE_DEADLINE)
    got = sum(len(p) for p in received.values())
    if not sums:
        return None, 0, got
    k, mean = sums[0]
    count = float(mean.pop(COUNT)[0]) * k
    arrived = [a for a in uppers if a in received and a not in rejected]
    most = sum(place.sizes[a] for a in arrived)
    if not (abs(count - round(count)) < 1e-3 and len(arrived) <= round(count) <= most):
        log.warning(
            "root %s: the groups' count %s is outside [%s, %s]; their sum is left out",
            peer.node_id,
            count,
            len(arrived),
            most,
        )
        for a in arrived:
            rejected[a] = TREE_COUNT_OUT_OF_RANGE
        return None, 0, got
    return {name: t * k for name, t in mean.items()}, round(count), got


async def _group_sum(peer, plan: RoundPlan, state, local: dict, down: list[Neighbour]):
    """An aggregator's first level: (its own model plus the sum of its members' masked models, in
    float64; how many models that is; rejected senders; bytes received)."""
    ids = {n.node_id for n in down}
    cutoff = plan.deadline - GROUP_CUTOFF_MARGINS * peer.deadline_margin_s
    received, rejected = await _wait_for(peer, plan, state, ids, cutoff)
    own = _float64(local)
    finite = all(all_finite(t) for t in local.values())
    total = own if finite else {k: torch.zeros_like(v) for k, v in own.items()}
    count = int(finite)
    if down:
        give_up = plan.deadline - GROUP_GIVE_UP_MARGINS * peer.deadline_margin_s
        for k, mean in await peer._secure_neighbours(_narrowed(plan, down), state, own, received, rejected, give_up):
            total = {name: total[name] + k * mean[name] for name in total}
            count += int(k)
    for m in ids - received.keys():
        rejected.setdefault(m, NO_WEIGHTS_BEFORE_DEADLINE)
    return total, count, rejected, sum(len(p) for p in received.values())


async def _wait_for(peer, plan: RoundPlan, state, senders: set[int], give_up: float):
    """Wait for these senders' round uploads (or rejections), then take them out of the round's
    inbox, leaving the other level's: (payloads, rejected) by sender."""

    def heard() -> bool:
        return senders <= set(state.payloads.get(plan.round, {})) | set(state.rejected.get(plan.round, {}))

    await star._wait(peer, plan, state, heard, give_up)
    payloads, rejected = state.payloads.get(plan.round, {}), state.rejected.get(plan.round, {})
    return (
        {s: payloads.pop(s) for s in sorted(senders) if s in payloads},
        {s: rejected.pop(s) for s in sorted(senders) if s in rejected},
    )


def _narrowed(plan: RoundPlan, neighbours: list[Neighbour]) -> RoundPlan:
    """The signed plan seen through one level of the tree (these links only), for the SecAgg
    steps: not re-signed, it never leaves this peer."""
    return dataclasses.replace(plan, neighbours=neighbours)


def _counted(state):
    """The job's state with ``COUNT`` in its model spec: the second level's masked vectors are a
    group's sum and its count (same inbox, recoveries and keys: the dicts are shared)."""
    return dataclasses.replace(state, spec={**state.spec, **describe({COUNT: _count(0)})})


def _count(n: float) -> torch.Tensor:
    return torch.tensor([float(n)], dtype=torch.float64)


def _float64(model: dict) -> dict:
    return {k: v.detach().double() for k, v in model.items()}


__all__ = ["COUNT", "TREE_COUNT_OUT_OF_RANGE", "Role", "exchange", "role"]
