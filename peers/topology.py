"""Communication graphs and their mixing weights (stdlib only: the platform imports this too).

A graph is a list of neighbour sets indexed by position (0 .. n-1); every graph here is
undirected (j in graph[i] <=> i in graph[j]) and has no self loops. Metropolis-Hastings weights
W_ij = 1 / (1 + max(d_i, d_j)) for each edge and W_ii = 1 - sum_j W_ij give a symmetric,
doubly stochastic, non-negative matrix for any undirected graph; `build(name, n, **params)`
returns its rows as ``list[dict[int, float]]`` with ``row[i]`` the self weight.

Graphs: ``ring``, ``torus``, ``random_regular`` (alias ``expander``), ``complete``, ``star``
and ``dynamic`` (a random regular graph redrawn every k rounds, avoiding cut links). The
spectral gap of W (how fast gossip averaging mixes) is in :mod:`peers.spectral`, which needs
numpy and so lives apart from this module.

``tree_layout`` cuts a cohort into the groups of a secure-aggregation tree (``peers.secagg.tree``
in the simulator, ``peers.star_tree`` live; the platform plans its links from it too).
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

Graph = list[set[int]]
Link = tuple[int, int]

DEFAULT_DEGREE = 4  # random_regular / dynamic, lowered to fit small n
MAX_DRAWS = 1000  # attempts at a connected random regular graph before giving up


def _check_n(n: int, what: str) -> None:
    if type(n) is not int or n < 1:
        raise ValueError(f"a {what} needs at least one peer, got n={n!r}")


# -- fixed graphs -------------------------------------------------------------------------------
def ring(n: int) -> Graph:
    """Each position talks to the one before and the one after it (none when alone)."""
    _check_n(n, "ring")
    return [{(i - 1) % n, (i + 1) % n} - {i} for i in range(n)]


def torus_shape(n: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n, rows <= cols and the two as close as possible.

    For a prime n the only factorisation is 1 x n, so the torus degenerates into a ring.
    """
    _check_n(n, "torus")
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def torus(n: int) -> Graph:
    """2-D torus (wrap-around grid) of shape :func:`torus_shape`: up, down, left, right.

    Degree 4 when both sides are >= 3; a side of 2 gives one neighbour along it (up == down),
    a side of 1 none, so a prime n (1 x n) is exactly the ring and n = 4 (2 x 2) is a 4-cycle.
    Position p sits at row p // cols, column p % cols.
    """
    rows, cols = torus_shape(n)
    graph = []
    for p in range(n):
        r, c = divmod(p, cols)
        nbrs = {
            ((r - 1) % rows) * cols + c,
            ((r + 1) % rows) * cols + c,
            r * cols + (c - 1) % cols,
            r * cols + (c + 1) % cols,
        }
        graph.append(nbrs - {p})
    return graph


def complete(n: int) -> Graph:
    """Everyone talks to everyone: one gossip step is exact averaging (W = J / n)."""
    _check_n(n, "complete graph")
    return [set(range(n)) - {i} for i in range(n)]


def star(n: int) -> Graph:
    """Position 0 is the aggregator, linked to every other position; the others only to 0.

    This is the centralized baseline's graph. Gossiping over it with Metropolis-Hastings
    weights is NOT FedAvg (leaves keep 1 - 1/n of their own model); centralized FedAvg, where
    the aggregator averages everyone and sends the average back, is run in process by
    :func:`peers.simulate.run_fedavg` and live by :mod:`peers.star`.
    """
    _check_n(n, "star")
    return [set(range(1, n))] + [{0} for _ in range(1, n)]


def _pair(a: int, b: int) -> Link:
    return (a, b) if a < b else (b, a)


def _normalise_links(links: Iterable) -> frozenset[Link]:
    out = set()
    for link in links or ():
        a, b = link
        if a != b:
            out.add(_pair(int(a), int(b)))
    return frozenset(out)


def _regular_pairing(n: int, d: int, rng: random.Random, forbidden: frozenset[Link]) -> Graph | None:
    """One try at a simple d-regular graph by pairing free stubs at random (Steger-Wormald):
    pick two stubs of distinct, not yet linked, not forbidden positions; None when stuck."""
    graph: Graph = [set() for _ in range(n)]
    free = [d] * n
    while True:
        open_ = [i for i in range(n) if free[i]]
        if not open_:
            return graph
        candidates = [
            (a, b) for x, a in enumerate(open_) for b in open_[x + 1 :] if b not in graph[a] and (a, b) not in forbidden
        ]
        if not candidates:
            return None
        # Weight a pair by its free stubs so the draw is close to uniform over regular graphs.
        a, b = rng.choices(candidates, weights=[free[a] * free[b] for a, b in candidates])[0]
        graph[a].add(b)
        graph[b].add(a)
        free[a] -= 1
        free[b] -= 1


