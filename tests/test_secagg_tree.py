"""Secure aggregation over an aggregation tree (peers.secagg.tree, `python -m peers simulate
--secagg --secagg-tree GROUP_SIZE`): the root's total is the plain weighted sum, what an
aggregator and the root see is uniform noise, dropouts up to the configured fraction are
recovered and more fail loudly, and FedAvg over the tree trains as well as without it."""

import hashlib
import logging

import numpy as np
import pytest
from scipy import stats

from peers.secagg.fedavg import default_threshold, tree_weighted_mean
from peers.secagg.fixedpoint import encode
from peers.secagg.tree import Group, TooManyDropouts, layout, threshold, tree_weighted_sum
from peers.simulate import SimConfig, run_simulation
from peers.training import mix
from tests.test_secagg_fedavg import assert_close, uploads


def rel_err(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def cohort(ids, length=2_000, seed=0):
    """Updates (normal, small, as model deltas are) and trusted sample weights (uneven)."""
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0, 0.05, length) for i in ids}, {i: float(40 + 7 * (i % 5)) for i in ids}


def plain_sum(updates, weights, ids):
    return np.sum([weights[i] * updates[i] for i in ids], axis=0)


def fixed_keys(level, i):
    h = hashlib.sha256(f"{level}/{i}".encode()).digest()
    return h, hashlib.sha256(h).digest()


def as_unit(v):
    return v.astype(np.float64) / 2.0**64


# layout


