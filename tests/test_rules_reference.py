"""Every aggregation rule (peers.rules) against a direct, obviously-correct reference written
here in float64 numpy on the [n, P] matrix of flattened updates, on random inputs (several
seeds, shapes, n and f); plus the precision cases: Krum on updates that are very close,
int64 values beyond float32's 24 bits, float64 kept float64, selections returned bit for bit."""

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

from peers.rules import _flat, get_rule, krum


# ----------------------------------------------------------------------------------------- references
def ref_mean(X, w):
    w = np.asarray(w, dtype=np.float64)
    return (w / w.sum()) @ X


def ref_median(X):
    return np.median(X, axis=0)


def ref_trimmed_mean(X, k):
    return np.sort(X, axis=0)[k : len(X) - k].mean(axis=0)


def ref_sq_distances(X):
    D = np.zeros((len(X), len(X)))
    for i, j in itertools.combinations(range(len(X)), 2):
        diff = X[i] - X[j]
        D[i, j] = D[j, i] = diff @ diff
    return D


def ref_krum_scores(D, f):
    """Sum of the n - f - 2 smallest distances to the others (at least one, as Flower)."""
    n = len(D)
    k = max(1, n - f - 2)
    return np.array([np.sort(np.delete(D[i], i))[:k].sum() for i in range(n)])


def ref_krum_order(X, f):
    return [int(i) for i in np.argsort(ref_krum_scores(ref_sq_distances(X), f), kind="stable")]


def ref_bulyan(X, f):
    """El Mhamdi et al. 2018: Krum picks one update, which leaves the pool, until theta = n - 2f
    are picked; then per coordinate the mean of the beta = theta - 2f values closest to the median."""
    D = ref_sq_distances(X)
    pool, chosen = list(range(len(X))), []
    while len(chosen) < len(X) - 2 * f:
        scores = ref_krum_scores(D[np.ix_(pool, pool)], f)
        chosen.append(pool.pop(int(np.argmin(scores))))
    S = X[chosen]
    beta = len(S) - 2 * f
    closest = np.argsort(np.abs(S - np.median(S, axis=0)), axis=0, kind="stable")[:beta]
    return np.take_along_axis(S, closest, axis=0).mean(axis=0)


def ref_norm_clip(X, w, max_norm, R=None):
    R = np.zeros(X.shape[1]) if R is None else R
    deltas = X - R
    norms = np.sqrt((deltas**2).sum(axis=1))
    scale = np.minimum(1.0, max_norm / norms)
    w = np.asarray(w, dtype=np.float64)
    return R + (w / w.sum() * scale) @ deltas


# ----------------------------------------------------------------------------------------- helpers
def matrix(states):
    names = list(states[0])
    return np.stack([np.concatenate([s[k].double().numpy().ravel() for k in names]) for s in states])


def vector(state, names):
    return np.concatenate([state[k].double().numpy().ravel() for k in names])


def random_updates(seed, n, shapes):
    """float32 updates around a common centre, each with its own spread (so Krum's scores differ)."""
    rng = np.random.default_rng(seed)
    centre = {k: rng.standard_normal(s) for k, s in shapes.items()}
    spreads = rng.uniform(0.2, 3.0, n)
    return [
        {
            k: torch.from_numpy(np.asarray(c + sp * rng.standard_normal(c.shape), dtype=np.float32))
            for k, c in centre.items()
        }
        for sp in spreads
    ]


