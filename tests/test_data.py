"""Local data loading, partitioning and validation (peers.data)."""

import numpy as np
import pytest

from peers.data import (
    DataError,
    LocalData,
    digits_shards,
    load_local_data,
    partition_dirichlet,
    partition_iid,
    write_npz_shards,
)

DIGITS_N = 1797


def test_partition_iid_covers_each_index_once():
    parts = partition_iid(103, 4, seed=1)
    assert len(parts) == 4
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(103))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [p.tolist() for p in parts] == [p.tolist() for p in partition_iid(103, 4, seed=1)]
    assert [p.tolist() for p in parts] != [p.tolist() for p in partition_iid(103, 4, seed=2)]


def test_partition_dirichlet_min_size_and_cover():
    labels = np.repeat(np.arange(5), 40)
    parts = partition_dirichlet(labels, 4, alpha=0.3, seed=0, min_size=5)
    assert all(len(p) >= 5 for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    with pytest.raises(DataError):
        partition_dirichlet(labels, 50, alpha=0.3, seed=0, min_size=5)


def test_digits_iid_shards_cover_all_samples_once():
    X_all = np.concatenate([X for X, _ in digits_shards(3, seed=0)])
    assert X_all.shape == (DIGITS_N, 64)
    assert X_all.dtype == np.float32 and X_all.min() >= 0 and X_all.max() <= 1
    # every row appears exactly once: compare as a multiset against the full dataset
    from sklearn.datasets import load_digits

    ref = (load_digits().data / 16.0).astype(np.float32)
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert key(X_all) == key(ref)
    ys = [y for _, y in digits_shards(3, seed=0)]
    assert sum(len(y) for y in ys) == DIGITS_N
    # each iid shard holds every class
    assert all(len(np.unique(y)) == 10 for y in ys)


def test_digits_dirichlet_shards_are_non_iid_and_deterministic():
    shards = digits_shards(4, seed=0, partition="dirichlet:0.3")
    hists = [np.bincount(y, minlength=10) / len(y) for _, y in shards]
    assert sum(len(y) for _, y in shards) == DIGITS_N
    # label distributions differ substantially between shards (total variation distance)
    tv = max(0.5 * np.abs(hists[i] - hists[j]).sum() for i in range(4) for j in range(i + 1, 4))
    assert tv > 0.3
    iid = [np.bincount(y, minlength=10) / len(y) for _, y in digits_shards(4, seed=0)]
    tv_iid = max(0.5 * np.abs(iid[i] - iid[j]).sum() for i in range(4) for j in range(i + 1, 4))
    assert tv > 2 * tv_iid
    again = digits_shards(4, seed=0, partition="dirichlet:0.3")
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(shards, again))


def test_load_digits_spec_split():
    d = load_local_data("digits:1/3", eval_fraction=0.25, seed=0)
    assert isinstance(d, LocalData)
    assert d.num_features == 64 and d.num_classes == 10
    assert d.X_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.samples == len(d.y_train)
    assert d.samples + len(d.y_eval) == 599
    assert abs(len(d.y_eval) - 0.25 * 599) <= 10
    assert set(np.unique(d.y_eval)) == set(range(10))  # stratified
    d2 = load_local_data("digits:1/3", eval_fraction=0.25, seed=0)
    assert np.array_equal(d.y_train, d2.y_train) and np.array_equal(d.X_eval, d2.X_eval)
    assert load_local_data("digits:0/2:dirichlet:0.5").num_classes == 10


def test_npz_round_trip(tmp_path):
    paths = write_npz_shards(tmp_path / "shards", 3, seed=0)
    assert [p.name for p in paths] == ["shard-0.npz", "shard-1.npz", "shard-2.npz"]
    X, y = digits_shards(3, seed=0)[1]
    d = load_local_data(str(paths[1]), eval_fraction=0.2, seed=0)
    assert d.samples + len(d.y_eval) == len(y)
    assert d.num_features == 64
    got = np.concatenate([d.X_train, d.X_eval])
    assert sorted(map(bytes, got)) == sorted(map(bytes, X))


