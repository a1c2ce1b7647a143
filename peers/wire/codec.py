"""What a peer puts on the wire for its model, per job: the job's compression, and for top-k
the CHOCO-style scheme that makes sparsification work on model states.

Dense codecs (none, fp16, bf16, int8) send the whole model each round. Top-k sends the change
of the sender's *public copy* x_hat: q = topk(x - x_hat), x_hat += q, and every receiver keeps
the same x_hat for that sender and mixes with it (Koloskova et al., CHOCO-SGD). What top-k
leaves out stays in x - x_hat and goes out in later rounds: that is the error feedback. A
receiver that missed a delta can no longer follow, so every `keyframe_every` rounds the sender
sends a dense keyframe that resynchronises everyone; deltas name the round of the copy they
apply to and are refused on a mismatch.

Payload metadata (str -> str, in the safetensors header): compressor, layout (see
peers.wire.compression), kind = key | delta | snapshot, round, base_round (deltas only). Snapshots
answer a late joiner's model request and never become a base for deltas.
"""

from __future__ import annotations

import torch

from peers.wire.compression import TopK, decompress, from_bytes, get_compressor, to_bytes
from peers.wire.format import Spec, WeightsRejected, check_state

KEYFRAME_EVERY = 10


class WeightsEncoder:
    """The sending side of one job."""

    def __init__(self, spec: str = "none", keyframe_every: int = KEYFRAME_EVERY):
        self.spec = spec
        self.compressor = get_compressor(spec)
        if isinstance(self.compressor, TopK):
            self.compressor = TopK(self.compressor.fraction, error_feedback=False)  # x - x_hat is the feedback
        self.delta = isinstance(self.compressor, TopK)
        self.keyframe_every = keyframe_every
        self.public: dict[str, torch.Tensor] | None = None
        self.public_round = 0
        self.last_key = 0

    def encode(self, state: dict[str, torch.Tensor], round: int) -> bytes:
        if not self.delta:
            payload, meta = self.compressor.compress(state)
            return to_bytes(payload, {**meta, "kind": "key", "round": str(round)})
        if self.public is None or round - self.last_key >= self.keyframe_every:
            payload, meta = get_compressor("none").compress(state)
            self.public = {k: v.detach().clone() for k, v in state.items()}
            self.public_round, self.last_key = round, round
            return to_bytes(payload, {**meta, "kind": "key", "round": str(round)})
        payload, meta = self.compressor.compress({k: v - self.public[k] for k, v in state.items()})
        sent = decompress(payload, meta)
        for k in self.public:
            self.public[k] += sent[k]
        meta = {**meta, "kind": "delta", "round": str(round), "base_round": str(self.public_round)}
        self.public_round = round
        return to_bytes(payload, meta)

    def snapshot(self, state: dict[str, torch.Tensor], round: int) -> bytes:
        """A full model for a late joiner (does not change anyone's public copy)."""
        payload, meta = get_compressor("none").compress(state)
        return to_bytes(payload, {**meta, "kind": "snapshot", "round": str(round)})


class WeightsDecoder:
    """The receiving side for one sender of one job; validates everything it returns."""

    def __init__(self, expected: Spec, max_bytes: int):
        self.expected = expected
        self.max_bytes = max_bytes
        self.public: dict[str, torch.Tensor] | None = None
        self.public_round = -1

    def decode(self, data: bytes | bytearray) -> dict[str, torch.Tensor]:
        if len(data) > self.max_bytes:
            raise WeightsRejected(f"payload too large: {len(data)} > {self.max_bytes} bytes")
        try:
            payload, meta = from_bytes(data)
            state = decompress(payload, meta)
            kind, round_ = meta.get("kind", "key"), int(meta.get("round", "0"))
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise WeightsRejected(f"undecodable payload: {exc}") from None
        if kind == "delta":
            base = int(meta.get("base_round", "-1"))
            if self.public is None or base != self.public_round:
                raise WeightsRejected(f"stale delta: based on round {base}, we hold round {self.public_round}")
            check_state(state, self.expected)
            state = {k: self.public[k] + v for k, v in state.items()}
        elif kind not in ("key", "snapshot"):
            raise WeightsRejected(f"unknown payload kind {kind!r}")
        check_state(state, self.expected)
        if kind != "snapshot":
            self.public, self.public_round = state, round_
        return state