SHAPES = [
    {"w": (7, 5), "b": (5,), "s": ()},
    {"big": (_flat.BLOCK_COLUMNS + 77,), "conv": (4, 3, 3, 3)},  # spans column blocks
]
NF = [(3, 0), (4, 0), (5, 1), (7, 1), (8, 1), (11, 2), (12, 2)]
CASES = [(seed, nf, (seed + i) % len(SHAPES)) for seed in range(3) for i, nf in enumerate(NF)]  # each n, f: both shapes
IDS = [f"seed{s}-n{n}-f{f}-shapes{k}" for s, (n, f), k in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    seed, (n, f), k = request.param
    ups = random_updates(seed, n, SHAPES[k])
    weights = list(np.random.default_rng(seed + 100).uniform(0.1, 5.0, n))
    return ups, weights, f


def check_float32(result, ups, expect):
    names = list(ups[0])
    assert all(result[k].dtype == torch.float32 and result[k].shape == ups[0][k].shape for k in names)
    np.testing.assert_allclose(vector(result, names), expect, rtol=1e-5, atol=2e-6)


# ----------------------------------------------------------------------------------------- rules on random inputs
def test_mean(case):
    ups, w, _ = case
    check_float32(get_rule("mean")(ups, w), ups, ref_mean(matrix(ups), w))
    check_float32(get_rule("mean")(ups), ups, ref_mean(matrix(ups), [1.0] * len(ups)))


def test_median(case):
    ups, w, _ = case
    check_float32(get_rule("median")(ups, w), ups, ref_median(matrix(ups)))


def test_trimmed_mean(case):
    ups, _, f = case
    for k in {0, f, (len(ups) - 1) // 2}:
        check_float32(get_rule("trimmed_mean")(ups, trim=k), ups, ref_trimmed_mean(matrix(ups), k))


def test_pairwise_distances(case):
    ups, _, _ = case
    d = krum.pairwise_sq_distances(ups, _flat.validate(ups, "t"))
    np.testing.assert_allclose(d.numpy(), ref_sq_distances(matrix(ups)), rtol=1e-12, atol=0)


def test_krum_returns_the_reference_pick(case):
    ups, w, f = case
    pick = ref_krum_order(matrix(ups), f)[0]
    assert krum.select(ups, f, 1) == [pick]
    out = get_rule("krum")(ups, w, f=f)
    assert all(torch.equal(out[k], ups[pick][k]) for k in ups[0])


def test_multi_krum(case):
    ups, w, f = case
    X, order = matrix(ups), ref_krum_order(matrix(ups), f)
    for m in {None, 1, max(1, len(ups) - f - 1)}:
        chosen = order[: len(ups) - f if m is None else m]
        assert krum.select(ups, f, len(chosen)) == chosen
        out = get_rule("multi_krum")(ups, w, f=f, **({} if m is None else {"m": m}))
        check_float32(out, ups, ref_mean(X[chosen], [w[i] for i in chosen]))


def test_bulyan(case):
    ups, w, f = case
    f = min(f, (len(ups) - 3) // 4)  # Bulyan needs n >= 4f + 3
    check_float32(get_rule("bulyan")(ups, w, f=f), ups, ref_bulyan(matrix(ups), f))


def test_norm_clip(case):
    ups, w, _ = case
    X = matrix(ups)
    centre = {k: torch.zeros_like(v) + 0.1 for k, v in ups[0].items()}
    R = vector(centre, list(ups[0]))
    for reference, origin in ((None, np.zeros(X.shape[1])), (centre, R)):
        max_norm = float(np.median(np.sqrt(((X - origin) ** 2).sum(axis=1))))  # about half get clipped
        params = {"max_norm": max_norm} if reference is None else {"max_norm": max_norm, "reference": reference}
        expect = ref_norm_clip(X, w, max_norm, None if reference is None else R)
        check_float32(get_rule("norm_clip")(ups, w, **params), ups, expect)


def test_norm_clip_norm_of_a_big_tensor_is_accurate():
    """torch's float32 norm of 1M values is off by 1e-5 (of 25M: 1e-3); the clip factor must not be."""
    big = torch.from_numpy(np.random.default_rng(5).standard_normal(1_000_000).astype(np.float32))
    exact = float(np.sqrt((big.numpy().astype(np.float64) ** 2).sum()))
    out = get_rule("norm_clip")([{"x": big}], max_norm=exact / 2)
    ratio = float(torch.linalg.vector_norm(out["x"].double()) / (exact / 2))
    assert abs(ratio - 1) < 1e-6


# ----------------------------------------------------------------------------------------- close updates (Krum)
@pytest.mark.parametrize("kind", ["l2 distance 1e-4", "every weight 1e-4 apart"])
def test_krum_distance_between_close_updates(kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1_000_000).astype(np.float32)
    step = rng.standard_normal(x.size)
    step *= 1e-4 / np.linalg.norm(step) if kind.startswith("l2") else 1e-4
    y = (x + step).astype(np.float32)
    ups = [{"a": torch.from_numpy(x)}, {"a": torch.from_numpy(y)}]
    d = krum.pairwise_sq_distances(ups, _flat.validate(ups, "t"))
    exact = np.sum((y.astype(np.float64) - x.astype(np.float64)) ** 2)
    assert abs(float(d[0, 1]) - exact) / exact < 1e-9
    assert float(d[1, 0]) == float(d[0, 1]) and float(d[0, 0]) == 0.0


def test_krum_picks_right_at_relative_spread_1e_6():
    """Five 1M-weight updates within 1e-6 of each other (relatively): the Gram expansion picked
    the wrong one for 2 of these 10 seeds."""
    base = np.random.default_rng(0).standard_normal(1_000_000, dtype=np.float32)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        ups = [
            {"a": torch.from_numpy(base * (1 + 1e-6 * rng.standard_normal(base.size, dtype=np.float32)))}
            for _ in range(5)
        ]
        assert krum.select(ups, 1, 1) == ref_krum_order(matrix(ups), 1)[:1], f"seed {seed}"


# ----------------------------------------------------------------------------------------- dtypes
ALL_PARAMS = {
    "mean": {},
    "median": {},
    "trimmed_mean": {"trim": 1},
    "krum": {"f": 1},
    "multi_krum": {"f": 1},
    "bulyan": {"f": 0},
    "norm_clip": {"max_norm": 1e30},
}


@pytest.mark.parametrize("name", sorted(ALL_PARAMS))
def test_int64_beyond_float32_is_averaged_exactly(name):
    """int64 10**12 + i, i < 5: in float32 every one of them, and so every average, was 999999995904."""
    ups = [{"n": torch.tensor([10**12 + i, -(10**12) - 3 * i]), "w": torch.tensor([float(i) ** 2])} for i in range(5)]
    params = ALL_PARAMS[name]
    chosen = list(range(5))  # symmetric values: the median, trimmed mean and Bulyan are the mean
    if name in ("krum", "multi_krum"):
        chosen = ref_krum_order(matrix(ups), params["f"])[: 1 if name == "krum" else 5 - params["f"]]
    expect = [round(Fraction(sum(int(ups[i]["n"][c]) for i in chosen), len(chosen))) for c in range(2)]
    out = get_rule(name)(ups, **params)
    assert out["n"].dtype == torch.int64 and out["n"].tolist() == expect


def reference_result(name, X, params):
    n = len(X)
    if name == "mean":
        return ref_mean(X, [1.0] * n)
    if name == "median":
        return ref_median(X)
    if name == "trimmed_mean":
        return ref_trimmed_mean(X, params["trim"])
    if name in ("krum", "multi_krum"):
        f = params["f"]
        chosen = ref_krum_order(X, f)[: 1 if name == "krum" else n - f]
        return ref_mean(X[chosen], [1.0] * len(chosen))
    if name == "bulyan":
        return ref_bulyan(X, params["f"])
    return ref_norm_clip(X, [1.0] * n, params["max_norm"])


def mixed_updates(n, seed):
    rng = np.random.default_rng(seed)
    return [
        {
            "f32": torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32)),
            "f64": torch.from_numpy(1.0 + 1e-12 * rng.standard_normal(40)),  # invisible in float32
            "f16": torch.from_numpy(rng.standard_normal(6).astype(np.float16)),
            "bf16": torch.from_numpy(rng.standard_normal(6).astype(np.float32)).bfloat16(),
            "i64": torch.from_numpy(rng.integers(-(10**12), 10**12, 8)),
            "i32": torch.from_numpy(rng.integers(-(2**31), 2**31 - 1, 3).astype(np.int32)),
            "u8": torch.from_numpy(rng.integers(0, 256, 5).astype(np.uint8)),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize("name", sorted(ALL_PARAMS))
@pytest.mark.parametrize("seed", range(3))
def test_each_tensor_keeps_the_precision_of_its_dtype(name, seed):
    """float64 stays float64 (1e-12 details survive), integers are averaged in float64 and
    rounded back, narrower floats are within their own rounding of the reference."""
    ups = mixed_updates(5 if name != "bulyan" else 7, seed)
    names = list(ups[0])
    X = matrix(ups)
    params = dict(ALL_PARAMS[name])
    if name == "norm_clip":  # clip about half of them
        params["max_norm"] = float(np.median(np.sqrt((X**2).sum(axis=1))))
    expect = reference_result(name, X, params)
    out = get_rule(name)(ups, **params)
    offset = 0
    for k in names:
        t, size = out[k], ups[0][k].numel()
        want = expect[offset : offset + size].reshape(ups[0][k].shape)
        offset += size
        assert t.dtype == ups[0][k].dtype, k
        got = t.double().numpy()
        if k == "f64":
            np.testing.assert_allclose(got, want, rtol=0, atol=4e-16, err_msg=k)
        elif not t.dtype.is_floating_point:
            assert np.all(np.abs(got - want) <= 0.5 + 1e-3), (k, got, want)  # rounded, in float64
        else:
            torch.testing.assert_close(t, torch.from_numpy(want).to(t.dtype), msg=k)


@pytest.mark.parametrize("seed", range(3))
def test_selection_rules_return_updates_bit_for_bit(seed):
    ups = mixed_updates(7, seed)
    for i, u in enumerate(ups):
        u["i64"] = torch.tensor([2**62 + i, -(2**62) - i])  # not representable in float64
        u["mask"] = torch.tensor([bool(i % 2), True])
    pick = ref_krum_order(matrix(ups), 2)[0]
    for out in (get_rule("krum")(ups, f=2), get_rule("multi_krum")(ups, f=2, m=1)):
        for k, v in ups[pick].items():
            assert out[k].dtype == v.dtype and torch.equal(out[k], v), k
            assert out[k].data_ptr() != v.data_ptr()  # a copy, not the caller's tensor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64])
def test_median_of_an_odd_number_picks_values_exactly(dtype):
    rng = np.random.default_rng(3)
    if dtype == torch.int64:
        ups = [{"x": torch.from_numpy(rng.integers(-(2**53), 2**53, 1000))} for _ in range(9)]
    else:
        ups = [{"x": torch.from_numpy(rng.standard_normal(1000) * 1e3).to(dtype)} for _ in range(9)]
    out = get_rule("median")(ups)["x"]
    assert out.dtype == dtype
    assert np.array_equal(out.double().numpy(), ref_median(matrix(ups)))