def test_npz_pre_split(tmp_path):
    p = tmp_path / "pre.npz"
    rng = np.random.default_rng(0)
    np.savez(p, X=rng.random((20, 3)), y=np.arange(20) % 3, X_eval=rng.random((5, 3)), y_eval=np.array([0, 1, 2, 3, 0]))
    d = load_local_data(str(p))
    assert d.samples == 20 and len(d.y_eval) == 5
    assert d.num_classes == 4  # max label over train and eval + 1
    assert d.X_eval.dtype == np.float32


def test_csv_round_trip(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("label,a,b\n" + "".join(f"{i % 2},{i},{i * 0.5}\n" for i in range(10)))
    d = load_local_data(str(p), eval_fraction=0.2, seed=0)
    assert d.num_features == 2 and d.num_classes == 2
    assert d.samples == 8 and len(d.y_eval) == 2
    X = np.concatenate([d.X_train, d.X_eval])
    y = np.concatenate([d.y_train, d.y_eval])
    assert np.array_equal(y, X[:, 0].astype(int) % 2)
    assert np.allclose(X[:, 1], X[:, 0] * 0.5)
    # without a "label" column the last column is the label
    q = tmp_path / "e.csv"
    q.write_text("x,target\n1.5,2\n2.5,0\n3.5,1\n")
    e = load_local_data(str(q), eval_fraction=0.0)
    assert e.num_classes == 3 and e.num_features == 1 and len(e.y_eval) == 0
    assert sorted(zip(e.X_train[:, 0].tolist(), e.y_train.tolist())) == [(1.5, 2), (2.5, 0), (3.5, 1)]


def _npz(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return str(p)


@pytest.mark.parametrize(
    "make_spec, match",
    [
        (lambda t: str(t / "nope.npz"), "not found"),
        (lambda t: str(t / "nope.csv"), "not found"),
        (lambda t: (t / "x.txt").write_text("1,2\n") and str(t / "x.txt"), "unknown data format"),
        (lambda t: _npz(t, X=np.zeros((4, 2))), "missing array"),
        (lambda t: _npz(t, X=np.zeros(4), y=np.zeros(4, int)), "2-D"),
        (lambda t: _npz(t, X=np.zeros((4, 2)), y=np.zeros(3, int)), "labels"),
        (lambda t: _npz(t, X=np.array([[0.0, np.nan], [1, 2]]), y=np.array([0, 1])), "NaN"),
        (lambda t: _npz(t, X=np.zeros((2, 2)), y=np.array([0, -1])), "non-negative"),
        (lambda t: _npz(t, X=np.zeros((2, 2)), y=np.array([0.0, 1.5])), "non-negative integers"),
        (lambda t: _npz(t, X=np.zeros((0, 2)), y=np.zeros(0, int)), "empty"),
        (lambda t: _npz(t, X=np.zeros((2, 2)), y=np.array([0, 1]), X_eval=np.zeros((1, 2))), "together"),
        (lambda t: (t / "e.csv").write_text("a,label\n") and str(t / "e.csv"), "empty"),
        (lambda t: (t / "n.csv").write_text("a,label\nfoo,1\n") and str(t / "n.csv"), "non-numeric"),
        (lambda t: (t / "m.csv").write_text("a,label\nnan,1\n2,0\n") and str(t / "m.csv"), "NaN"),
        (lambda t: (t / "l.csv").write_text("a,label\n1,0.5\n2,0\n") and str(t / "l.csv"), "integers"),
        (lambda t: "digits:3/3", "0 <= I < N"),
        (lambda t: "digits:0", "bad digits spec"),
        (lambda t: "digits:0/2:zipf", "unknown partition"),
        (lambda t: "digits:0/2:dirichlet:-1", "alpha"),
        (lambda t: "", "bad data spec"),
    ],
)
def test_data_errors(tmp_path, make_spec, match):
    with pytest.raises(DataError, match=match):
        load_local_data(make_spec(tmp_path))


def test_num_classes_too_small():
    with pytest.raises(DataError, match="num_classes"):
        load_local_data("digits:0/2", num_classes=5)
