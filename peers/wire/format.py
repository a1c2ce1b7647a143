"""Model weights on the wire: safetensors bytes (never pickle), validated on arrival."""

from __future__ import annotations

import hashlib
import math

import torch

from peers.wire.tensorbytes import dump, parse

Spec = dict[str, tuple[tuple[int, ...], str]]


class WeightsRejected(Exception):
    """A received payload that must not be averaged in; ``reason`` is human-readable."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _itemsize(dtype_name: str) -> int:
    dtype = getattr(torch, dtype_name, None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else 8


def pack_state(state: dict[str, torch.Tensor]) -> bytes:
    """Serialize a state dict to safetensors bytes (one copy of the tensors' memory)."""
    return dump(state)


def all_finite(t: torch.Tensor) -> bool:
    """A finite sum proves every value finite (NaN or inf make it non-finite); only a sum that
    overflows from finite values needs the exact, ~10x slower, elementwise check."""
    if not (t.is_floating_point() or t.is_complex()):
        return True
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe(state: dict[str, torch.Tensor]) -> Spec:
    """Name -> (shape, dtype string) — what a receiver expects of a neighbour's payload."""
    return {k: (tuple(v.shape), _dtype_name(v.dtype)) for k, v in state.items()}


HEADER_SLACK_BYTES = 64 << 10  # a payload's JSON header and metadata, plus per tensor below
HEADER_BYTES_PER_TENSOR = 512  # its name, shape and dtype in the header and the layout


def payload_bound(spec: Spec) -> int:
    """The most bytes an honest payload for a model of this spec can take in any of the job's
    encodings (the widest is top-k at fraction 1: every value at least as float32, plus an
    int32 index): what a receiver agrees to hold for one transfer. The plan's own limit is for
    every model the platform allows, so a neighbour could otherwise make it hold far more."""
    data = sum(math.prod(shape) * (max(_itemsize(dtype), 4) + 4) for shape, dtype in spec.values())
    return data + HEADER_SLACK_BYTES + HEADER_BYTES_PER_TENSOR * len(spec)


def unpack_state(data: bytes | bytearray, expected: Spec, max_bytes: int) -> dict[str, torch.Tensor]:
    """Parse and validate a payload against ``expected``; raises ``WeightsRejected``.

    The tensors of a ``bytearray`` payload (what the reassembler hands over) view its memory."""
    if not isinstance(data, (bytes, bytearray)):
        raise WeightsRejected(f"payload is {type(data).__name__}, not bytes")
    if len(data) > max_bytes:
        raise WeightsRejected(f"payload too large: {len(data)} > {max_bytes} bytes")
    try:
        state, _ = parse(data)
    except ValueError as exc:
        raise WeightsRejected(f"unparseable safetensors payload: {exc}") from None
    check_state(state, expected)
    return state


def check_state(state: dict[str, torch.Tensor], expected: Spec) -> None:
    """Names, dtypes, shapes and finiteness of a state against ``expected``; raises ``WeightsRejected``."""
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WeightsRejected(f"missing tensors: {', '.join(missing)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise WeightsRejected(f"unexpected tensors: {', '.join(extra)}")
    for name in sorted(expected):
        shape, dtype = expected[name]
        t = state[name]
        if _dtype_name(t.dtype) != dtype:
            raise WeightsRejected(f"wrong dtype for {name}: {_dtype_name(t.dtype)} != {dtype}")
        if tuple(t.shape) != tuple(shape):
            raise WeightsRejected(f"wrong shape for {name}: {tuple(t.shape)} != {tuple(shape)}")
        if not all_finite(t):
            raise WeightsRejected(f"non-finite values in {name}")
