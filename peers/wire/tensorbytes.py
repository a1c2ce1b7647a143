"""safetensors bytes <-> tensors with one copy on the way out and none on the way in.

The format is safetensors' (an 8-byte little-endian header length, a JSON header of
``name -> {dtype, shape, data_offsets}`` plus optional ``__metadata__`` of str -> str, then
the raw little-endian data), so any safetensors reader takes what ``dump`` writes and
``parse`` takes what any safetensors writer writes. What differs from ``safetensors.torch``:

- ``dump`` writes the file in one ``b"".join`` of the tensors' own memory (safetensors'
  ``save`` copies every tensor twice more on the way);
- ``parse`` returns tensors that *view* the buffer (``torch.frombuffer``) when it is a
  writable ``bytearray`` (what the reassembler produces), instead of copying each tensor
  out: a 100M-parameter model costs its size once on arrival, not twice.

``parse`` is strict, because it reads bytes from the wire: the header must be a JSON object
of known dtypes and non-negative shapes whose byte ranges, taken in order of (start, end)
whatever the order of the keys, tile the data exactly without gaps or overlaps (what
safetensors' own reader enforces; an empty tensor may sit at any boundary), booleans must be
0 or 1, and any violation raises ``ValueError``; nothing is evaluated or unpickled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import torch

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_INT_DIGITS = 19  # every header number is a dimension or an offset below 2**63
MAX_RANK = 64  # dimensions per tensor (far above any model's; keeps a crafted shape cheap)

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
# safetensors' dtype order (its Rust enum); files list tensors by descending rank, then name
RANK = {
    code: i
    for i, code in enumerate(
        ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
    )
}
ITEMSIZE = {dtype: dtype.itemsize for dtype in DTYPES.values()}


def dump(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """safetensors bytes of ``tensors`` (moved to CPU, made contiguous) and string ``metadata``.

    Tensors are laid out as safetensors does (by its dtype order, wider first, then by name),
    so every tensor starts aligned to its element size and the output is byte-identical to
    ``safetensors.torch.save``."""
    flat = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        if t.dtype not in CODES:
            raise ValueError(f"dtype {t.dtype} of {name} has no safetensors code")
        flat[name] = t.detach().to("cpu").contiguous()
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("metadata must be str -> str")
        header["__metadata__"] = dict(metadata)
    buffers, offset = [], 0
    for name in sorted(flat, key=lambda n: (-RANK[CODES[flat[n].dtype]], n)):
        t = flat[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        if size:
            buffers.append(t.reshape(-1).view(torch.uint8).numpy().data)
        offset += size
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([struct.pack("<Q", len(head)), head, *buffers])


def parse(data: bytes | bytearray | memoryview) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors buffer; raises ``ValueError`` if malformed.

    With a ``bytearray`` the tensors share its memory (keep it unmodified); with ``bytes``
    (immutable, which tensors must not view) each tensor is copied out."""
    view = memoryview(data).cast("B")
    if len(view) < 8:
        raise ValueError("shorter than a safetensors header")
    (header_len,) = struct.unpack_from("<Q", view, 0)
    if header_len > min(MAX_HEADER_BYTES, len(view) - 8):
        raise ValueError(f"header length {header_len} does not fit a {len(view)}-byte buffer")
    try:
        header = json.loads(
            view[8 : 8 + header_len].tobytes(),
            parse_int=_header_int,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except HeaderNumberError as exc:
        raise ValueError(f"bad number in header: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("metadata must be str -> str")
    start = 8 + header_len
    # by (start, end), as safetensors: by start alone, an empty tensor at a non-empty one's
    # start would fail or pass depending on the order of the keys
    entries = sorted((_entry(name, info) for name, info in header.items()), key=lambda e: (e[3], e[4]))
    expected = 0
    for name, _, _, begin, end in entries:
        if begin != expected:
            raise ValueError(f"data of {name} starts at {begin}, expected {expected} (gap or overlap)")
        expected = end
    if start + expected != len(view):
        raise ValueError(f"tensor data covers {expected} bytes, buffer holds {len(view) - start}")
    shared = isinstance(data, bytearray)
    tensors = {}
    for name, dtype, shape, begin, end in entries:
        tensors[name] = _tensor(data if shared else view, dtype, shape, start + begin, end - begin, shared)
    return tensors, metadata


class HeaderNumberError(ValueError):
    """A number no safetensors header holds (raised while the JSON is read)."""


def _header_int(text: str) -> int:
    """JSON integers as the header may hold them: a huge one is refused before it is built
    (a shape of a thousand 4,000-digit numbers took 42 s of CPU to multiply out)."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise HeaderNumberError(f"integer of {len(text)} digits")
    return int(text)


def _no_float(text: str):
    raise HeaderNumberError(f"{text} (header numbers are integers)")


def _byte_count(name: str, shape: list[int], dtype: torch.dtype) -> int:
    """Bytes the shape takes, refusing shapes whose size overflows (torch would raise its own error)."""
    if len(shape) > MAX_RANK:
        raise ValueError(f"shape of {name!r} has {len(shape)} dimensions (at most {MAX_RANK})")
    size = ITEMSIZE[dtype]
    for dim in shape:
        size *= dim or 1  # a zero dimension empties the tensor, but the others must still fit
        if size >= 2**63:
            raise ValueError(f"shape of {name!r} is too large")
    return 0 if 0 in shape else size


def _entry(name: str, info) -> tuple[str, torch.dtype, tuple[int, ...], int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"bad header entry for {name!r}")
    dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"unsupported dtype {info['dtype']!r} for {name!r}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise ValueError(f"bad shape for {name!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise ValueError(f"bad data_offsets for {name!r}")
    begin, end = offsets
    if end < begin or end - begin != _byte_count(name, shape, dtype):
        raise ValueError(f"data_offsets of {name!r} do not match its shape and dtype")
    return name, dtype, tuple(shape), begin, end


def _tensor(buffer, dtype: torch.dtype, shape: tuple[int, ...], offset: int, nbytes: int, shared: bool) -> torch.Tensor:
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(buffer, dtype=torch.uint8, count=nbytes, offset=offset) if shared else None
    if raw is None or raw.data_ptr() % ITEMSIZE[dtype]:
        # read-only source, or a misaligned tensor (possible from other writers): copy it out
        raw = torch.frombuffer(bytearray(buffer[offset : offset + nbytes]), dtype=torch.uint8)
    if dtype == torch.bool and bool((raw > 1).any()):
        raise ValueError("boolean tensor holds values other than 0 and 1")
    return raw.view(dtype).reshape(shape)