def _check_degree(n: int, d: int) -> None:
    if type(d) is not int or d < 0:
        raise ValueError(f"degree must be a non-negative integer, got {d!r}")
    if d >= n and not (n == 1 and d == 0):
        raise ValueError(f"a {d}-regular graph needs more than {d} peers, got n={n}")
    if (n * d) % 2:
        raise ValueError(f"a {d}-regular graph on {n} peers does not exist: n * d must be even")
    if n > 1 and d == 0:
        raise ValueError(f"a 0-regular graph on {n} peers is not connected")
    if n > 2 and d == 1:
        raise ValueError(f"a 1-regular graph on {n} peers is not connected")


def default_degree(n: int) -> int:
    """DEFAULT_DEGREE lowered to what n allows (d < n, n * d even)."""
    d = min(DEFAULT_DEGREE, n - 1)
    if (n * d) % 2:
        d -= 1
    return max(d, 0)


def random_regular(
    n: int, d: int | None = None, seed: int = 0, *, forbidden: Iterable = (), max_draws: int = MAX_DRAWS
) -> Graph:
    """Random connected d-regular graph (an expander with high probability for d >= 3).

    Needs d < n and n * d even (d defaults to :func:`default_degree`); draws again, from the
    same seeded stream, until the graph is connected. Links in `forbidden` (pairs of positions)
    are never used. Deterministic for a given (n, d, seed, forbidden).
    """
    _check_n(n, "random regular graph")
    d = default_degree(n) if d is None else d
    _check_degree(n, d)
    forbidden = _normalise_links(forbidden)
    rng = random.Random(f"random_regular:{n}:{d}:{seed}")
    for _ in range(max_draws):
        graph = _regular_pairing(n, d, rng, forbidden)
        if graph is not None and is_connected(graph):
            return graph
    raise ValueError(
        f"no connected {d}-regular graph on {n} peers found in {max_draws} draws"
        + (f" avoiding {len(forbidden)} cut link(s)" if forbidden else "")
    )


# -- dynamic ------------------------------------------------------------------------------------
DYNAMIC_BASES = ("random_regular", "ring", "torus")


