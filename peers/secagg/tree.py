"""Secure aggregation over a two-level tree: contributors in groups, one aggregator per group, the
root above the aggregators. The root learns the weighted sum of the whole cohort and its total
weight; an aggregator learns its own group's sum; no one learns a single contributor's update.

Layout (``layout``): the cohort's node ids, sorted, cut into consecutive groups of ``group_size``;
the last group takes what is left, and a remainder of a single node joins the group before it
(a group of one would hand its aggregator that node's update). Each group's aggregator is its
lowest id, itself a contributor. Deterministic in (node ids, group size): every party computes
the same tree from the cohort the platform announces. One group (``group_size`` >= the cohort)
is the star with one more hop.

A round, all parties given the same ``round`` number:

1. Contributors: each group runs one Bonawitz round (``protocol.Participant``: pairwise and self
   masks, Shamir-shared key and seed) among its members. Member i uploads to its aggregator
   ``Participant.mask(encode(w_i * x_i))``, w_i its sample weight from a source the platform
   trusts (passed in, never reported by the contributor), encoded for a sum over the whole
   cohort so that no partial sum can wrap the ring.
2. Aggregators: an aggregator sums its group's masked uploads, collects its surviving members'
   reveals and unmasks (``protocol.unmask``): it now holds its group's weighted sum, over at
   least the group's threshold of members.
3. Aggregators to the root: the aggregators run a second Bonawitz round among themselves (fresh
   keys and seeds, their own Shamir shares), masking their groups' sums (already ring elements).
   The root sums them, collects the surviving aggregators' reveals and unmasks the total. It
   divides by the total weight of the contributors whose updates are in it: it knows who they
   are (the survivor lists the aggregators report, which it needs for unmasking anyway) and
   takes their weights from the trusted source, not from anyone in the tree.

Dropouts (nodes that shared their secrets, then vanished before uploading): a group whose
survivors still reach its threshold is unmasked as the survivors' sum (the dropped members'
pairwise masks rebuilt from their Shamir-shared keys); an aggregator that vanishes takes its
group's sum with it, and the root rebuilds its masks at the second level and sums the other
groups. Thresholds per group and at the root: ``threshold(size, dropout_fraction)``, which
tolerates strictly fewer than ``dropout_fraction`` of the group's members dropping (the default
third gives ``fedavg.default_threshold``). More dropouts than that in any group, or among the
aggregators, raise ``TooManyDropouts``: the round has no sum, never a wrong one.

Protects against (honest-but-curious, as ``protocol``): the root learning any group's sum or any
contributor's update, an aggregator learning one member's update, and coalitions smaller than a
group's threshold inside that group. Does not protect against: an aggregator learning its group's
sum (by design: that is what it unmasks), an aggregator colluding with the root (the root then
learns that group's sum, still not one update), lying aggregators or contributors (a wrong or
out-of-range input cannot be checked under the masks), nor a malicious aggregator that claims
live members dropped (``protocol`` does not run the paper's consistency round). Shares and masked
vectors must travel encrypted and authenticated; this module runs all parties in one process, as
``fedavg`` does, for the simulator and the tests. Live jobs run the same tree (``layout``, shared
with the platform as ``peers.topology.tree_layout``) across machines with the gossip masks of
``peers.secagg.gossip``: ``peers.star_tree``, the job option ``secagg_tree_group``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from peers.secagg.fixedpoint import decode, encode
from peers.secagg.protocol import Participant, SharePair, unmask
from peers.topology import TREE_MIN_GROUP as MIN_GROUP
from peers.topology import Group, Tree
from peers.topology import tree_layout as layout

DEFAULT_DROPOUT_FRACTION = 1 / 3

Keys = Callable[[int], tuple[bytes, bytes]]
"""node id -> (raw X25519 mask key, self-mask seed), 32 bytes each: fixed secrets, only to replay or
to test (by default every participant draws fresh ones)."""


class TooManyDropouts(ValueError):
    """A group (or the aggregators) kept fewer survivors than its threshold: no sum this round."""


def threshold(size: int, dropout_fraction: float = DEFAULT_DROPOUT_FRACTION) -> int:
    """Reveals needed to unmask a round of ``size`` participants so that strictly fewer than
    ``dropout_fraction`` of them may drop: ``size - (ceil(fraction * size) - 1)``. The fraction is
    at most 1/2, so that the threshold is a majority (two disjoint halves can never both unmask)."""
    if type(size) is not int or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not 0 < dropout_fraction <= 0.5:
        raise ValueError(f"dropout fraction must be in (0, 1/2], got {dropout_fraction!r}")
    return size - (math.ceil(dropout_fraction * size) - 1)


@dataclass
class TreeResult:
    total: npt.NDArray[np.float64]  # the weighted sum of the included contributors' updates
    weight: float  # their total (trusted) weight
    included: frozenset[int]  # contributors whose updates are in ``total``
    # what each aggregator received from each contributor, and the root from each aggregator
    # (kept only when asked: ``keep_views``); for the tests' uniformity checks
    contributor_views: dict[int, npt.NDArray[np.uint64]] = field(default_factory=dict)
    group_views: dict[int, npt.NDArray[np.uint64]] = field(default_factory=dict)

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        return self.total / self.weight


def secure_sum(
    inputs: Mapping[int, npt.NDArray[np.uint64]],
    ids: Iterable[int],
    round: int,
    threshold: int,
    *,
    dropped: Iterable[int] = (),
    where: str = "round",
    keys: Keys | None = None,
) -> tuple[npt.NDArray[np.uint64], dict[int, npt.NDArray[np.uint64]]]:
    """One Bonawitz round among ``ids`` (each with fresh keys), all parties in this process:
    everyone shares its secrets, the survivors (``ids`` less ``dropped``) mask their ``inputs``
    (1-D uint64 ring vectors of one length), the receiver sums what arrives and unmasks it with
    the survivors' reveals. Returns (the sum of the survivors' inputs, the masked vectors the
    receiver got). ``TooManyDropouts`` before anything is masked when the survivors are fewer
    than ``threshold``. ``keys``: see ``Keys``."""
    ids = sorted(ids)
    drop = set(dropped) & set(ids)
    survivors = [i for i in ids if i not in drop]
    if len(survivors) < threshold:
        raise TooManyDropouts(
            f"{where}: {len(drop)} of {len(ids)} dropped, {len(survivors)} left, {threshold} needed to unmask"
        )
    people = {
        i: Participant(i, round, threshold)
        if keys is None
        else Participant(i, round, threshold, mask_key=keys(i)[0], self_seed=keys(i)[1])
        for i in ids
    }
    held: dict[int, dict[int, SharePair]] = {i: {} for i in ids}
    for p in people.values():
        for j, pair in p.share_secrets(ids).items():
            held[j][p.node_id] = pair
    public = {i: p.public_key for i, p in people.items()}
    masked = {i: people[i].mask(inputs[i], public) for i in survivors}
    length = masked[survivors[0]].size
    total = np.zeros(length, dtype=np.uint64)
    for y in masked.values():
        total += y  # wraps mod 2^64, as it must
    reveals = {i: people[i].reveal(survivors, drop, held[i]) for i in survivors}
    return unmask(total, survivors, drop, public, reveals, threshold, round, length), masked


def tree_weighted_sum(
    tree: Tree,
    updates: Mapping[int, npt.ArrayLike],
    weights: Mapping[int, float],
    round: int,
    *,
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION,
    dropped: Iterable[int] = (),
    keep_views: bool = False,
    keys: Callable[[str, int], tuple[bytes, bytes]] | None = None,
) -> TreeResult:
    """The round of the module docstring: ``updates`` (node id -> 1-D float vector, one length)
    and ``weights`` (node id -> trusted positive sample weight) for every node of ``tree``;
    ``dropped``: nodes that shared their secrets at both levels, then vanished before uploading
    (an aggregator among them takes its group's sum with it). ``keys``: ``Keys`` per level,
    ``"group"`` for the contributors' round, ``"root"`` for the aggregators'."""
    nodes = set(tree.nodes)
    if missing := nodes - updates.keys():
        raise ValueError(f"no update for nodes {sorted(missing)}")
    if missing := nodes - weights.keys():
        raise ValueError(f"no trusted weight for nodes {sorted(missing)}")
    if bad := [i for i in nodes if not (math.isfinite(weights[i]) and weights[i] > 0)]:
        raise ValueError(f"weights must be positive and finite, not for nodes {sorted(bad)}")
    drop = set(dropped)
    if unknown := drop - nodes:
        raise ValueError(f"dropped nodes {sorted(unknown)} are not in the tree")
    n = len(nodes)
    # the root's threshold first: when too many aggregators vanished there is nothing to compute
    agg_threshold = threshold(len(tree.groups), dropout_fraction)
    live_aggs = [a for a in tree.aggregators if a not in drop]
    if len(live_aggs) < agg_threshold:
        raise TooManyDropouts(
            f"root: {len(tree.groups) - len(live_aggs)} of {len(tree.groups)} aggregators dropped, "
            f"{len(live_aggs)} left, {agg_threshold} needed to unmask"
        )
    contributor_views: dict[int, npt.NDArray[np.uint64]] = {}
    partial: dict[int, npt.NDArray[np.uint64]] = {}
    included: set[int] = set()
    for g in tree.groups:
        encoded = {
            i: encode(np.asarray(updates[i], dtype=np.float64).reshape(-1) * weights[i], summands=n)
            for i in g.members
            if i not in drop
        }
        # each member encodes its own; the dropped ones vanished before uploading
        if g.aggregator in drop:
            continue  # its members' uploads went nowhere; the root removes its masks below
        t = threshold(len(g.members), dropout_fraction)
        partial[g.aggregator], views = secure_sum(
            encoded,
            g.members,
            round,
            t,
            dropped=drop,
            where=f"group of aggregator {g.aggregator}",
            keys=None if keys is None else lambda i: keys("group", i),
        )
        included.update(encoded)
        if keep_views:
            contributor_views.update(views)
    total, group_views = secure_sum(
        partial,
        tree.aggregators,
        round,
        agg_threshold,
        dropped=drop,
        where="root",
        keys=None if keys is None else lambda i: keys("root", i),
    )
    return TreeResult(
        total=decode(total),
        weight=math.fsum(weights[i] for i in included),
        included=frozenset(included),
        contributor_views=contributor_views,
        group_views=group_views if keep_views else {},
    )


__all__ = [
    "DEFAULT_DROPOUT_FRACTION",
    "MIN_GROUP",
    "Group",
    "Keys",
    "TooManyDropouts",
    "Tree",
    "TreeResult",
    "layout",
    "secure_sum",
    "threshold",
    "tree_weighted_sum",
]
