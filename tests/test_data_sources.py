"""Local data beyond npz/csv: image folders, FedProx Synthetic, label-shard and quantity skew."""

import numpy as np
import pytest
from PIL import Image

from peers.data import DataError, digits_shards, load_local_data, partition_label_shards, partition_quantity
from peers.synthetic import synthetic_federated


def test_image_folder_per_class(tmp_path):
    rng = np.random.default_rng(0)
    for name, colour in (("cats", 0), ("dogs", 2)):
        (tmp_path / name).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 60, (20, 24, 3), dtype=np.uint8)
            pixels[..., colour] = 250
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dogs" / "notes.txt").write_text("ignored")
    data = load_local_data(str(tmp_path))
    assert data.input_shape == (3, 32, 32) and data.num_features == 3 * 32 * 32
    assert data.num_classes == 2 and data.samples + len(data.y_eval) == 12
    assert data.X_train.min() >= 0.0 and data.X_train.max() <= 1.0
    red = data.X_train[data.y_train == 0].reshape(-1, 3, 32, 32)[:, 0].mean()
    assert red > 0.9  # channel-first layout kept the colours where they were


def test_broken_image_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        load_local_data(str(tmp_path))


def test_synthetic_devices_differ_and_are_deterministic():
    shards = synthetic_federated(1.0, 1.0, 6, seed=3)
    again = synthetic_federated(1.0, 1.0, 6, seed=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(shards, again))
    assert all(X.shape[1] == 60 and X.dtype == np.float32 for X, _ in shards)
    means = np.array([X.mean(axis=0) for X, _ in shards])
    assert np.linalg.norm(means[0] - means[1]) > 0.5  # beta > 0: devices' inputs differ
    data = load_local_data("synthetic:1,1:2/6", seed=3)
    assert data.num_features == 60 and data.num_classes == 10
    with pytest.raises(DataError):
        load_local_data("synthetic:1:2/6")


def test_label_shards_give_each_peer_few_classes():
    _, y = zip(*digits_shards(10, partition="shards:2"))
    assert all(len(set(labels)) <= 4 for labels in y)
    labels = np.repeat(np.arange(10), 20)
    parts = partition_label_shards(labels, 5, 2, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))


def test_quantity_skew_keeps_every_sample_once_with_uneven_sizes():
    parts = partition_quantity(1000, 8, sigma=1.5, seed=1)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == 1000 and min(sizes) >= 5 and max(sizes) > 3 * min(sizes)
    assert len(np.unique(np.concatenate(parts))) == 1000
    with pytest.raises(DataError):
        partition_quantity(10, 8, sigma=1.0, seed=0)