def dynamic_graph(
    base: str,
    n: int,
    round: int,
    every_k: int = 1,
    seed: int = 0,
    cut_links: Iterable = frozenset(),
    *,
    d: int | None = None,
) -> Graph:
    """The graph used in `round` (1-based) of a topology that is redrawn every `every_k` rounds.

    Rounds 1..k use draw 0, rounds k+1..2k draw 1, and so on; each draw is a fresh random graph
    of kind `base`: ``random_regular`` (degree `d`), or ``ring`` / ``torus`` with the positions
    randomly relabelled. Links in `cut_links` (pairs of positions whose exchange was slow or
    failed) are never used: a draw that would use one is redrawn, so the peers that lost a link
    are reconnected to others and the graph stays connected (and d-regular for
    ``random_regular``). When no such graph can be found the graph is the complete graph minus
    the cut links, and a ValueError is raised if even that is disconnected (the cuts isolate
    someone).

    This is the AIOZ-style dynamic topology: rather than waiting on a straggling link every
    round, the overlay is rewired around slow/failed links, and changing the graph over time
    spreads information like a denser graph would (the product of the redrawn W's mixes faster
    than any single sparse W). Deterministic for a given (base, n, draw, seed, d, cut_links), so
    the platform and every peer can compute the same graph.
    """
    _check_n(n, "dynamic graph")
    if type(round) is not int or round < 1:
        raise ValueError(f"round must be an integer >= 1, got {round!r}")
    if type(every_k) is not int or every_k < 1:
        raise ValueError(f"every_k must be an integer >= 1, got {every_k!r}")
    if base not in DYNAMIC_BASES:
        raise ValueError(f"unknown dynamic base {base!r}; choose from {', '.join(DYNAMIC_BASES)}")
    cut = _normalise_links(cut_links)
    if any(not (0 <= a < n and 0 <= b < n) for a, b in cut):
        raise ValueError(f"cut links must be pairs of positions in 0..{n - 1}")
    draw = (round - 1) // every_k
    rng = random.Random(f"dynamic:{base}:{n}:{d}:{seed}:{draw}")
    graph: Graph
    for attempt in range(MAX_DRAWS // 10):
        if base == "random_regular":
            # Unrestricted first, so cut links that the draw would not have used change nothing.
            try:
                graph = random_regular(n, d, rng.getrandbits(64), forbidden=cut if attempt else (), max_draws=50)
            except ValueError:
                continue
        else:
            labels = list(range(n))
            rng.shuffle(labels)
            shape = ring(n) if base == "ring" else torus(n)
            graph = [set() for _ in range(n)]
            for p, nbrs in enumerate(shape):
                graph[labels[p]] = {labels[q] for q in nbrs}
        if not any(_pair(i, j) in cut for i, nbrs in enumerate(graph) for j in nbrs):
            return graph
    fallback = [set(range(n)) - {i} - {j for j in range(n) if _pair(i, j) in cut} for i in range(n)]
    if not is_connected(fallback):
        raise ValueError(f"the cut links {sorted(cut)} disconnect the {n} peers")
    return fallback


# -- properties and weights ---------------------------------------------------------------------
def is_connected(graph: Graph) -> bool:
    """Whether every position can reach every other one (breadth-first search from 0)."""
    if not graph:
        return True
    seen, frontier = {0}, [0]
    while frontier:
        nxt = []
        for i in frontier:
            for j in graph[i]:
                if j not in seen:
                    seen.add(j)
                    nxt.append(j)
        frontier = nxt
    return len(seen) == len(graph)


def metropolis_hastings(graph: Graph) -> list[dict[int, float]]:
    """Row i maps each neighbour j (and i itself, inserted last) to its mixing weight."""
    degree = [len(nbrs) for nbrs in graph]
    rows = []
    for i, nbrs in enumerate(graph):
        row = {j: 1.0 / (1 + max(degree[i], degree[j])) for j in sorted(nbrs)}
        row[i] = 1.0 - sum(row.values())
        rows.append(row)
    return rows


def renormalise(row: dict[int, float], missing: set[int], self_index: int | None = None) -> dict[int, float]:
    """Row without the `missing` neighbours, their weight moved onto the self weight.

    The row still sums to 1. Moving the lost weight to the diagonal (rather than scaling the
    surviving weights up, as :func:`peers.training.mix` does) keeps W symmetric when a link is
    lost in both directions, so W stays doubly stochastic over the survivors: the average of
    the surviving models is preserved by the mixing step. `self_index` defaults to the row's
    last key, which is where :func:`metropolis_hastings` puts it.
    """
    if not row:
        raise ValueError("empty row")
    me = next(reversed(row)) if self_index is None else self_index
    if me not in row:
        raise ValueError(f"self index {me} is not in the row")
    if me in missing:
        raise ValueError(f"position {me} cannot miss its own model")
    out = {j: w for j, w in row.items() if j not in missing and j != me}
    out[me] = row[me] + sum(w for j, w in row.items() if j in missing)
    return out


# -- by name ------------------------------------------------------------------------------------
def _dynamic(
    n: int,
    *,
    base: str = "random_regular",
    round: int = 1,
    every_k: int = 1,
    seed: int = 0,
    cut_links: Iterable = frozenset(),
    d: int | None = None,
) -> Graph:
    return dynamic_graph(base, n, round, every_k, seed, cut_links, d=d)


def _random_regular(n: int, *, d: int | None = None, seed: int = 0) -> Graph:
    return random_regular(n, d, seed)


TOPOLOGIES = {
    "ring": ring,
    "torus": torus,
    "random_regular": _random_regular,
    "expander": _random_regular,
    "complete": complete,
    "star": star,
    "dynamic": _dynamic,
}


def graph(name: str, n: int, **params) -> Graph:
    """The neighbour sets of topology `name` on n positions (params: d, seed, round, every_k,
    base, cut_links, as the graph takes them; the fixed graphs take none)."""
    try:
        make = TOPOLOGIES[name]
    except KeyError:
        raise ValueError(f"unknown topology {name!r}; choose from {sorted(TOPOLOGIES)}") from None
    try:
        inspect.signature(make).bind(n, **params)
    except TypeError as exc:
        raise ValueError(f"topology {name!r}: {exc}") from None
    return make(n, **params)


def build(name: str, n: int, **params) -> list[dict[int, float]]:
    """Metropolis-Hastings mixing rows of topology `name` on n positions (row[i][i]: self weight)."""
    return metropolis_hastings(graph(name, n, **params))


# -- the aggregation tree of secure aggregation --------------------------------------------------
TREE_MIN_GROUP = 2  # a group of one would give its aggregator that contributor's update


@dataclass(frozen=True)
class Group:
    aggregator: int
    members: tuple[int, ...]  # sorted, the aggregator among them


@dataclass(frozen=True)
class Tree:
    groups: tuple[Group, ...]

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(i for g in self.groups for i in g.members)

    @property
    def aggregators(self) -> tuple[int, ...]:
        return tuple(g.aggregator for g in self.groups)

    @property
    def root(self) -> int:
        """The aggregator above the others: the first group's, the cohort's lowest id."""
        return self.groups[0].aggregator


def tree_layout(node_ids: Iterable[int], group_size: int) -> Tree:
    """The sorted ids cut into consecutive groups of ``group_size``, a last node left alone
    joining the group before it, each group's lowest id its aggregator: deterministic in (ids,
    group size), so every party derives the same tree from the cohort."""
    ids = sorted(node_ids)
    if type(group_size) is not int or group_size < TREE_MIN_GROUP:
        raise ValueError(f"group size must be an int >= {TREE_MIN_GROUP}, got {group_size!r}")
    if len(ids) < TREE_MIN_GROUP:
        raise ValueError(f"a tree needs at least {TREE_MIN_GROUP} nodes, got {len(ids)}")
    if len(set(ids)) != len(ids) or any(type(i) is not int or i < 0 for i in ids):
        raise ValueError(f"node ids must be distinct ints >= 0, got {ids!r}")
    chunks = [ids[k : k + group_size] for k in range(0, len(ids), group_size)]
    if len(chunks[-1]) < TREE_MIN_GROUP:
        chunks[-2].extend(chunks.pop())
    return Tree(tuple(Group(aggregator=c[0], members=tuple(c)) for c in chunks))
