"""Lossy (and lossless) compression of state dicts / model updates for the wire.

A compressor turns a state dict into ``(payload, meta)``: ``payload`` a flat dict of tensors,
``meta`` a dict of str -> str. That is exactly what safetensors stores (tensors + string
metadata, no pickle): ``to_bytes(payload, meta)`` / ``from_bytes(data)``. Decoding needs no
compressor state, so a receiver calls ``decompress(payload, meta)`` (module level), which reads
the spec from ``meta["compressor"]``; payloads from peers are untrusted and validated.

Payload keys carry a prefix per role so they never collide with tensor names:
``v/NAME`` values, ``s/NAME`` scale, ``z/NAME`` offset, ``i/NAME`` indices, ``r/NAME`` raw
(non-floating tensors, e.g. BatchNorm's ``num_batches_tracked``, always travel unchanged).

=============  ===========================================================================
spec           stated error bound (per element x, decoded x')
=============  ===========================================================================
none           exact
fp16           |x' - x| <= 2**-11 |x| + 2**-25 (relative ~4.9e-4); |x| must be <= 65504
bf16           |x' - x| <= 2**-8 |x| (relative ~3.9e-3), float32 range
int8           per-tensor symmetric: scale = max|x| / 127, |x' - x| <= scale / 2
int8:affine    per-tensor affine (uint8 + offset): scale = (max - min) / 255, |x' - x| <= scale / 2
topk:K         keeps ceil(K * numel) largest-|.| coordinates per tensor (0 < K <= 1) as float32
               values + int32 indices: exact on kept coordinates, others sent as 0, and the
               rest is carried over (error feedback): sum of decoded == sum of inputs - residual
=============  ===========================================================================

(the int8 bounds hold up to float32 rounding of the arithmetic, i.e. ~1e-7 * max|x|)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import torch
from torch import Tensor

from peers.wire.tensorbytes import dump, parse

Payload = dict[str, Tensor]
Meta = dict[str, str]

FP16_MAX = 65504.0


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in compression metadata")
    return dtype


def _check_state(state: Mapping[str, Tensor], who: str) -> None:
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{who}: expected a non-empty dict of tensors")
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, Tensor):
            raise ValueError(f"{who}: entry {name!r} is not a str -> Tensor pair")
        if t.is_complex():
            raise ValueError(f"{who}: tensor {name!r} is complex; not supported")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{who}: tensor {name!r} contains non-finite values (NaN or Inf)")


class Compressor:
    """Base class. Subclasses implement ``_encode`` / ``_decode`` for floating tensors."""

    spec = "none"
    #: human-readable error bound, see the module docstring
    error_bound = "exact"

    def compress(self, state: Mapping[str, Tensor]) -> tuple[Payload, Meta]:
        _check_state(state, self.spec)
        payload: Payload = {}
        layout = {}
        with torch.no_grad():
            for name, t in state.items():
                t = t.detach()
                layout[name] = [list(t.shape), _dtype_name(t.dtype)]
                if t.is_floating_point():
                    payload.update(self._encode(name, t))
                else:
                    payload[f"r/{name}"] = t.to("cpu").contiguous().clone()
        meta = {"compressor": self.spec, "layout": json.dumps(layout, separators=(",", ":"))}
        return payload, meta

    def decompress(self, payload: Mapping[str, Tensor], meta: Mapping[str, str]) -> dict[str, Tensor]:
        if meta.get("compressor") != self.spec:
            raise ValueError(f"payload was made by {meta.get('compressor')!r}, not {self.spec!r}")
        layout = _parse_layout(meta)
        expected: set[str] = set()
        out = {}
        for name, (shape, dtype_name) in layout.items():
            dtype = _dtype_from_name(dtype_name)
            if dtype.is_floating_point:
                keys = self._keys(name)
                t = self._decode(name, _take(payload, keys), tuple(shape))
            else:
                keys = [f"r/{name}"]
                t = _take(payload, keys)[keys[0]]
            expected.update(keys)
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"tensor {name!r} decoded to shape {tuple(t.shape)}, expected {tuple(shape)}")
            out[name] = t.to(dtype)
        extra = sorted(set(payload) - expected)
        if extra:
            raise ValueError(f"unexpected payload entries: {extra[:5]}")
        return out

    def wire_bytes(self, payload: Mapping[str, Tensor], meta: Mapping[str, str]) -> int:
        """Exact size of the safetensors encoding of ``(payload, meta)``."""
        return wire_bytes(payload, meta)

    # -- per-tensor hooks -------------------------------------------------------------------
    def _keys(self, name: str) -> list[str]:
        return [f"v/{name}"]

    def _encode(self, name: str, t: Tensor) -> Payload:
        return {f"v/{name}": t.to("cpu").contiguous().clone()}

    def _decode(self, name: str, parts: Payload, shape: tuple[int, ...]) -> Tensor:
        return parts[f"v/{name}"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class NoCompression(Compressor):
    spec = "none"
    error_bound = "exact"


class Float16(Compressor):
    spec = "fp16"
    error_bound = "|x'-x| <= 2**-11*|x| + 2**-25 (relative ~4.9e-4); |x| <= 65504"

    def _encode(self, name: str, t: Tensor) -> Payload:
        if t.numel() and float(t.abs().max()) > FP16_MAX:
            raise ValueError(f"fp16: tensor {name!r} has values beyond +-{FP16_MAX}; use bf16 or int8")
        return {f"v/{name}": t.to("cpu", torch.float16).contiguous()}

    def _decode(self, name: str, parts: Payload, shape: tuple[int, ...]) -> Tensor:
        v = parts[f"v/{name}"]
        _expect_dtype(v, torch.float16, name)
        return v


class BFloat16(Compressor):
    spec = "bf16"
    error_bound = "|x'-x| <= 2**-8*|x| (relative ~3.9e-3)"

    def _encode(self, name: str, t: Tensor) -> Payload:
        return {f"v/{name}": t.to("cpu", torch.bfloat16).contiguous()}

    def _decode(self, name: str, parts: Payload, shape: tuple[int, ...]) -> Tensor:
        v = parts[f"v/{name}"]
        _expect_dtype(v, torch.bfloat16, name)
        return v


class Int8(Compressor):
    """Per-tensor int8 quantisation. Symmetric: q = round(x / s) in [-127, 127], s = max|x| / 127.
    Affine: q = round((x - lo) / s) in [0, 255] (uint8), s = (hi - lo) / 255. Max error s / 2."""

    def __init__(self, affine: bool = False):
        self.affine = affine
        self.spec = "int8:affine" if affine else "int8"
        self.error_bound = "|x'-x| <= scale/2, scale = " + ("(max-min)/255" if affine else "max|x|/127")

    def _keys(self, name: str) -> list[str]:
        return [f"v/{name}", f"s/{name}"] + ([f"z/{name}"] if self.affine else [])

    def _encode(self, name: str, t: Tensor) -> Payload:
        x = t.to("cpu", torch.float32)
        if x.numel() == 0:
            lo = hi = 0.0
        elif self.affine:
            lo, hi = float(x.min()), float(x.max())
        else:
            hi = float(x.abs().max())
        if self.affine:
            scale = _f32((hi - lo) / 255.0)  # rounded to what travels, so decode matches encode
            q = torch.zeros_like(x) if scale == 0 else torch.round((x - lo) / scale)
            out = {f"v/{name}": q.clamp_(0, 255).to(torch.uint8), f"z/{name}": torch.tensor(lo, dtype=torch.float32)}
        else:
            scale = _f32(hi / 127.0)
            q = torch.zeros_like(x) if scale == 0 else torch.round(x / scale)
            out = {f"v/{name}": q.clamp_(-127, 127).to(torch.int8)}
        out[f"s/{name}"] = torch.tensor(scale, dtype=torch.float32)
        return out

    def _decode(self, name: str, parts: Payload, shape: tuple[int, ...]) -> Tensor:
        q, s = parts[f"v/{name}"], parts[f"s/{name}"]
        _expect_dtype(q, torch.uint8 if self.affine else torch.int8, name)
        _expect_scalar(s, name)
        scale = float(s)
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"int8: bad scale {scale} for {name!r}")
        x = q.to(torch.float32) * scale
        if self.affine:
            z = parts[f"z/{name}"]
            _expect_scalar(z, name)
            if not math.isfinite(float(z)):
                raise ValueError(f"int8: bad offset for {name!r}")
            x += float(z)
        return x

    def scale_of(self, payload: Mapping[str, Tensor], name: str) -> float:
        return float(payload[f"s/{name}"])


class TopK(Compressor):
    """Top-k sparsification with error feedback (Stich et al., 2018; Lin et al., DGC).

    Per tensor, ``acc = x + residual`` and the ``ceil(k * numel)`` entries of largest |acc| are
    sent (float32 values, int32 flat indices); what was not sent becomes the new residual and is
    added before the next top-k. Hence, over rounds, sum(decoded) = sum(inputs) - residual, with
    the residual bounded, and kept coordinates are exact. The compressor is stateful (one per
    stream); ``reset()`` drops the residuals. Wire size ~ 8k/4 = 2k of dense float32."""

    def __init__(self, fraction: float, error_feedback: bool = True):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ValueError(f"topk: fraction must be a number in (0, 1], got {fraction!r}")
        fraction = float(fraction)
        if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
            raise ValueError(f"topk: fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.error_feedback = error_feedback
        self.spec = f"topk:{fraction!r}"
        self.error_bound = "exact on kept coordinates; the rest is carried in the residual"
        self.residual: dict[str, Tensor] = {}

    def reset(self) -> None:
        self.residual.clear()

    def count(self, numel: int) -> int:
        return 0 if numel == 0 else max(1, math.ceil(self.fraction * numel))

    def _keys(self, name: str) -> list[str]:
        return [f"v/{name}", f"i/{name}"]

    def _encode(self, name: str, t: Tensor) -> Payload:
        if t.numel() >= 2**31:
            raise ValueError(f"topk: tensor {name!r} too large for int32 indices")
        acc = t.to("cpu", torch.float32).reshape(-1).clone()
        if self.error_feedback and name in self.residual:
            r = self.residual[name]
            if r.shape != acc.shape:
                raise ValueError(f"topk: tensor {name!r} changed size ({r.numel()} -> {acc.numel()}); call reset()")
            acc += r
        k = self.count(acc.numel())
        idx = acc.abs().topk(k, sorted=False).indices if k else torch.zeros(0, dtype=torch.int64)
        idx = idx.sort().values  # ascending: deterministic, friendlier to later compression
        values = acc[idx].clone()
        if self.error_feedback:
            acc[idx] = 0.0
            self.residual[name] = acc
        return {f"v/{name}": values, f"i/{name}": idx.to(torch.int32)}

    def _decode(self, name: str, parts: Payload, shape: tuple[int, ...]) -> Tensor:
        v, i = parts[f"v/{name}"], parts[f"i/{name}"]
        _expect_dtype(v, torch.float32, name)
        _expect_dtype(i, torch.int32, name)
        numel = math.prod(shape)
        if v.dim() != 1 or i.shape != v.shape or v.numel() > numel:
            raise ValueError(f"topk: malformed values/indices for {name!r}")
        if i.numel() and (int(i.min()) < 0 or int(i.max()) >= numel):
            raise ValueError(f"topk: index out of range for {name!r} ({numel} elements)")
        out = torch.zeros(numel, dtype=torch.float32)
        out[i.to(torch.int64)] = v
        return out.view(shape)


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


def _expect_dtype(t: Tensor, dtype: torch.dtype, name: str) -> None:
    if t.dtype != dtype:
        raise ValueError(f"payload tensor for {name!r} is {t.dtype}, expected {dtype}")


def _expect_scalar(t: Tensor, name: str) -> None:
    if t.numel() != 1 or not t.is_floating_point():
        raise ValueError(f"payload scale/offset for {name!r} is not a float scalar")


def _take(payload: Mapping[str, Tensor], keys: list[str]) -> Payload:
    missing = [k for k in keys if k not in payload]
    if missing:
        raise ValueError(f"payload is missing {missing}")
    return {k: payload[k] for k in keys}


def _parse_layout(meta: Mapping[str, str]) -> dict[str, tuple[list[int], str]]:
    try:
        layout = json.loads(meta["layout"])
        assert isinstance(layout, dict)
        for name, (shape, dtype) in layout.items():
            assert isinstance(name, str) and isinstance(dtype, str)
            assert isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    except Exception:
        raise ValueError("compression metadata has no valid 'layout'") from None
    return layout


SPECS = ("none", "fp16", "bf16", "int8", "int8:affine", "topk:<fraction in (0, 1]>")


def get_compressor(spec: str) -> Compressor:
    """Parse ``none``, ``fp16``, ``bf16``, ``int8``, ``int8:affine``, ``topk:0.01``."""
    if not isinstance(spec, str):
        raise ValueError(f"compressor spec must be a string, got {type(spec).__name__}")
    s = spec.strip().lower()
    simple = {"none": NoCompression, "fp16": Float16, "bf16": BFloat16}
    if s in simple:
        return simple[s]()
    if s in ("int8", "int8:symmetric"):
        return Int8(affine=False)
    if s == "int8:affine":
        return Int8(affine=True)
    if s.startswith("topk:"):
        try:
            fraction = float(s.removeprefix("topk:"))
        except ValueError:
            raise ValueError(f"bad top-k fraction in {spec!r}; expected e.g. 'topk:0.01'") from None
        return TopK(fraction)
    raise ValueError(f"unknown compressor {spec!r}; expected one of: {', '.join(SPECS)}")


def decompress(payload: Mapping[str, Tensor], meta: Mapping[str, str]) -> dict[str, Tensor]:
    """Decode any payload made by a compressor in this module (stateless)."""
    spec = meta.get("compressor") if isinstance(meta, Mapping) else None
    if not isinstance(spec, str):
        raise ValueError("compression metadata has no 'compressor'")
    compressor = get_compressor(spec)
    return compressor.decompress(payload, {**meta, "compressor": compressor.spec})


def to_bytes(payload: Mapping[str, Tensor], meta: Mapping[str, str]) -> bytes:
    """safetensors bytes of the payload with ``meta`` as its string metadata (no pickle)."""
    return dump(payload, meta)


def from_bytes(data: bytes | bytearray) -> tuple[Payload, Meta]:
    """Inverse of ``to_bytes``; raises ``ValueError`` on a malformed buffer."""
    try:
        return parse(data)
    except ValueError as exc:
        raise ValueError(f"not a valid safetensors compression payload: {exc}") from None


def wire_bytes(payload: Mapping[str, Tensor], meta: Mapping[str, str]) -> int:
    """Bytes on the wire: the exact length of ``to_bytes(payload, meta)``."""
    return len(to_bytes(payload, meta))


__all__ = [
    "SPECS",
    "BFloat16",
    "Compressor",
    "Float16",
    "Int8",
    "NoCompression",
    "TopK",
    "decompress",
    "from_bytes",
    "get_compressor",
    "to_bytes",
    "wire_bytes",
]
