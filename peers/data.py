"""Local datasets for a peer: .npz / .csv files or shards of scikit-learn's bundled digits.

Spec strings accepted by :func:`load_local_data`:

* ``path/to/file.npz``: arrays ``X`` and ``y`` (optionally pre-split ``X_eval``/``y_eval``)
* ``path/to/file.csv``: header row, label column ``label`` (else the last column)
* ``path/to/folder``: one sub-folder of images per class (resized to 32x32 RGB)
* ``digits:I/N[:PARTITION]``: shard I (0-based) of N of scikit-learn's digits; PARTITION is
  ``iid``, ``dirichlet:ALPHA``, ``shards:K`` (K label-sorted shards per peer) or
  ``quantity:SIGMA`` (lognormal sample counts)
* ``synthetic:ALPHA,BETA:I/N``: device I of N of FedProx's Synthetic(alpha, beta)
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peers.images import ImageFolderError, load_image_folder

DIGITS_CLASSES = 10
_DIGITS_RE = re.compile(r"^digits:(\d+)/(\d+)(?::(.+))?$")
_SYNTHETIC_RE = re.compile(r"^synthetic:([0-9.]+),([0-9.]+):(\d+)/(\d+)$")
_SPLIT_SALT = 0x5EED  # separates the train/eval split stream from the partition stream


class DataError(ValueError):
    """Local data is missing, malformed or the spec is invalid."""


@dataclass
class LocalData:
    X_train: np.ndarray  # float32 (n, num_features)
    y_train: np.ndarray  # int64 (n,)
    X_eval: np.ndarray
    y_eval: np.ndarray
    num_features: int
    num_classes: int
    input_shape: tuple[int, ...] | None = None  # (C, H, W) for images, else None

    @property
    def samples(self) -> int:
        return len(self.y_train)


# ---------------------------------------------------------------- partitioners


def partition_iid(n: int, parts: int, seed: int) -> list[np.ndarray]:
    """Shuffle range(n) and split into `parts` near-equal sorted index arrays."""
    if parts < 1 or n < parts:
        raise DataError(f"cannot split {n} samples into {parts} parts")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, parts)]


def partition_dirichlet(
    labels, parts: int, alpha: float, seed: int, min_size: int = 5, max_attempts: int = 200
) -> list[np.ndarray]:
    """Label-skewed split: each class is spread over parts with Dirichlet(alpha) proportions.

    Resamples until every part holds >= min_size samples (at most `max_attempts` times).
    """
    labels = np.asarray(labels)
    if parts < 1:
        raise DataError(f"parts must be >= 1, got {parts}")
    if not alpha > 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    if len(labels) < parts * min_size:
        raise DataError(f"{len(labels)} samples cannot give {parts} parts of >= {min_size}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_attempts):
        buckets: list[list[np.ndarray]] = [[] for _ in range(parts)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(parts, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for b, chunk in zip(buckets, np.split(idx, cuts)):
                b.append(chunk)
        out = [np.sort(np.concatenate(b)).astype(np.int64) for b in buckets]
        if min(len(p) for p in out) >= min_size:
            return out
    raise DataError(
        f"dirichlet(alpha={alpha}) gave a part with < {min_size} samples "
        f"after {max_attempts} attempts; use fewer parts or a larger alpha"
    )


def partition_label_shards(labels, parts: int, shards_per_part: int, seed: int) -> list[np.ndarray]:
    """McMahan et al.'s pathological non-IID split: sort by label, cut into parts*K shards,
    give each part K random shards (so each part sees about K classes)."""
    labels = np.asarray(labels)
    total = parts * shards_per_part
    if parts < 1 or shards_per_part < 1 or len(labels) < total:
        raise DataError(f"cannot cut {len(labels)} samples into {parts} x {shards_per_part} shards")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, total)
    picks = rng.permutation(total).reshape(parts, shards_per_part)
    return [np.sort(np.concatenate([shards[j] for j in row])).astype(np.int64) for row in picks]


def partition_quantity(n: int, parts: int, sigma: float, seed: int, min_size: int = 5) -> list[np.ndarray]:
    """Quantity skew: IID samples, but part sizes proportional to lognormal(0, sigma) draws."""
    if parts < 1 or n < parts * min_size:
        raise DataError(f"cannot split {n} samples into {parts} parts of >= {min_size}")
    if not sigma > 0:
        raise DataError(f"quantity sigma must be > 0, got {sigma}")
    rng = np.random.default_rng(seed)
    share = rng.lognormal(0.0, sigma, parts)
    sizes = min_size + np.floor(share / share.sum() * (n - parts * min_size)).astype(int)
    sizes[np.argmax(sizes)] += n - sizes.sum()
    perm = rng.permutation(n)
    return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def _parse_partition(partition: str) -> tuple[str, float]:
    if partition == "iid":
        return "iid", 0.0
    for kind, check in (("shards", lambda v: v >= 1 and v == int(v)), ("quantity", lambda v: v > 0)):
        if partition.startswith(kind + ":"):
            try:
                value = float(partition.split(":", 1)[1])
            except ValueError:
                value = float("nan")
            if not np.isfinite(value) or not check(value):
                raise DataError(f"bad parameter in partition {partition!r}")
            return kind, value
    if partition.startswith("dirichlet:"):
        try:
            alpha = float(partition.split(":", 1)[1])
        except ValueError:
            alpha = float("nan")
        if not alpha > 0 or not np.isfinite(alpha):
            raise DataError(f"bad dirichlet alpha in partition {partition!r}")
        return "dirichlet", alpha
    raise DataError(f"unknown partition {partition!r}: use iid, dirichlet:ALPHA, shards:K or quantity:SIGMA")


# ---------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    X.setflags(write=False)
    y = d.target.astype(np.int64)
    y.setflags(write=False)
    return X, y


def digits_shards(parts: int, *, seed: int = 0, partition: str = "iid") -> list[tuple[np.ndarray, np.ndarray]]:
    """Split scikit-learn's digits (features in [0, 1]) into `parts` (X, y) shards."""
    kind, alpha = _parse_partition(partition)
    X, y = _digits()
    if kind == "iid":
        idx = partition_iid(len(y), parts, seed)
    elif kind == "shards":
        idx = partition_label_shards(y, parts, int(alpha), seed)
    elif kind == "quantity":
        idx = partition_quantity(len(y), parts, alpha, seed)
    else:
        idx = partition_dirichlet(y, parts, alpha, seed)
    return [(X[i].copy(), y[i].copy()) for i in idx]


