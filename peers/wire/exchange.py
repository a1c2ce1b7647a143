"""Streaming a weights payload to a neighbour as signed chunks, and reassembling it.

Every chunk carries the header ``[job_id, round, sender, seq, count, size, sha256]`` and the
sender's Ed25519 signature over it. The payload's sha256 travels in the *last* chunk only
(the others carry ``""``), so a sender streams while it hashes instead of hashing the whole
payload before its first byte leaves: the receiver checks the opening signature once per
transfer (the header with ``""``), the closing one on the last chunk, and the sha256 of
what it reassembled against the signed digest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

from peers.protocol import WeightsChunk, from_message, header_bytes, to_message
from peers.transport.base import SEND_MANY, BatchingTransport, ChannelFull, Transport, has_extension, is_channel_full
from peers.wire.buffers import BufferPool
from peers.wire.signing import NodeKey, verify

MAX_PARTIALS_PER_SENDER = 4  # concurrent unfinished transfers kept per sender
MAX_REPORTED = 10_000  # bound on remembered rejections (forgers can invent keys)


class _HasChannel(Protocol):
    channel: str


Target = TypeVar("Target", bound=_HasChannel)  # a plan's Neighbour: anything with a channel

BATCH_BYTES = 1 << 20  # chunk bytes per send_many call (one Redis round trip; 1 MiB measured best)


async def send_payload(
    transport: Transport,
    channel: str,
    *,
    job_id: int,
    round: int,
    sender: int,
    seq: int,
    payload: bytes,
    key: NodeKey,
    chunk_bytes: int | None = None,
    full_retry_s: float = 30.0,
    sha256: str | None = None,
) -> int:
    """Send ``payload`` in order as signed chunks; returns payload bytes sent.

    ``chunk_bytes`` defaults to 512 KiB for payloads up to 8 MiB and 1 MiB above (see
    ``default_chunk_bytes``). A transport with ``send_many`` (the Redis one) gets up to
    ``BATCH_BYTES`` of chunks per call, one round trip each, and the next batch is built
    (and hashed) while the current one travels. On a full channel, backs off (5 ms doubling
    to 200 ms) and retries for up to ``full_retry_s`` without progress, then re-raises.
    ``sha256``: the payload's digest when the caller already has it (a peer sending one
    payload to several neighbours hashes it once), or a false one (the bad-hash attack).
    """
    if chunk_bytes is None:
        chunk_bytes = default_chunk_bytes(len(payload))
    chunk_bytes = min(chunk_bytes, getattr(transport, "max_chunk_bytes", chunk_bytes))  # the relay's frames
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    count = max(1, -(-len(payload) // chunk_bytes))
    chunk = WeightsChunk(
        job_id=job_id,
        round=round,
        sender=sender,
        seq=seq,
        index=0,
        count=count,
        size=len(payload),
        sha256="",
        signature=b"",
        data=b"",
    )
    opening = key.sign(header_bytes(chunk)) if count > 1 else b""  # a single chunk only closes
    hasher = None if sha256 else hashlib.sha256()
    view = memoryview(payload)

    def message(index: int) -> dict:
        data = bytes(view[index * chunk_bytes : (index + 1) * chunk_bytes])
        if hasher is not None:
            hasher.update(data)
        if index < count - 1:
            return to_message(dataclasses.replace(chunk, index=index, signature=opening, data=data))
        digest = hasher.hexdigest() if hasher is not None else sha256 or ""
        closing = dataclasses.replace(chunk, index=index, sha256=digest, data=data)
        closing.signature = key.sign(header_bytes(closing))
        return to_message(closing)

    send_many = cast(BatchingTransport, transport).send_many if has_extension(transport, SEND_MANY) else None
    per_call = max(1, BATCH_BYTES // chunk_bytes) if send_many is not None else 1
    built = 0

    def next_batch() -> list[dict]:
        nonlocal built
        batch = [message(i) for i in range(built, min(count, built + per_call))]
        built += len(batch)
        return batch

    async def send(batch: list[dict]) -> int:
        if send_many is None:
            await transport.send(channel, batch[0])
            return 1
        sent = await send_many(channel, batch)
        if not sent:
            raise ChannelFull(channel)
        return sent

    batch, ahead = next_batch(), list[dict]()
    delay, give_up = 0.005, time.monotonic() + full_retry_s
    while batch:
        in_flight = asyncio.ensure_future(send(batch))
        if not ahead and built < count:
            await asyncio.sleep(0)  # let the send write its batch out before the loop is busy building
            try:
                ahead = next_batch()  # serialise and hash the next batch while this one travels
            except BaseException:
                in_flight.cancel()
                raise
        try:
            sent = await in_flight
        except Exception as exc:
            if not is_channel_full(exc) or time.monotonic() >= give_up:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            continue
        del batch[:sent]
        if not batch:
            batch, ahead = ahead, []
        delay, give_up = 0.005, time.monotonic() + full_retry_s
    return len(payload)


async def send_payload_to_each(
    transport: Transport, targets: Sequence[Target], **send
) -> tuple[int, list[tuple[Target, Exception]]]:
    """``send_payload`` of one payload to every target's ``channel`` at once: (payload bytes
    sent in all, [(target, error)] for each send that failed). One failed target stops no other."""
    results = await asyncio.gather(
        *(send_payload(transport, t.channel, **send) for t in targets), return_exceptions=True
    )
    failed = [(t, r) for t, r in zip(targets, results, strict=True) if isinstance(r, Exception)]
    return sum(r for r in results if isinstance(r, int)), failed


def default_chunk_bytes(size: int) -> int:
    """Chunk size for a payload of ``size`` bytes: 512 KiB up to 8 MiB, then 1 MiB (fewer
    round trips; channels_redis' 100-message capacity then holds up to 100 MiB)."""
    return 512 * 1024 if size <= 8 << 20 else 1 << 20


@dataclass
class Completed:
    sender: int
    round: int
    seq: int
    payload: bytearray  # tensors parsed from it view this memory (peers.wire.tensorbytes)


@dataclass
class Rejected:
    sender: int
    round: int
    reason: str


@dataclass
class _Partial:
    """One transfer in progress. In-order chunks are copied into ``buffer`` (of the signed size,
    which is at most ``max_bytes``, from the reassembler's pool: growing a buffer instead costs
    a copy per realloc, a fresh one a page fault per page) and hashed as they come; chunks
    that arrive early wait in ``early``."""

    opening: bytes  # the signed header without the digest, as every chunk but the last carries it
    buffer: bytearray
    signature: bytes = b""  # the opening signature, once a chunk carrying it checked out
    sha256: str = ""  # the signed digest, once the last chunk checked out
    early: dict[int, bytes] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)
    received: int = 0  # bytes of all distinct chunks so far
    filled: int = 0  # buffer[:filled] holds chunks 0..next_index-1
    next_index: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)


