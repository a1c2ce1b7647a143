"""Communication graphs: shapes, mixing weights, spectral gaps, the dynamic graph, stdlib-only."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peers import topology
from peers.spectral import mixing_matrix, second_eigenvalue_modulus, spectral_gap

SIZES = [1, 2, 3, 4, 5, 7, 8, 12, 16, 17, 30]
NAMES = ["ring", "torus", "random_regular", "expander", "complete", "star", "dynamic"]


def graph_of(rows):
    return [set(row) - {i} for i, row in enumerate(rows)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", SIZES)
def test_rows_are_a_symmetric_doubly_stochastic_connected_mixing_matrix(name, n):
    rows = topology.build(name, n)
    assert len(rows) == n
    W = mixing_matrix(rows)
    assert all(i in row for i, row in enumerate(rows))  # row[i] is the self weight
    assert (W >= 0).all()
    assert np.allclose(W, W.T)
    assert np.allclose(W.sum(axis=1), 1.0) and np.allclose(W.sum(axis=0), 1.0)
    assert all(abs(sum(row.values()) - 1.0) < 1e-12 for row in rows)
    graph = graph_of(rows)
    assert all(i not in nbrs for i, nbrs in enumerate(graph))
    assert all(i in graph[j] for i, nbrs in enumerate(graph) for j in nbrs)  # undirected
    assert topology.is_connected(graph)
    if n > 1:
        assert spectral_gap(rows) > 0  # connected with positive self weights: gossip converges


def degrees(name, n, **params):
    return sorted({len(nbrs) for nbrs in topology.graph(name, n, **params)})


def test_degrees():
    assert degrees("ring", 16) == [2] and degrees("ring", 2) == [1] and degrees("ring", 1) == [0]
    assert degrees("complete", 16) == [15]
    star = topology.star(16)
    assert star[0] == set(range(1, 16)) and all(star[i] == {0} for i in range(1, 16))
    assert degrees("torus", 16) == [4] and degrees("torus", 12) == [4]  # 4 x 4, 3 x 4
    assert degrees("torus", 8) == [3]  # 2 x 4: up and down are the same neighbour
    assert degrees("random_regular", 16) == [4]
    assert degrees("random_regular", 16, d=3, seed=5) == [3]
    assert degrees("random_regular", 10, d=7, seed=1) == [7]
    assert degrees("random_regular", 5) == [4]  # default degree lowered to what n allows
    assert degrees("dynamic", 16) == [4]


def test_torus_shape_and_prime_sizes():
    assert topology.torus_shape(16) == (4, 4)
    assert topology.torus_shape(12) == (3, 4)
    assert topology.torus_shape(30) == (5, 6)
    for prime in (2, 3, 5, 7, 13, 17):
        assert topology.torus_shape(prime) == (1, prime)
        assert topology.torus(prime) == topology.ring(prime)  # a 1 x n torus is the ring
    # p = r * cols + c: right neighbour of the last column wraps to the first
    assert topology.torus(12)[3] == {2, 0, 7, 11}


def test_random_regular_is_seeded_and_validated():
    assert topology.random_regular(16, 4, seed=3) == topology.random_regular(16, 4, seed=3)
    assert topology.random_regular(16, 4, seed=3) != topology.random_regular(16, 4, seed=4)
    for seed in range(20):
        g = topology.random_regular(12, 3, seed=seed)
        assert topology.is_connected(g) and {len(x) for x in g} == {3}
    with pytest.raises(ValueError, match="even"):
        topology.random_regular(7, 3)
    with pytest.raises(ValueError, match="more than"):
        topology.random_regular(4, 4)
    with pytest.raises(ValueError, match="not connected"):
        topology.random_regular(6, 1)


def test_spectral_gap_ordering_complete_expander_ring():
    n = 16
    complete, ring = spectral_gap(topology.build("complete", n)), spectral_gap(topology.build("ring", n))
    assert complete == pytest.approx(1.0)
    assert ring == pytest.approx(1 - (1 + 2 * np.cos(2 * np.pi / n)) / 3)  # closed form for the ring
    for seed in range(5):
        expander = spectral_gap(topology.build("random_regular", n, d=4, seed=seed))
        assert complete > expander > ring
    assert spectral_gap(topology.build("star", n)) > 0


def test_spectral_helpers():
    rows = topology.build("ring", 4)
    W = mixing_matrix(rows)
    assert W.shape == (4, 4) and W[0, 0] == pytest.approx(1 / 3) and W[0, 2] == 0
    assert second_eigenvalue_modulus(W) == pytest.approx(1 / 3)
    assert spectral_gap([{0: 1.0}]) == 1.0
    # two disconnected pairs: eigenvalue 1 twice, no gap
    assert spectral_gap([{0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5}, {2: 0.5, 3: 0.5}, {2: 0.5, 3: 0.5}]) == pytest.approx(0.0)


def test_build_accepts_every_name_and_rejects_unknowns():
    for name in topology.TOPOLOGIES:
        assert len(topology.build(name, 6)) == 6
    assert topology.build("ring", 5) == topology.metropolis_hastings(topology.ring(5))  # platform's call
    with pytest.raises(ValueError, match="unknown topology"):
        topology.build("hypercube", 8)
    with pytest.raises(ValueError, match="unexpected keyword"):
        topology.build("ring", 8, d=3)


def test_renormalise_keeps_rows_summing_to_one():
    rows = topology.build("random_regular", 16, seed=2)
    for i, row in enumerate(rows):
        nbrs = sorted(set(row) - {i})
        out = topology.renormalise(row, {nbrs[0], nbrs[2]})
        assert sum(out.values()) == pytest.approx(1.0)
        assert set(out) == set(row) - {nbrs[0], nbrs[2]}
        assert out[i] == pytest.approx(row[i] + row[nbrs[0]] + row[nbrs[2]])
        assert all(out[j] == row[j] for j in out if j != i)
        assert topology.renormalise(row, set()) == row
        assert topology.renormalise(row, set(nbrs)) == {i: pytest.approx(1.0)}
    assert topology.renormalise({1: 0.25, 0: 0.75}, {1}, self_index=0) == {0: 1.0}
    with pytest.raises(ValueError):
        topology.renormalise(rows[3], {3})


def test_renormalise_keeps_w_doubly_stochastic_over_survivors():
    n, dead = 8, 5
    rows = topology.build("ring", n)
    survivors = [i for i in range(n) if i != dead]
    W = mixing_matrix(
        [
            topology.renormalise(rows[i], {dead}, self_index=i) if i != dead and dead in rows[i] else rows[i]
            for i in range(n)
        ]
    )
    sub = W[np.ix_(survivors, survivors)]
    assert np.allclose(sub.sum(axis=0), 1) and np.allclose(sub.sum(axis=1), 1) and np.allclose(sub, sub.T)


def test_dynamic_redraws_every_k_rounds():
    draws = [topology.dynamic_graph("random_regular", 16, r, every_k=3, seed=7) for r in range(1, 13)]
    for start in (0, 3, 6, 9):
        assert draws[start] == draws[start + 1] == draws[start + 2]
    assert len({str(g) for g in draws}) == 4  # four distinct graphs over 12 rounds
    assert all({len(x) for x in g} == {4} and topology.is_connected(g) for g in draws)
    assert topology.dynamic_graph("random_regular", 16, 1, 3, seed=8) != draws[0]
    every_round = [topology.dynamic_graph("ring", 10, r, 1, seed=0) for r in range(1, 6)]
    assert len({str(g) for g in every_round}) == 5 and all({len(x) for x in g} == {2} for g in every_round)
    assert {len(x) for x in topology.dynamic_graph("torus", 16, 2, 1, 0)} == {4}


@pytest.mark.parametrize("base", topology.DYNAMIC_BASES)
def test_dynamic_respects_cut_links_and_reconnects(base):
    n = 16
    before = topology.dynamic_graph(base, n, 4, every_k=2, seed=1)
    cut = {(a, b) for a, nbrs in enumerate(before) for b in nbrs if a < b}
    cut = set(sorted(cut)[:5])
    after = topology.dynamic_graph(base, n, 4, every_k=2, seed=1, cut_links=cut | {(9, 9)})
    used = {(min(a, b), max(a, b)) for a, nbrs in enumerate(after) for b in nbrs}
    assert not used & cut
    assert topology.is_connected(after)
    assert sorted({len(x) for x in after}) == sorted({len(x) for x in before})  # same degree, rewired
    # A cut link the graph does not use changes nothing.
    unused = next((a, b) for a in range(n) for b in range(a + 1, n) if b not in before[a])
    assert topology.dynamic_graph(base, n, 4, every_k=2, seed=1, cut_links={unused}) == before
    # The platform's call with parameters.
    rows = topology.build("dynamic", n, base=base, round=4, every_k=2, seed=1, cut_links=cut)
    assert graph_of(rows) == after


def test_dynamic_cannot_survive_an_isolating_cut():
    cut = {(0, j) for j in range(1, 6)}
    with pytest.raises(ValueError, match="disconnect"):
        topology.dynamic_graph("random_regular", 6, 1, 1, 0, cut_links=cut, d=2)
    # cuts that leave only a sparse allowed graph: falls back to the complete graph minus the cuts
    cut = {(a, b) for a in range(5) for b in range(a + 1, 5)} - {(0, 1), (1, 2), (2, 3), (3, 4)}
    g = topology.dynamic_graph("random_regular", 5, 1, 1, 0, cut_links=cut, d=2)
    assert topology.is_connected(g) and g == [{1}, {0, 2}, {1, 3}, {2, 4}, {3}]


def test_dynamic_validates():
    with pytest.raises(ValueError):
        topology.dynamic_graph("star", 8, 1)
    with pytest.raises(ValueError):
        topology.dynamic_graph("ring", 8, 0)
    with pytest.raises(ValueError):
        topology.dynamic_graph("ring", 8, 1, every_k=0)
    with pytest.raises(ValueError):
        topology.dynamic_graph("ring", 8, 1, cut_links={(0, 8)})


def test_topology_module_is_stdlib_only():
    code = (
        "import sys, peers.topology; "
        "bad = [m for m in ('torch', 'numpy', 'django') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