def write_npz_shards(outdir, parts: int, *, seed: int = 0, partition: str = "iid") -> list[Path]:
    """Write digits shards to outdir/shard-0.npz ... (arrays X, y); return the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (X, y) in enumerate(digits_shards(parts, seed=seed, partition=partition)):
        path = outdir / f"shard-{i}.npz"
        np.savez(path, X=X, y=y)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- validation / split


def _check_features(X, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"{what}: features must be numeric, got dtype {X.dtype}")
    if X.ndim < 2:
        raise DataError(f"{what}: features must be 2-D (samples, features), got shape {X.shape}")
    if X.size == 0:
        raise DataError(f"{what}: empty data (shape {X.shape})")
    X = X.reshape(len(X), -1).astype(np.float32)
    if not np.isfinite(X).all():
        raise DataError(f"{what}: features contain NaN or infinite values")
    return X


def _check_labels(y, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what}: labels must be 1-D, got shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{what}: {n} feature rows but {len(y)} labels")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{what}: labels must be non-negative integers, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataError(f"{what}: labels must be non-negative integers (found non-integral values)")
    if (y < 0).any():
        raise DataError(f"{what}: labels must be non-negative integers (found {y.min()})")
    return y.astype(np.int64)


def _split(X, y, eval_fraction: float, seed: int):
    """Shuffled train/eval split; stratified when every class has >= 2 samples."""
    n = len(y)
    rng = np.random.default_rng((seed, _SPLIT_SALT))
    if eval_fraction == 0 or n < 2:
        perm = rng.permutation(n)
        return X[perm], y[perm], X[:0], y[:0]
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() >= 2:
        ev, tr = [], []
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            k = min(max(1, round(len(idx) * eval_fraction)), len(idx) - 1)
            ev.append(idx[:k])
            tr.append(idx[k:])
        tr_idx, ev_idx = rng.permutation(np.concatenate(tr)), rng.permutation(np.concatenate(ev))
    else:
        perm = rng.permutation(n)
        k = min(max(1, round(n * eval_fraction)), n - 1)
        ev_idx, tr_idx = perm[:k], perm[k:]
    return X[tr_idx], y[tr_idx], X[ev_idx], y[ev_idx]


# ---------------------------------------------------------------- file readers


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # corrupt zip, pickled objects, ...
        raise DataError(f"{path}: cannot read npz ({e})") from e
    missing = {"X", "y"} - arrays.keys()
    if missing:
        raise DataError(f"{path}: missing array(s) {sorted(missing)}; found {sorted(arrays)}")
    if ("X_eval" in arrays) != ("y_eval" in arrays):
        raise DataError(f"{path}: X_eval and y_eval must be given together")
    X = _check_features(arrays["X"], str(path))
    y = _check_labels(arrays["y"], len(X), str(path))
    if "X_eval" not in arrays:
        return X, y, None
    Xe = _check_features(arrays["X_eval"], f"{path} (X_eval)")
    ye = _check_labels(arrays["y_eval"], len(Xe), f"{path} (y_eval)")
    if Xe.shape[1] != X.shape[1]:
        raise DataError(f"{path}: X_eval has {Xe.shape[1]} features, X has {X.shape[1]}")
    return X, y, (Xe, ye)


def _read_csv(path: Path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise DataError(f"{path}: empty data (need a header row and at least one data row)")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DataError(f"{path}: need at least one feature column and a label column")
    names = [h.lower() for h in header]
    label_col = names.index("label") if "label" in names else len(header) - 1
    values = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {i} has {len(row)} fields, header has {len(header)}")
        try:
            values[i - 2] = [float(c) for c in row]
        except ValueError as e:
            raise DataError(f"{path}: line {i}: non-numeric value ({e})") from e
    X = _check_features(np.delete(values, label_col, axis=1), str(path))
    y = _check_labels(values[:, label_col], len(X), str(path))
    return X, y, None


# ---------------------------------------------------------------- entry point


def _load_digits_spec(spec: str, seed: int):
    m = _DIGITS_RE.match(spec)
    if not m:
        raise DataError(f"bad digits spec {spec!r}: expected digits:I/N[:iid|:dirichlet:ALPHA]")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise DataError(f"bad digits spec {spec!r}: need 0 <= I < N")
    X, y = digits_shards(n, seed=seed, partition=m.group(3) or "iid")[i]
    return X, y, None


def _load_synthetic_spec(spec: str, seed: int):
    from peers.synthetic import synthetic_federated

    m = _SYNTHETIC_RE.match(spec)
    if not m:
        raise DataError(f"bad synthetic spec {spec!r}: expected synthetic:ALPHA,BETA:I/N")
    alpha, beta, i, n = float(m.group(1)), float(m.group(2)), int(m.group(3)), int(m.group(4))
    if n < 1 or not 0 <= i < n:
        raise DataError(f"bad synthetic spec {spec!r}: need 0 <= I < N")
    X, y = synthetic_federated(alpha, beta, n, seed=seed)[i]
    return X, y, None


def load_local_data(
    spec: str, *, eval_fraction: float = 0.2, seed: int = 0, num_classes: int | None = None
) -> LocalData:
    """Load and validate a peer's local data, split into train/eval (see module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"bad data spec {spec!r}")
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    spec = spec.strip()
    input_shape = None
    if spec.startswith("digits:"):
        X, y, pre = _load_digits_spec(spec, seed)
        default_classes = DIGITS_CLASSES
        input_shape = (1, 8, 8)
    elif spec.startswith("synthetic:"):
        X, y, pre = _load_synthetic_spec(spec, seed)
        default_classes = 10
    elif Path(spec).expanduser().is_dir():
        try:
            X, y, _ = load_image_folder(Path(spec).expanduser())
        except ImageFolderError as exc:
            raise DataError(str(exc)) from None
        pre, default_classes, input_shape = None, None, (3, 32, 32)
    else:
        path = Path(spec).expanduser()
        ext = path.suffix.lower()
        if ext not in (".npz", ".csv"):
            raise DataError(f"{spec}: unknown data format {ext or '(no extension)'!r}; use .npz, .csv or digits:I/N")
        if not path.is_file():
            raise DataError(f"{spec}: file not found")
        X, y, pre = _read_npz(path) if ext == ".npz" else _read_csv(path)
        default_classes = None

    if pre is None:
        Xtr, ytr, Xev, yev = _split(X, y, eval_fraction, seed)
    else:
        Xtr, ytr, (Xev, yev) = X, y, pre

    needed = int(max(ytr.max(), yev.max() if len(yev) else 0)) + 1
    if num_classes is None:
        num_classes = max(needed, default_classes or 0)
    elif num_classes < needed:
        raise DataError(f"num_classes={num_classes} but labels go up to {needed - 1}")
    return LocalData(
        Xtr, ytr, Xev, yev, num_features=int(X.shape[1]), num_classes=int(num_classes), input_shape=input_shape
    )
