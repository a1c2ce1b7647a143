"""Communication graphs and their mixing weights (stdlib only: the platform imports this too).

A graph is a list of neighbour sets indexed by position. Metropolis-Hastings weights
W_ij = 1 / (1 + max(d_i, d_j)) for each edge and W_ii = 1 - sum_j W_ij give a symmetric,
doubly stochastic matrix for any undirected graph.
"""


def ring(n: int) -> list[set[int]]:
    """Each position talks to the one before and the one after it (none when alone)."""
    if n < 1:
        raise ValueError("a ring needs at least one peer")
    return [{(i - 1) % n, (i + 1) % n} - {i} for i in range(n)]


def metropolis_hastings(graph: list[set[int]]) -> list[dict[int, float]]:
    """Row i maps each neighbour j (and i itself) to its mixing weight."""
    degree = [len(nbrs) for nbrs in graph]
    rows = []
    for i, nbrs in enumerate(graph):
        row = {j: 1.0 / (1 + max(degree[i], degree[j])) for j in sorted(nbrs)}
        row[i] = 1.0 - sum(row.values())
        rows.append(row)
    return rows


TOPOLOGIES = {"ring": ring}


def build(name: str, n: int) -> list[dict[int, float]]:
    try:
        make = TOPOLOGIES[name]
    except KeyError:
        raise ValueError(f"unknown topology {name!r}; choose from {sorted(TOPOLOGIES)}") from None
    return metropolis_hastings(make(n))