class Reassembler:
    """Collects chunks from known senders into verified payloads.

    ``feed`` returns ``Completed`` when a transfer finishes intact, ``Rejected`` the
    first time a transfer (sender, round, seq) fails, and ``None`` otherwise.
    A transfer whose signed header checks out but whose content does not is dead:
    its later chunks are dropped silently. Bad signatures only drop the chunk, so a
    forger cannot block the real sender's transfer.
    """

    def __init__(self, public_keys: dict[int, str], job_id: int, max_bytes: int):
        self.public_keys: dict[int, str] = {}
        self.trust(public_keys)
        self.job_id = job_id
        self.max_bytes = max_bytes
        self.pool = BufferPool()  # payload buffers, recycled round after round
        self.min_round = 0
        self._partials: dict[tuple[int, int, int], _Partial] = {}
        self._completed: set[tuple[int, int, int]] = set()
        self._last_seq: dict[tuple[int, int], int] = {}
        self._dead: set[tuple[int, int, int]] = set()
        self._reported: set[tuple[int, int, int]] = set()

    def trust(self, public_keys: dict[int, str]) -> None:
        """The senders (node id -> Ed25519 public key hex) whose chunks are accepted from now on:
        the current plan's neighbours."""
        self.public_keys = dict(public_keys)

    def _reject(self, key: tuple[int, int, int], reason: str, kill: bool = True) -> Rejected | None:
        if kill:
            self._dead.add(key)
            self._partials.pop(key, None)
        if key in self._reported or len(self._reported) >= MAX_REPORTED:
            return None
        self._reported.add(key)
        return Rejected(sender=key[0], round=key[1], reason=reason)

    def feed(self, msg: WeightsChunk | dict) -> Completed | Rejected | None:
        if isinstance(msg, dict):
            msg = from_message(msg)
        if not isinstance(msg, WeightsChunk):
            raise TypeError(f"expected WeightsChunk, got {type(msg).__name__}")
        key = (msg.sender, msg.round, msg.seq)
        if key in self._dead or msg.round < self.min_round:
            return None  # dead transfer, or a round already expired
        public_key = self.public_keys.get(msg.sender)
        if public_key is None:
            return self._reject(key, "unknown sender", kill=False)
        signed = header_bytes(msg)
        closing = msg.sha256 != ""
        opening = header_bytes(dataclasses.replace(msg, sha256="")) if closing else signed
        partial = self._partials.get(key)
        checked = (
            not closing and partial is not None and partial.opening == opening and partial.signature == msg.signature
        )
        if not checked and not verify(public_key, signed, msg.signature):
            return self._reject(key, "bad signature", kill=False)
        # From here on the header is authentic (signed by the sender).
        if msg.job_id != self.job_id:
            return self._reject(key, f"wrong job: {msg.job_id} != {self.job_id}")
        if key in self._completed or msg.seq < self._last_seq.get((msg.sender, msg.round), msg.seq):
            return self._reject(key, "replayed message", kill=False)
        if msg.size > self.max_bytes:
            return self._reject(key, f"payload too large: {msg.size} > {self.max_bytes} bytes")
        if msg.size < 0 or not 1 <= msg.count <= max(1, msg.size):
            return self._reject(key, f"inconsistent chunk count: {msg.count} for {msg.size} bytes")
        if partial is not None and partial.opening != opening:
            return self._reject(key, "inconsistent chunk header")
        if not 0 <= msg.index < msg.count:
            return self._reject(key, f"index out of range: {msg.index} not in [0, {msg.count})")
        if closing != (msg.index == msg.count - 1):
            return self._reject(key, "the sha256 must come with the last chunk, and only with it")
        if partial is None:
            partial = self._start(key, opening, msg)
        if closing:
            partial.sha256 = msg.sha256
        elif not partial.signature:
            partial.signature = msg.signature
        if msg.index in partial.seen:
            return None  # duplicate chunk; keep the first copy
        partial.seen.add(msg.index)
        partial.received += len(msg.data)
        if partial.received > msg.size:
            return self._reject(key, f"chunk data exceeds declared size {msg.size}")
        partial.early[msg.index] = msg.data
        while partial.next_index in partial.early:
            data = partial.early.pop(partial.next_index)
            partial.buffer[partial.filled : partial.filled + len(data)] = data
            partial.hasher.update(data)
            partial.filled += len(data)
            partial.next_index += 1
        if len(partial.seen) < msg.count:
            return None
        del self._partials[key]
        if partial.received != msg.size:
            return self._reject(key, f"size mismatch: {partial.received} != {msg.size}")
        if partial.hasher.hexdigest() != partial.sha256:
            return self._reject(key, "sha256 mismatch")
        payload = partial.buffer
        self._completed.add(key)
        self._last_seq[(msg.sender, msg.round)] = max(msg.seq, self._last_seq.get((msg.sender, msg.round), msg.seq))
        return Completed(sender=msg.sender, round=msg.round, seq=msg.seq, payload=payload)

    def _start(self, key: tuple[int, int, int], opening: bytes, msg: WeightsChunk) -> _Partial:
        mine = sorted(k for k in self._partials if k[0] == msg.sender)
        for old in mine[: max(0, len(mine) - MAX_PARTIALS_PER_SENDER + 1)]:
            del self._partials[old]  # drop the oldest unfinished transfers
        partial = self._partials[key] = _Partial(opening=opening, buffer=self.pool.take(msg.size))
        return partial

    def pending(self) -> list[tuple[int, int, int]]:
        """(sender, round, seq) of unfinished transfers."""
        return sorted(self._partials)

    def expire(self, older_than_round: int) -> None:
        """Forget everything about rounds before ``older_than_round``; later chunks
        for those rounds are ignored."""
        self.min_round = max(self.min_round, older_than_round)
        old = lambda k: k[1] < self.min_round  # noqa: E731
        self._partials = {k: v for k, v in self._partials.items() if not old(k)}
        self._completed = {k for k in self._completed if not old(k)}
        self._dead = {k for k in self._dead if not old(k)}
        self._reported = {k for k in self._reported if not old(k)}
        self._last_seq = {k: v for k, v in self._last_seq.items() if k[1] >= self.min_round}
