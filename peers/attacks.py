"""Byzantine behaviours a peer can be told to simulate, for experiments and to show what stops
them. The honest peer (``peers.worker.Peer``) knows none of this: ``ByzantinePeer`` overrides
its two hooks (the round's starting model, the outgoing payload), and ``make_peer`` picks the
class. A label-flipping peer is honest in everything but its data.

Modes:
  none        honest peer.
  nan         every floating-point tensor is filled with NaN (caught by the finite check).
  shape       the first tensor gains an extra leading row, zero-filled (caught by the shape check).
  scale       every floating-point tensor is multiplied by -1000: finite and well-formed, so
              only a robust aggregation rule (median, trimmed mean, Krum, ...) stops it.
  bad-hash    the sender hashes and signs the honest payload, then ``tamper_payload`` flips
              a byte of what is actually sent (caught by the sha256 check on reassembly).
  sign-flip   sends its round's update reversed: start - (trained - start).
  gaussian    sends the round's starting model plus Gaussian noise (3x each tensor's spread).
  free-ride   sends the model it started the round from, as if it had trained (it did not).
  label-flip  trains on its data with every label y replaced by classes - 1 - y, sends honestly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from peers.data import LocalData
from peers.protocol import RoundPlan
from peers.wire.format import sha256_hex
from peers.worker import JobState, Peer

ATTACK_MODES = ("none", "nan", "shape", "bad-hash", "scale", "sign-flip", "gaussian", "free-ride", "label-flip")
MODEL_ATTACKS = ("nan", "shape", "scale", "sign-flip", "gaussian", "free-ride")  # change what is sent
GAUSSIAN_SPREAD = 3.0


def corrupt(
    state: dict[str, torch.Tensor], mode: str, start: dict[str, torch.Tensor] | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A corrupted copy of ``state`` (the trained model); ``start`` is the model the round began
    from (needed by sign-flip, gaussian and free-ride). Modes that do not touch the model
    ("none", "bad-hash", "label-flip") return an unchanged copy."""
    if mode not in ATTACK_MODES:
        raise ValueError(f"unknown attack mode {mode!r}; expected one of {ATTACK_MODES}")
    if mode in ("sign-flip", "gaussian", "free-ride") and start is None:
        raise ValueError(f"attack {mode!r} needs the round's starting model")
    out = {k: v.detach().clone() for k, v in state.items()}
    floats = [k for k, t in out.items() if t.is_floating_point()]
    if mode == "nan":
        for k in floats:
            out[k].fill_(float("nan"))
    elif mode == "scale":
        for k in floats:
            out[k].mul_(-1000.0)
    elif mode == "sign-flip":
        for k in floats:
            out[k] = 2 * start[k] - out[k]  # type: ignore[index]
    elif mode == "free-ride":
        for k in floats:
            out[k] = start[k].detach().clone()  # type: ignore[index]
    elif mode == "gaussian":
        gen = torch.Generator().manual_seed(seed)
        for k in floats:
            base = start[k]  # type: ignore[index]
            spread = float(base.std()) if base.numel() > 1 else 1.0
            noise = torch.randn(base.shape, generator=gen, dtype=base.dtype) * GAUSSIAN_SPREAD * (spread or 1.0)
            out[k] = base + noise
    elif mode == "shape" and out:
        name = next(iter(out))
        t = out[name]
        bigger = torch.zeros((t.shape[0] + 1, *t.shape[1:]) if t.dim() else (1,), dtype=t.dtype)
        if t.dim():
            bigger[: t.shape[0]] = t
        out[name] = bigger
    return out


def flip_labels(data: LocalData) -> LocalData:
    """The same data with every training label y replaced by classes - 1 - y (eval split kept)."""
    flipped = (data.num_classes - 1 - np.asarray(data.y_train)).astype(np.asarray(data.y_train).dtype)
    return dataclasses.replace(data, y_train=flipped)


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


class ByzantinePeer(Peer):
    """A peer whose outgoing weights follow ``attack`` (one of MODEL_ATTACKS, or bad-hash)."""

    def __init__(self, *args, attack: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.attack = attack
        self._start: dict[int, dict[str, torch.Tensor]] = {}

    def _before_training(self, plan: RoundPlan, state: JobState) -> None:
        super()._before_training(plan, state)
        self._start[plan.job_id] = state.trainer.state()

    def _outgoing(self, plan: RoundPlan, state: JobState, local: dict) -> tuple[bytes, str] | None:
        if self.attack == "bad-hash":
            honest = super()._outgoing(plan, state, local)
            return None if honest is None else (tamper_payload(honest[0]), honest[1])
        payload = unchecked_payload(corrupt(local, self.attack, self._start.get(plan.job_id), seed=plan.round))
        return payload, sha256_hex(payload)


def make_peer(node_id: int, key, data: LocalData, transport, reporter, *, attack: str = "none", **kwargs) -> Peer:
    """A ``Peer`` for "none", one trained on flipped labels for "label-flip", a ``ByzantinePeer``
    for the other modes; the other arguments as ``Peer``'s."""
    if attack not in ATTACK_MODES:
        raise ValueError(f"unknown attack mode {attack!r}; expected one of {ATTACK_MODES}")
    if attack == "none":
        return Peer(node_id, key, data, transport, reporter, **kwargs)
    if attack == "label-flip":
        return Peer(node_id, key, flip_labels(data), transport, reporter, **kwargs)
    return ByzantinePeer(node_id, key, data, transport, reporter, attack=attack, **kwargs)
