"""Shared helpers for the aggregation rules: input validation, weights, parameters, and the
"virtual [n, P] matrix" view of a list of state dicts.

Every rule sees its input as ``n`` state dicts with the same tensor names and shapes. Viewed
flat, that is an ``[n, P]`` matrix (``P`` = total parameter count, tensors in the order of
``updates[0]``).

The rules never materialise that matrix: ``column_rows`` yields it a few thousand coordinates
at a time (n row copies of c values, ~1 MB in all, not ``n * P * 4``), which ``sort_rows``
sorts elementwise with a sorting network of ``torch.minimum``/``torch.maximum`` while they sit
in cache.

Each tensor is aggregated in its ``compute_dtype``: float32 for float32 and narrower floats,
float64 for float64 and for integer and boolean tensors, so no rule loses a tensor's precision
beyond its own averaging.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: coordinates per column block; 16384 x 16 models x 4 B = 1 MiB, measured fastest on CPU
BLOCK_COLUMNS = 16384


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    numel: int


@dataclass(frozen=True)
class Spec:
    """Layout of the flat view: one ``Entry`` per tensor, in order; ``size`` = P."""

    entries: tuple[Entry, ...]
    size: int
    device: torch.device

    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def validate(updates: Sequence[Mapping[str, Tensor]], rule: str) -> Spec:
    """Check ``updates`` is a non-empty list of state dicts with identical names and shapes,
    real numeric tensors on one device; return the flat layout. Raises ``ValueError``."""
    if isinstance(updates, Mapping) or not isinstance(updates, Sequence):
        raise ValueError(f"{rule}: updates must be a list of state dicts, got {type(updates).__name__}")
    if len(updates) == 0:
        raise ValueError(f"{rule}: no updates to aggregate (empty list)")
    first = updates[0]
    for i, u in enumerate(updates):
        if not isinstance(u, Mapping):
            raise ValueError(f"{rule}: update {i} is {type(u).__name__}, not a dict of tensors")
        if len(u) == 0:
            raise ValueError(f"{rule}: update {i} is an empty state dict")
    entries = []
    offset = 0
    for name, t in first.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{rule}: update 0 tensor {name!r} is {type(t).__name__}, not a Tensor")
        if t.is_complex():
            raise ValueError(f"{rule}: tensor {name!r} is complex ({t.dtype}); only real tensors are supported")
        entries.append(Entry(name, tuple(t.shape), t.dtype, offset, t.numel()))
        offset += t.numel()
    device = first[entries[0].name].device
    names = set(first)
    for i, u in enumerate(updates[1:], start=1):
        if set(u) != names:
            missing = sorted(names - set(u))
            extra = sorted(set(u) - names)
            raise ValueError(
                f"{rule}: update {i} has different tensor names than update 0 "
                f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})"
            )
        for e in entries:
            t = u[e.name]
            if not isinstance(t, Tensor):
                raise ValueError(f"{rule}: update {i} tensor {e.name!r} is {type(t).__name__}, not a Tensor")
            if tuple(t.shape) != e.shape:
                raise ValueError(
                    f"{rule}: shape mismatch for {e.name!r}: update {i} has {tuple(t.shape)}, update 0 has {e.shape}"
                )
            if t.is_complex():
                raise ValueError(f"{rule}: update {i} tensor {e.name!r} is complex ({t.dtype})")
            if t.device != device:
                raise ValueError(f"{rule}: update {i} tensor {e.name!r} is on {t.device}, update 0 on {device}")
    return Spec(tuple(entries), offset, device)


def normalise_weights(weights: Sequence[float] | None, n: int, rule: str) -> list[float]:
    """``None`` -> uniform; else ``n`` finite non-negative numbers with a positive sum, renormalised."""
    if weights is None:
        return [1.0 / n] * n
    if isinstance(weights, Tensor):
        weights = weights.detach().to("cpu", torch.float64).reshape(-1).tolist()
    try:
        ws = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ValueError(f"{rule}: weights must be a list of numbers") from None
    if len(ws) != n:
        raise ValueError(f"{rule}: got {len(ws)} weights for {n} updates")
    for i, w in enumerate(ws):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{rule}: weight {i} is {w}; weights must be finite and >= 0")
    total = math.fsum(ws)
    if total <= 0:
        raise ValueError(f"{rule}: weights sum to {total}; at least one must be positive")
    return [w / total for w in ws]


def take_params(params: Mapping[str, object], allowed: Mapping[str, object], rule: str) -> dict[str, object]:
    """Reject unknown parameter names; fill defaults. A default of ``REQUIRED`` must be given."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"{rule}: unknown parameter(s) {unknown}; accepted: {accepted}")
    out = {}
    for key, default in allowed.items():
        if key in params:
            out[key] = params[key]
        elif default is REQUIRED:
            raise ValueError(f"{rule}: parameter {key!r} is required")
        else:
            out[key] = default
    return out


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


