"""Model weights on the wire: safetensors bytes (never pickle), validated on arrival."""

from __future__ import annotations

import hashlib
import json
import struct

import torch
from safetensors.torch import load as _st_load, save as _st_save

Spec = dict[str, tuple[tuple[int, ...], str]]


class WeightsRejected(Exception):
    """A received payload that must not be averaged in; ``reason`` is human-readable."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def pack_state(state: dict[str, torch.Tensor]) -> bytes:
    """Serialize a state dict to safetensors bytes.

    For the usual single-dtype state the file is written directly (header + one join of the
    tensors' bytes, byte-identical to safetensors.torch.save, one copy instead of three);
    anything else goes through safetensors."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    dtypes = {v.dtype for v in tensors.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _ST_DTYPES or any(v.numel() == 0 for v in tensors.values()):
        # clone() also breaks storage sharing (tied/view tensors), which safetensors refuses.
        return _st_save({k: v.clone() for k, v in tensors.items()})
    kind = _ST_DTYPES[next(iter(dtypes))]
    header, buffers, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": kind, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        buffers.append(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        offset += size
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([struct.pack("<Q", len(head)), head, *buffers])


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


def unpack_state(data: bytes, expected: Spec, max_bytes: int) -> dict[str, torch.Tensor]:
    """Parse and validate a payload against ``expected``; raises ``WeightsRejected``."""
    if not isinstance(data, (bytes, bytearray)):
        raise WeightsRejected(f"payload is {type(data).__name__}, not bytes")
    if len(data) > max_bytes:
        raise WeightsRejected(f"payload too large: {len(data)} > {max_bytes} bytes")
    try:
        state = _st_load(bytes(data))
    except Exception:
        raise WeightsRejected("unparseable safetensors payload") from None
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