def test_layout_is_deterministic_groups_of_g_with_the_lowest_id_aggregating():
    tree = layout([9, 3, 7, 1, 5, 11, 13], 3)  # any order in, the same tree out
    assert tree == layout([1, 3, 5, 7, 9, 11, 13], 3)
    assert tree.groups == (Group(1, (1, 3, 5)), Group(7, (7, 9, 11, 13)))  # a lone 13 joins the group before
    assert tree.aggregators == (1, 7) and tree.nodes == (1, 3, 5, 7, 9, 11, 13)
    assert [len(g.members) for g in layout(range(11), 4).groups] == [4, 4, 3]  # uneven last group
    assert [len(g.members) for g in layout(range(5), 8).groups] == [5]  # one group: the star plus a hop
    for ids, g, match in [
        (range(5), 1, "group size"),
        ([0], 3, "at least 2 nodes"),
        ([1, 1, 2], 2, "distinct"),
        ([-1, 2], 2, "distinct ints >= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            layout(ids, g)


def test_threshold_tolerates_strictly_fewer_than_the_fraction():
    assert [threshold(n) for n in range(3, 12)] == [default_threshold(n) for n in range(3, 12)]
    assert threshold(7) == 5 and threshold(7, 0.5) == 4 and threshold(10, 0.25) == 8 and threshold(1) == 1
    for bad in (0, 0.6, -0.1):
        with pytest.raises(ValueError, match="dropout fraction"):
            threshold(5, bad)


# the sum


@pytest.mark.parametrize(("n", "g"), [(11, 2), (11, 3), (11, 4), (9, 4), (11, 5), (11, 11), (6, 20)])
def test_the_roots_total_is_the_plain_weighted_sum(n, g):
    ids = list(range(3, 3 + n))
    updates, weights = cohort(ids, seed=n * 100 + g)
    result = tree_weighted_sum(layout(ids, g), updates, weights, round=4)
    assert result.included == frozenset(ids)
    assert result.weight == sum(weights.values())
    assert rel_err(result.total, plain_sum(updates, weights, ids)) < 1e-6
    want_mean = plain_sum(updates, weights, ids) / sum(weights.values())
    assert rel_err(result.mean, want_mean) < 1e-6


def test_weights_come_from_the_caller_and_are_checked():
    ids = list(range(6))
    updates, weights = cohort(ids)
    tree = layout(ids, 3)
    with pytest.raises(ValueError, match=r"no trusted weight for nodes \[5\]"):
        tree_weighted_sum(tree, updates, {i: w for i, w in weights.items() if i != 5}, round=1)
    for bad in (0.0, -3.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"positive and finite, not for nodes \[2\]"):
            tree_weighted_sum(tree, updates, weights | {2: bad}, round=1)
    with pytest.raises(ValueError, match=r"no update for nodes \[0\]"):
        tree_weighted_sum(tree, {i: u for i, u in updates.items() if i}, weights, round=1)
    with pytest.raises(ValueError, match=r"dropped nodes \[42\] are not in the tree"):
        tree_weighted_sum(tree, updates, weights, round=1, dropped={42})


# what the aggregators and the root see


def test_what_aggregators_and_the_root_see_is_uniform_and_the_plain_updates_are_not():
    ids = list(range(8))
    updates, weights = cohort(ids, length=20_000, seed=5)
    tree = layout(ids, 4)
    result = tree_weighted_sum(tree, updates, weights, round=2, keep_views=True, keys=fixed_keys)
    assert set(result.contributor_views) == set(ids) and set(result.group_views) == set(tree.aggregators)
    for i in ids:
        assert stats.kstest(as_unit(result.contributor_views[i]), "uniform").pvalue > 0.01, i
        plain = encode(updates[i] * weights[i], summands=len(ids))
        assert stats.kstest(as_unit(plain), "uniform").pvalue < 1e-6
    for a in tree.aggregators:
        assert stats.kstest(as_unit(result.group_views[a]), "uniform").pvalue > 0.01, a
    # a group's unmasked sum is as far from uniform as one update: the second level is what hides it
    group_sum = encode(plain_sum(updates, weights, tree.groups[0].members), summands=len(ids))
    assert stats.kstest(as_unit(group_sum), "uniform").pvalue < 1e-6
    # and the masks cancel: the seeded run still sums right
    assert rel_err(result.total, plain_sum(updates, weights, ids)) < 1e-6


# dropouts


def test_contributors_dropping_up_to_the_fraction_are_recovered():
    ids = list(range(14))  # groups 0-6 and 7-13: threshold 5, two may drop from each
    updates, weights = cohort(ids, seed=7)
    tree = layout(ids, 7)
    dropped = {2, 5, 9, 13}
    result = tree_weighted_sum(tree, updates, weights, round=3, dropped=dropped)
    kept = [i for i in ids if i not in dropped]
    assert result.included == frozenset(kept)
    assert result.weight == sum(weights[i] for i in kept)
    assert rel_err(result.total, plain_sum(updates, weights, kept)) < 1e-6
    # a wider fraction lets a group of 7 lose three
    result = tree_weighted_sum(tree, updates, weights, round=3, dropped={1, 2, 3}, dropout_fraction=0.5)
    assert rel_err(result.total, plain_sum(updates, weights, [i for i in ids if i not in {1, 2, 3}])) < 1e-6


def test_an_aggregator_dropping_takes_its_group_out_and_the_root_still_unmasks_the_rest():
    ids = list(range(16))  # four groups of four (aggregators 0, 4, 8, 12): the root needs three
    updates, weights = cohort(ids, seed=8)
    tree = layout(ids, 4)
    result = tree_weighted_sum(tree, updates, weights, round=5, dropped={4, 13})  # aggregator 4, and 13 of group 12
    kept = [i for i in ids if not 4 <= i < 8 and i != 13]
    assert result.included == frozenset(kept)
    assert result.weight == sum(weights[i] for i in kept)
    assert rel_err(result.total, plain_sum(updates, weights, kept)) < 1e-6


def test_too_many_dropouts_fail_loudly_never_with_a_wrong_sum():
    ids = list(range(14))
    updates, weights = cohort(ids, seed=9)
    tree = layout(ids, 7)
    with pytest.raises(TooManyDropouts, match="group of aggregator 7: 3 of 7 dropped, 4 left, 5 needed"):
        tree_weighted_sum(tree, updates, weights, round=1, dropped={8, 10, 12})
    with pytest.raises(TooManyDropouts, match="root: 1 of 2 aggregators dropped, 1 left, 2 needed"):
        tree_weighted_sum(tree, updates, weights, round=1, dropped={7})
    assert issubclass(TooManyDropouts, ValueError)  # callers that catch ValueError skip the round


# FedAvg over the tree


def test_the_tree_mean_of_masked_uploads_is_fedavgs_mean():
    ups = uploads(7)
    assert_close(tree_weighted_mean(ups, round=1, group_size=3), mix(ups))  # groups of 3 and 4
    survivors = [u for i, u in enumerate(ups) if i != 5]
    assert_close(tree_weighted_mean(ups, round=1, group_size=7, dropped=frozenset({5})), mix(survivors))


def run(secagg: bool, tree: int = 0):
    cfg = SimConfig(
        peers=6,
        topology="star",
        rule="fedavg",
        rounds=6,
        local_steps=10,
        lr=0.2,
        lr_schedule="constant",
        partition="iid",
        device="cpu",
        secagg=secagg,
        secagg_tree_group=tree,
    )
    return run_simulation(cfg)


def test_a_star_job_trains_as_well_over_the_tree_as_without_secagg():
    plain, masked = run(False), run(True, tree=3)
    assert masked.rounds[-1].global_accuracy > 0.8
    assert abs(masked.rounds[-1].global_accuracy - plain.rounds[-1].global_accuracy) <= 0.005


def test_the_tree_option_is_checked_and_wired_to_the_cli(monkeypatch):
    with pytest.raises(ValueError, match="needs --secagg"):
        run_simulation(SimConfig(peers=4, topology="star", rule="fedavg", rounds=1, secagg_tree_group=2, device="cpu"))
    with pytest.raises(ValueError, match="group size >= 2"):
        run_simulation(
            SimConfig(peers=4, topology="star", rule="fedavg", rounds=1, secagg=True, secagg_tree_group=1, device="cpu")
        )
    import peers.simulate
    from peers.__main__ import main

    seen = []
    monkeypatch.setattr(peers.simulate, "simulate_cli", lambda cfg, as_json: seen.append(cfg) or 0)
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # main's logging set-up: not in the test process
    monkeypatch.setenv("LOG_LEVEL", "INFO")  # or cmd_simulate quietens the "peers" logger for the other tests
    assert main(["simulate", "--topology", "star", "--rule", "fedavg", "--secagg", "--secagg-tree", "4"]) == 0
    assert seen[0].secagg and seen[0].secagg_tree_group == 4
