"""Aggregation rules (peers.rules): exact results on hand-computed inputs, robustness to planted
outliers, bounded influence under norm clipping, validation errors. Real tensors, no mocks."""

import itertools
import math

import pytest
import torch

from peers.rules import RULES, _flat, bulyan, get_rule, krum, norm_clip

ALL = sorted(RULES)


def make_updates(honest: int, outliers: int, seed: int = 0, outlier_value: float = 1e6):
    """``honest`` updates near 1.0 (+-0.01) and ``outliers`` at ``outlier_value``, interleaved.
    'big' spans several column blocks; 'steps' is an integer buffer."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"w": (6, 5), "b": (5,), "big": (2 * _flat.BLOCK_COLUMNS + 123,)}
    good = [
        {**{k: 1.0 + 0.01 * torch.randn(s, generator=g) for k, s in shapes.items()}, "steps": torch.tensor(10)}
        for _ in range(honest)
    ]
    bad = [
        {**{k: torch.full(s, outlier_value) for k, s in shapes.items()}, "steps": torch.tensor(10)}
        for _ in range(outliers)
    ]
    ups = list(good)
    for i, b in enumerate(bad):  # put outliers first, in the middle, ... not just at the end
        ups.insert((i * 5) % (len(ups) + 1), b)
    return ups, good


def mean_of(states):
    return {k: torch.stack([s[k].double() for s in states]).mean(0) for k in states[0]}


def max_dev(result, reference):
    return max(float((result[k].double() - reference[k].double()).abs().max()) for k in reference)


def clone(states):
    return [{k: v.clone() for k, v in s.items()} for s in states]


def assert_unchanged(before, after):
    for b, a in zip(before, after, strict=True):
        for k in b:
            assert torch.equal(b[k], a[k]), f"rule modified its input tensor {k!r}"


# ----------------------------------------------------------------------------------------- registry
def test_registry_names_and_get_rule():
    assert set(RULES) == {
        "mean",
        "median",
        "trimmed_mean",
        "krum",
        "multi_krum",
        "bulyan",
        "norm_clip",
        "clipped_gossip",
    }
    for name in RULES:
        assert get_rule(name) is RULES[name]
    with pytest.raises(ValueError, match=r"unknown aggregation rule 'fedavg'.*mean.*median.*bulyan"):
        get_rule("fedavg")


# ----------------------------------------------------------------------------------------- mean
def test_weighted_mean_is_exact():
    ups = [
        {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5])},
        {"w": torch.tensor([[10.0, 20.0], [30.0, 40.0]]), "b": torch.tensor([-1.5])},
        {"w": torch.tensor([[-4.0, 0.0], [8.0, 1.0]]), "b": torch.tensor([2.0])},
    ]
    out = get_rule("mean")(ups, [1.0, 2.0, 5.0])
    expect_w = (
        torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        + 2 * torch.tensor([[10.0, 20.0], [30.0, 40.0]])
        + 5 * torch.tensor([[-4.0, 0.0], [8.0, 1.0]])
    ) / 8
    torch.testing.assert_close(out["w"], expect_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["b"], torch.tensor([(0.5 - 3.0 + 10.0) / 8]), rtol=0, atol=1e-6)
    # renormalised: scaling the weights changes nothing; None is uniform
    torch.testing.assert_close(get_rule("mean")(ups, [10.0, 20.0, 50.0])["w"], expect_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(get_rule("mean")(ups)["w"], (ups[0]["w"] + ups[1]["w"] + ups[2]["w"]) / 3)
    # a zero weight drops an update entirely
    torch.testing.assert_close(get_rule("mean")(ups, [1, 0, 0])["w"], ups[0]["w"])


def test_mean_keeps_dtypes_and_rounds_integer_buffers():
    ups = [
        {
            "h": torch.tensor([1.0, 2.0], dtype=torch.float16),
            "d": torch.tensor([1.0], dtype=torch.float64),
            "n": torch.tensor(3),
        },
        {
            "h": torch.tensor([2.0, 4.0], dtype=torch.float16),
            "d": torch.tensor([2.0], dtype=torch.float64),
            "n": torch.tensor(6),
        },
    ]
    out = get_rule("mean")(ups)
    assert out["h"].dtype == torch.float16 and out["d"].dtype == torch.float64 and out["n"].dtype == torch.int64
    assert (
        out["h"].tolist() == [1.5, 3.0] and out["d"].tolist() == [1.5] and int(out["n"]) == 4
    )  # 4.5 -> 4 (round half even)


def test_mean_is_not_robust():
    """The baseline the robust rules are measured against: two outliers ruin the mean."""
    ups, _ = make_updates(7, 2)
    assert float(get_rule("mean")(ups)["w"].min()) > 1e5


# ----------------------------------------------------------------------------------------- robust rules
ROBUST = [
    ("median", 7, 2, {}),
    ("trimmed_mean", 7, 2, {"trim": 2}),
    ("trimmed_mean", 7, 2, {"trim": 0.25}),  # floor(0.25 * 9) = 2 per side
    ("krum", 7, 2, {"f": 2}),
    ("multi_krum", 7, 2, {"f": 2}),
    ("multi_krum", 7, 2, {"f": 2, "m": 3}),
    ("bulyan", 9, 2, {"f": 2}),  # Bulyan needs n >= 4f + 3
    ("norm_clip", 7, 2, {"max_norm": 5.0}),  # deltas from the reference: honest ~1.8, untouched; outliers clipped
]


@pytest.mark.parametrize(("name", "honest", "bad", "params"), ROBUST, ids=[f"{r[0]}-{r[3]}" for r in ROBUST])
def test_robust_rule_ignores_planted_outliers(name, honest, bad, params):
    ups, good = make_updates(honest, bad)
    if name == "norm_clip":
        params = {
            **params,
            "reference": {k: torch.ones_like(v) if v.is_floating_point() else v for k, v in ups[0].items()},
        }
    before = clone(ups)
    out = get_rule(name)(ups, **params)
    assert_unchanged(before, ups)
    assert set(out) == set(ups[0]) and all(out[k].shape == ups[0][k].shape for k in out)
    assert out["steps"].dtype == torch.int64
    # Krum returns one honest update (not their mean); norm_clip bounds influence, does not remove it
    tol = {"krum": 0.06, "norm_clip": 0.05}.get(name, 0.03)
    assert max_dev(out, mean_of(good)) < tol, f"{name} moved by outliers: {max_dev(out, mean_of(good))}"


def test_coordinatewise_median_odd_and_even():
    vals = [3.0, -1.0, 7.0, 2.0, 100.0]
    ups = [{"x": torch.tensor([v, -v])} for v in vals]
    assert get_rule("median")(ups)["x"].tolist() == [3.0, -3.0]
    ups = ups[:4]  # 3, -1, 7, 2 -> middle pair 2, 3
    assert get_rule("median")(ups)["x"].tolist() == [2.5, -2.5]


def test_trimmed_mean_exact():
    n = 9
    ups = [{"x": torch.tensor([float(v), float(10 * v)])} for v in [5, 1, 9, 3, 7, 2, 8, 4, 6]]
    out = get_rule("trimmed_mean")(ups, trim=2)["x"]  # drop 1,2 and 8,9 -> mean(3..7) = 5
    torch.testing.assert_close(out, torch.tensor([5.0, 50.0]))
    ups[0] = {"x": torch.tensor([1000.0, 1000.0])}  # replace 5 by a huge value: it is now trimmed
    torch.testing.assert_close(
        get_rule("trimmed_mean")(ups, trim=1)["x"],
        torch.tensor([(2 + 3 + 4 + 6 + 7 + 8 + 9) / 7, 10 * (2 + 3 + 4 + 6 + 7 + 8 + 9) / 7]),
    )
    torch.testing.assert_close(get_rule("trimmed_mean")(ups, trim=0)["x"], get_rule("mean")(ups)["x"])
    assert n == len(ups)


def test_krum_scores_and_selection_exact():
    # points 0, 1, 2, 10 on a line, f = 0: each score sums the n - f - 2 = 2 nearest squared distances
    ups = [{"x": torch.tensor([v])} for v in [0.0, 1.0, 2.0, 10.0]]
    spec = _flat.validate(ups, "t")
    d = krum.pairwise_sq_distances(ups, spec)
    assert d[0].tolist() == [0.0, 1.0, 4.0, 100.0]
    assert krum.scores_from_distances(d, 0).tolist() == [5.0, 2.0, 5.0, 64.0 + 81.0]
    assert krum.select(ups, 0, 2) == [1, 0]  # tie 0/2 -> lower index
    assert get_rule("krum")(ups, f=0)["x"].tolist() == [1.0]
    # multi-Krum weights the selection: (1*w1 + 0*w0) / (w0 + w1)
    assert get_rule("multi_krum")(ups, [1.0, 3.0, 1.0, 1.0], f=0, m=2)["x"].tolist() == [0.75]


def test_krum_returns_one_honest_update_exactly():
    ups, good = make_updates(7, 2, seed=3)
    out = get_rule("krum")(ups, f=2)
    assert any(all(torch.equal(out[k], g[k]) for k in g) for g in good)
    chosen = krum.select(ups, 2, 7)
    assert sorted(chosen) == sorted(i for i, u in enumerate(ups) if float(u["w"][0, 0]) < 10)


def test_bulyan_exact():
    # f = 1, n = 7, theta = 5: Krum on the shrinking pool (n' - f - 2 neighbours, at least 1)
    # picks 2, then 1 (tie with 6: lower index), 6, 0 (tie with 7), and last, from {100, -100, 7}
    # where 100 and 7 are each other's nearest, 100 (tie: lower index). Scoring once (multi-Krum)
    # would keep 7 instead. Per coordinate the beta = 3 values closest to the median 2 of
    # {2, 1, 6, 0, 100} are 0, 1, 2: mean 1.0
    vals = [0.0, 100.0, 1.0, 2.0, -100.0, 6.0, 7.0]
    ups = [{"x": torch.tensor([v, -v])} for v in vals]
    assert bulyan.select(ups, 1, 5, _flat.validate(ups, "t")) == [3, 2, 5, 0, 1]
    assert krum.select(ups, 1, 5) == [3, 2, 5, 0, 6]
    torch.testing.assert_close(get_rule("bulyan")(ups, f=1)["x"], torch.tensor([1.0, -1.0]))
    # f = 0: theta = beta = n, Bulyan is the plain mean
    torch.testing.assert_close(get_rule("bulyan")(ups, f=0)["x"], get_rule("mean")(ups)["x"])
    assert bulyan.NAME == "bulyan"


@pytest.mark.parametrize(("theta", "beta"), [(5, 1), (5, 3), (8, 4), (11, 3), (7, 7)])
def test_bulyan_window_equals_brute_force_closest_to_median(theta, beta):
    x = torch.randn(theta, 3000, generator=torch.Generator().manual_seed(theta * beta)) ** 3  # skewed
    s = x.sort(0).values
    med = s[(theta - 1) // 2] if theta % 2 else (s[theta // 2 - 1] + s[theta // 2]) / 2
    idx = (s - med).abs().topk(beta, dim=0, largest=False).indices
    expect = s.gather(0, idx).double().mean(0)
    got = bulyan.closest_to_median_mean(list(s), beta)
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-5)


def test_norm_clip_bounds_influence():
    g = torch.Generator().manual_seed(1)
    ref = {"w": torch.randn(50, generator=g), "b": torch.randn(5, generator=g)}
    small = [{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in ref.items()} for _ in range(6)]
    attack = {k: v + 1e4 for k, v in ref.items()}
    rule = get_rule("norm_clip")
    with_attack = rule([*small, attack], reference=ref, max_norm=1.0)
    without = rule([*small, ref], reference=ref, max_norm=1.0)  # attacker replaced by a zero delta

    def dist(a, b):
        return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))

    assert dist(with_attack, without) <= 1.0 / 7 + 1e-5  # influence <= w_i * max_norm
    assert dist(with_attack, without) > 1.0 / 7 - 1e-3  # ... and the attacker was clipped, not dropped
    assert dist(with_attack, ref) <= 1.0 + 1e-5
    # nothing to clip: exactly the weighted mean
    torch.testing.assert_close(
        rule(small, [1, 2, 3, 4, 5, 6], reference=ref, max_norm=1.0)["w"],
        get_rule("mean")(small, [1, 2, 3, 4, 5, 6])["w"],
    )
    # no reference: the whole model's norm is clipped (3-4-12 triangle: norm 13 -> 1)
    out = rule([{"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([12.0])}], max_norm=1.0)
    torch.testing.assert_close(torch.cat([out["a"], out["b"]]), torch.tensor([3.0, 4.0, 12.0]) / 13)
    assert norm_clip.clip_factors([0.5, 4.0], 2.0) == [1.0, 0.5]


# ----------------------------------------------------------------------------------------- validation
DEFAULT_PARAMS = {"krum": {"f": 1}, "multi_krum": {"f": 1}, "bulyan": {"f": 1}, "norm_clip": {"max_norm": 1.0}}


def seven():
    return [{"x": torch.full((3,), float(i)), "y": torch.zeros(2)} for i in range(7)]


@pytest.mark.parametrize("name", ALL)
def test_every_rule_rejects_bad_input(name):
    rule, params = get_rule(name), DEFAULT_PARAMS.get(name, {})
    assert set(rule(seven(), **params)) == {"x", "y"}  # valid input works
    with pytest.raises(ValueError, match="empty"):
        rule([], **params)
    ups = seven()
    del ups[3]["y"]
    with pytest.raises(ValueError, match=r"update 3 has different tensor names.*missing: \['y'\]"):
        rule(ups, **params)
    ups = seven()
    ups[2]["x"] = torch.zeros(4)
    with pytest.raises(ValueError, match="shape mismatch for 'x': update 2"):
        rule(ups, **params)
    for bad in (float("nan"), float("inf"), -float("inf")):
        ups = seven()
        ups[5]["x"][1] = bad
        with pytest.raises(ValueError, match="update 5 tensor 'x' contains non-finite"):
            rule(ups, **params)
    for weights, msg in (
        ([1.0] * 6, "6 weights for 7"),
        ([1, 1, 1, -1, 1, 1, 1], "weight 3"),
        ([0.0] * 7, "sum to"),
        ([1, 1, 1, 1, 1, 1, float("nan")], "weight 6"),
    ):
        with pytest.raises(ValueError, match=msg):
            rule(seven(), weights, **params)
    with pytest.raises(ValueError, match="unknown parameter"):
        rule(seven(), **params, bogus=1)
    with pytest.raises(ValueError, match="list of state dicts"):
        rule(seven()[0], **params)


def test_mean_detects_nonfinite_even_with_zero_weight():
    ups = seven()
    ups[0]["x"][0] = float("inf")
    with pytest.raises(ValueError, match="update 0 tensor 'x' contains non-finite"):
        get_rule("mean")(ups, [0, 1, 1, 1, 1, 1, 1])


def test_parameter_validation():
    ups = seven()  # n = 7
    with pytest.raises(ValueError, match="'f' is required"):
        get_rule("krum")(ups)
    with pytest.raises(ValueError, match=r"n > 2f \+ 2.*n=7, f=3"):
        get_rule("krum")(ups, f=3)
    get_rule("krum")(ups, f=2)  # 7 > 6
    for f in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="f must be"):
            get_rule("multi_krum")(ups, f=f)
    with pytest.raises(ValueError, match="m=6 would select more than n - f = 5"):
        get_rule("multi_krum")(ups, f=2, m=6)
    with pytest.raises(ValueError, match="m must be >= 1"):
        get_rule("multi_krum")(ups, f=1, m=0)
    with pytest.raises(ValueError, match=r"n >= 4f \+ 3.*n=7, f=2"):
        get_rule("bulyan")(ups, f=2)
    for trim in (0.5, -0.1, float("nan"), -1, True, "0.1"):
        with pytest.raises(ValueError, match="trim"):
            get_rule("trimmed_mean")(ups, trim=trim)
    with pytest.raises(ValueError, match="leaves nothing"):
        get_rule("trimmed_mean")(ups, trim=4)
    get_rule("trimmed_mean")(ups, trim=3)  # 7 - 6 = 1 left: the median
    for max_norm in (0, -1.0, float("nan"), float("inf"), "1", None):
        with pytest.raises(ValueError, match="max_norm"):
            get_rule("norm_clip")(ups, max_norm=max_norm)
    with pytest.raises(ValueError, match="reference tensor names differ"):
        get_rule("norm_clip")(ups, max_norm=1.0, reference={"x": torch.zeros(3)})
    with pytest.raises(ValueError, match="reference 'x' is \\(2,\\)"):
        get_rule("norm_clip")(ups, max_norm=1.0, reference={"x": torch.zeros(2), "y": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unknown parameter.*accepted: none"):
        get_rule("median")(ups, trim=1)


# ----------------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("n", range(1, 17))
def test_sorting_network_sorts_every_01_input(n):
    """0-1 principle: a comparator network that sorts all 2^n binary inputs sorts everything."""
    cols = torch.arange(1 << n)
    blk = torch.stack([((cols >> b) & 1).float() for b in range(n)])
    s = torch.stack(_flat.sort_rows(list(blk.clone())))  # overwrites its input: pass copies
    assert bool((s[1:] >= s[:-1]).all())
    assert torch.equal(s.sum(0), blk.sum(0))


@pytest.mark.parametrize("n", [2, 9, 16, 33, 64, 65, 80])
def test_sort_rows_matches_torch_sort(n):
    x = torch.randn(n, 1000, generator=torch.Generator().manual_seed(n))
    assert torch.equal(torch.stack(_flat.sort_rows(list(x.clone()))), x.sort(0).values)


def test_sort_rows_carries_nonfinite_values_to_the_extreme_rows():
    """What the coordinate-wise rules rely on to detect NaN/Inf cheaply, for every input position."""
    for n in (2, 5, 16, 70):
        for pos in range(n):
            for bad in (float("nan"), float("inf"), -float("inf")):
                x = torch.randn(n, 3)
                x[pos, 1] = bad
                s = _flat.sort_rows(list(x))
                assert not (bool(torch.isfinite(s[0]).all()) and bool(torch.isfinite(s[-1]).all())), (n, pos, bad)


def test_duplicates_and_ties_are_fine():
    ups = [{"x": torch.ones(4)} for _ in range(9)]
    for name in ALL:
        out = get_rule(name)(
            ups,
            **{"krum": {"f": 2}, "multi_krum": {"f": 2}, "bulyan": {"f": 1}, "norm_clip": {"max_norm": 5.0}}.get(
                name, {}
            ),
        )
        assert out["x"].tolist() == [1.0] * 4, name


def test_many_rules_on_many_shapes_agree_with_float64_references():
    g = torch.Generator().manual_seed(7)
    ups = [{"a": torch.randn(4, 3, generator=g), "c": torch.randn(5000, generator=g)} for _ in range(11)]
    X = torch.stack([torch.cat([u["a"].reshape(-1), u["c"]]) for u in ups]).double()
    med = X.median(0).values  # odd n: the middle value
    got = get_rule("median")(ups)
    torch.testing.assert_close(torch.cat([got["a"].reshape(-1), got["c"]]).double(), med)
    s = X.sort(0).values
    got = get_rule("trimmed_mean")(ups, trim=3)
    torch.testing.assert_close(torch.cat([got["a"].reshape(-1), got["c"]]).double(), s[3:8].mean(0), rtol=0, atol=1e-6)
    assert list(itertools.islice(_flat.sorting_network(4), 3)) == [(0, 1), (2, 3), (0, 2)]
