"""Byzantine behaviours a peer can be told to simulate, to show that neighbours reject them.

Modes:
  none      honest peer.
  nan       every floating-point tensor is filled with NaN (caught by the finite check).
  shape     the first tensor gains an extra leading row, zero-filled (caught by the shape check).
  scale     every floating-point tensor is multiplied by -1000: finite and well-formed, so
            only a robust aggregation rule (median, trimmed mean, Krum, ...) stops it.
  bad-hash  the sender hashes and signs the honest payload, then ``tamper_payload`` flips
            a byte of what is actually sent (caught by the sha256 check on reassembly).
"""

from __future__ import annotations

import torch

ATTACK_MODES = ("none", "nan", "shape", "bad-hash", "scale")


def corrupt(state: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """Return a corrupted copy of ``state`` (unchanged copy for "none" and "bad-hash")."""
    if mode not in ATTACK_MODES:
        raise ValueError(f"unknown attack mode {mode!r}; expected one of {ATTACK_MODES}")
    out = {k: v.detach().clone() for k, v in state.items()}
    if mode == "nan":
        for t in out.values():
            if t.is_floating_point():
                t.fill_(float("nan"))
    elif mode == "scale":
        for t in out.values():
            if t.is_floating_point():
                t.mul_(-1000.0)
    elif mode == "shape" and out:
        name = next(iter(out))
        t = out[name]
        bigger = torch.zeros((t.shape[0] + 1, *t.shape[1:]) if t.dim() else (1,), dtype=t.dtype)
        if t.dim():
            bigger[: t.shape[0]] = t
        out[name] = bigger
    return out


def tamper_payload(payload: bytes) -> bytes:
    """Flip every bit of the last byte (in the tensor data, so the file still parses)."""
    if not payload:
        raise ValueError("cannot tamper with an empty payload")
    return payload[:-1] + bytes([payload[-1] ^ 0xFF])


def unchecked_payload(state: dict[str, torch.Tensor]) -> bytes:
    """Encode ``state`` in the uncompressed wire format without the sender-side sanity checks
    (an honest compressor refuses NaN), so the receivers' own checks are what stops it."""
    import json

    from peers.wire.compression import to_bytes

    layout = {name: [list(t.shape), str(t.dtype).removeprefix("torch.")] for name, t in state.items()}
    payload = {f"v/{name}": t.detach().cpu().contiguous() for name, t in state.items()}
    return to_bytes(payload, {"compressor": "none", "layout": json.dumps(layout, separators=(",", ":"))})