def as_count(value: object, name: str, rule: str, minimum: int = 0) -> int:
    """An int (not a bool, not a float) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{rule}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{rule}: {name} must be >= {minimum}, got {value}")
    return value


def raise_nonfinite(updates: Sequence[Mapping[str, Tensor]], spec: Spec, rule: str, what: str = "") -> None:
    """Name the first update/tensor holding NaN or Inf; called once a cheap check has failed."""
    for i, u in enumerate(updates):
        for e in spec.entries:
            t = u[e.name]
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{rule}: update {i} tensor {e.name!r} contains non-finite values (NaN or Inf)")
    raise ValueError(f"{rule}: {what or 'result is not finite'} (inputs are finite: overflow?)")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor of ``dtype`` is aggregated in: float32 for float32, float16 and
    bfloat16 (exact conversions, float32's speed); float64 for float64 and for integers and
    booleans (exact up to 2**53, where float32 would turn int64 10**12 + 1 into 999999995904)."""
    if dtype.is_floating_point and dtype.itemsize <= 4:
        return torch.float32
    return torch.float64


def cast_back(t: Tensor, dtype: torch.dtype) -> Tensor:
    """Aggregated float values back to a tensor's own dtype (integers are rounded)."""
    if t.dtype == dtype:
        return t
    if dtype.is_floating_point:
        return t.to(dtype)
    if dtype == torch.bool:
        return t >= 0.5
    return t.round().to(dtype)


def _block_size(spec: Spec) -> int:
    return BLOCK_COLUMNS if spec.device.type == "cpu" else 64 * BLOCK_COLUMNS


def column_rows(
    updates: Sequence[Mapping[str, Tensor]],
    spec: Spec,
    rows: Sequence[int] | None = None,
    block: int | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[Entry, int, list[Tensor]]]:
    """Yield ``(entry, start, parts)``: ``parts`` holds, for each update in ``rows`` (default:
    all), a fresh contiguous ``[c]`` copy of values start..start+c of ``entry``'s tensor, in
    ``dtype`` (default: the tensor's ``compute_dtype``).
    Every op stays below torch's intra-op parallelism grain (32768 elements) on CPU: on a busy
    machine, thousands of medium-sized 2-thread ops stall on OpenMP barriers (measured ~20x
    slower), while these single-threaded, in-cache ops do not."""
    chosen = [updates[i] for i in rows] if rows is not None else list(updates)
    block = block or _block_size(spec)
    for e in spec.entries:
        to = dtype or compute_dtype(e.dtype)
        flats = [u[e.name].detach().reshape(-1) for u in chosen]
        for a in range(0, e.numel, block):
            yield e, a, [f[a : a + block].to(to, copy=True) for f in flats]


@functools.cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort comparators for any ``n`` (Knuth, TAOCP 5.2.2, alg. M):
    n=16 -> 63 compare-exchanges. Checked exhaustively by the 0-1 principle in the tests."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


#: up to this many rows, sort with the network (2 elementwise ops per comparator, all in cache:
#: ~5x faster than torch.sort along the short dimension on CPU); beyond it, torch.sort
NETWORK_MAX_ROWS = 64


def sort_rows(rows: list[Tensor]) -> list[Tensor]:
    """Sort equal-length 1-D tensors elementwise: result[0] holds each coordinate's minimum, ...,
    result[-1] its maximum. Overwrites the given tensors (pass scratch copies). NaN propagates
    through ``torch.minimum``/``maximum`` and reaches both result[0] and result[-1]; +-Inf sort
    to the ends: so checking the two extreme rows finds any non-finite input."""
    m = len(rows)
    if m > NETWORK_MAX_ROWS:
        return list(torch.stack(rows).sort(dim=0).values.unbind(0))
    rows = list(rows)
    spare = torch.empty_like(rows[0])
    for i, j in sorting_network(m):
        torch.minimum(rows[i], rows[j], out=spare)
        torch.maximum(rows[i], rows[j], out=rows[j])
        rows[i], spare = spare, rows[i]
    return rows


def coordinatewise(
    updates: Sequence[Mapping[str, Tensor]],
    spec: Spec,
    fn,
    rule: str,
    rows: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Apply ``fn(s) -> [c]`` to every column block, ``s`` the list of its ``m`` rows sorted
    elementwise (``s[0]`` minima ... ``s[-1]`` maxima) in the tensor's ``compute_dtype``;
    raises on non-finite inputs."""
    out = {e.name: torch.empty(e.numel, dtype=compute_dtype(e.dtype), device=spec.device) for e in spec.entries}
    for e, start, parts in column_rows(updates, spec, rows):
        s = sort_rows(parts)
        if not (bool(torch.isfinite(s[0]).all()) and bool(torch.isfinite(s[-1]).all())):
            raise_nonfinite(updates, spec, rule)
        out[e.name][start : start + s[0].numel()] = fn(s)
    return {e.name: cast_back(out[e.name].view(e.shape), e.dtype) for e in spec.entries}


def sorted_median(s: Sequence[Tensor]) -> Tensor:
    """Median of elementwise-sorted rows ``s``; mean of the middle pair if there are an even number."""
    m = len(s)
    if m % 2:
        return s[m // 2]
    return torch.add(s[m // 2 - 1] * 0.5, s[m // 2], alpha=0.5)  # no overflow near float32 max


def sorted_mean(s: Sequence[Tensor]) -> Tensor:
    """Elementwise mean of a list of rows, one in-cache add per row."""
    acc = s[0].clone()
    for r in s[1:]:
        acc.add_(r)
    return acc.div_(len(s))
