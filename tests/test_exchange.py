"""Chunked, signed weight transfer, over the in-memory transport and over real Redis."""

import asyncio
import os
import time

import pytest

from peers.attacks import tamper_payload
from peers.protocol import ProtocolError, WeightsChunk, from_message, header_bytes, to_message
from peers.transport import ChannelFull, is_channel_full
from peers.transport.memory import MemoryTransport
from peers.wire.exchange import Completed, Reassembler, Rejected, send_payload
from peers.wire.format import sha256_hex
from peers.wire.signing import NodeKey

JOB, CHUNK = 7, 512 * 1024
ALICE, BOB, MALLORY = 1, 2, 3


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.services)])
async def transport(request):
    """Each transfer test runs over both transports: the in-memory one and real Redis."""
    if request.param == "memory":
        yield MemoryTransport()
        return
    from django.conf import settings

    from peers.transport.redis import RedisChannelTransport

    t = RedisChannelTransport(settings.REDIS_URL, prefix=f"test-exchange-{os.urandom(4).hex()}:")
    yield t
    await t.close()


@pytest.fixture(scope="module")
def keys():
    return {n: NodeKey.generate() for n in (ALICE, BOB, MALLORY)}


def _reassembler(keys, max_bytes=8 << 20):
    # Mallory is not one of our neighbours
    return Reassembler({n: keys[n].public_key_hex for n in (ALICE, BOB)}, job_id=JOB, max_bytes=max_bytes)


async def _send(transport, keys, payload, *, sender=ALICE, seq=0, round=1, job=JOB, key=None, **kw):
    return await send_payload(
        transport,
        "dfl.node.9",
        job_id=job,
        round=round,
        sender=sender,
        seq=seq,
        payload=payload,
        key=key or keys[sender],
        chunk_bytes=CHUNK,
        **kw,
    )


async def _drain(transport, channel="dfl.node.9"):
    out = []
    if hasattr(transport, "pending"):
        while transport.pending(channel):
            out.append(await transport.receive(channel))
        return out
    while True:  # Redis: read until nothing arrives for a moment (a cancelled receive loses nothing)
        try:
            out.append(await asyncio.wait_for(transport.receive(channel), 0.5))
        except TimeoutError:
            return out


def _feed_all(reassembler, messages):
    return [r for r in (reassembler.feed(from_message(m)) for m in messages) if r is not None]


@pytest.mark.asyncio
async def test_multi_chunk_payload_reassembles_exactly(keys, transport):
    t = transport
    payload = os.urandom(3 * 1024 * 1024 + 123)
    assert await _send(t, keys, payload) == len(payload)
    messages = await _drain(t)
    assert len(messages) == 7 and {m["count"] for m in messages} == {7}
    assert [m["index"] for m in messages] == list(range(7))
    r = _reassembler(keys)
    results = _feed_all(r, messages)
    assert results == [Completed(sender=ALICE, round=1, seq=0, payload=payload)]
    assert r.pending() == []


@pytest.mark.asyncio
async def test_out_of_order_and_interleaved_senders(keys, transport):
    t = transport
    a, b = os.urandom(CHUNK * 2 + 5), os.urandom(CHUNK + 1)
    await _send(t, keys, a, sender=ALICE)
    await _send(t, keys, b, sender=BOB)
    msgs = await _drain(t)
    msgs = msgs[::-1]  # reversed: bob's chunks first, each stream backwards
    results = _feed_all(_reassembler(keys), msgs)
    assert {(c.sender, bytes(c.payload)) for c in results} == {(ALICE, a), (BOB, b)}


@pytest.mark.asyncio
async def test_small_and_empty_payloads(keys):
    t = MemoryTransport()
    for seq, payload in enumerate([b"x", b""]):
        await _send(t, keys, payload, seq=seq)
    results = _feed_all(_reassembler(keys), await _drain(t))
    assert [c.payload for c in results] == [b"x", b""]


@pytest.mark.asyncio
async def test_forged_signature_is_rejected_once_and_does_not_block_real_sender(keys, transport):
    t = transport
    payload = os.urandom(CHUNK * 2)
    await _send(t, keys, payload, key=keys[MALLORY])  # mallory pretends to be alice
    forged = await _drain(t)
    await _send(t, keys, payload)
    honest = await _drain(t)
    r = _reassembler(keys)
    assert _feed_all(r, forged) == [Rejected(sender=ALICE, round=1, reason="bad signature")]
    assert _feed_all(r, honest) == [Completed(ALICE, 1, 0, payload)]


@pytest.mark.asyncio
async def test_unsigned_header_change_breaks_signature(keys):
    t = MemoryTransport()
    await _send(t, keys, os.urandom(100))
    (msg,) = await _drain(t)
    msg["size"] = 99  # any signed header field
    assert _feed_all(_reassembler(keys), [msg]) == [Rejected(ALICE, 1, "bad signature")]


@pytest.mark.asyncio
async def test_tampered_data_sha_mismatch(keys, transport):
    t = transport
    honest = os.urandom(CHUNK * 2 + 10)
    # the bad-hash attack: hash/sign the honest bytes, send tampered ones
    await _send(t, keys, tamper_payload(honest), sha256=sha256_hex(honest))
    r = _reassembler(keys)
    assert _feed_all(r, await _drain(t)) == [Rejected(ALICE, 1, "sha256 mismatch")]
    # a chunk with altered data but the original header is also caught
    await _send(t, keys, honest, seq=1)
    msgs = await _drain(t)
    msgs[1]["data"] = b"\x00" * len(msgs[1]["data"])
    assert _feed_all(r, msgs) == [Rejected(ALICE, 1, "sha256 mismatch")]


@pytest.mark.asyncio
async def test_replay(keys, transport):
    t = transport
    payload = os.urandom(CHUNK + 1)
    await _send(t, keys, payload, seq=5)
    first = await _drain(t)
    await _send(t, keys, payload, seq=4)  # an older transfer, captured and replayed late
    older = await _drain(t)
    r = _reassembler(keys)
    assert _feed_all(r, first) == [Completed(ALICE, 1, 5, payload)]
    assert _feed_all(r, first) == [Rejected(ALICE, 1, "replayed message")]
    assert _feed_all(r, first) == []  # rejected once only
    assert _feed_all(r, older) == [Rejected(ALICE, 1, "replayed message")]
    # a newer seq and another round are fine
    await _send(t, keys, payload, seq=6)
    await _send(t, keys, payload, seq=0, round=2)
    assert [(c.round, c.seq) for c in _feed_all(r, await _drain(t))] == [(1, 6), (2, 0)]


@pytest.mark.asyncio
async def test_wrong_job_and_unknown_sender(keys, transport):
    t = transport
    await _send(t, keys, os.urandom(CHUNK + 1), job=JOB + 1)
    await _send(t, keys, os.urandom(CHUNK + 1), sender=MALLORY)
    results = _feed_all(_reassembler(keys), await _drain(t))
    assert results == [Rejected(ALICE, 1, f"wrong job: {JOB + 1} != {JOB}"), Rejected(MALLORY, 1, "unknown sender")]


@pytest.mark.asyncio
async def test_truncated_stream_never_completes(keys, transport):
    t = transport
    await _send(t, keys, os.urandom(CHUNK * 3))
    msgs = await _drain(t)
    r = _reassembler(keys)
    assert _feed_all(r, msgs[:1] + msgs[2:]) == []
    assert r.pending() == [(ALICE, 1, 0)]
    r.expire(2)
    assert r.pending() == []
    assert _feed_all(r, msgs) == []  # expired round: ignored


@pytest.mark.asyncio
async def test_too_large_and_bad_index(keys, transport):
    t = transport
    await _send(t, keys, os.urandom(CHUNK * 2))
    r = _reassembler(keys, max_bytes=CHUNK)
    assert _feed_all(r, await _drain(t)) == [Rejected(ALICE, 1, f"payload too large: {CHUNK * 2} > {CHUNK} bytes")]

    # a validly signed header whose index is out of range
    key = keys[ALICE]
    chunk = WeightsChunk(
        job_id=JOB, round=1, sender=ALICE, seq=1, index=5, count=2, size=10, sha256="0" * 64, signature=b"", data=b"x"
    )
    chunk.signature = key.sign(header_bytes(chunk))
    r = _reassembler(keys)
    assert r.feed(chunk) == Rejected(ALICE, 1, "index out of range: 5 not in [0, 2)")
    chunk.seq, chunk.index, chunk.count, chunk.size = 2, 0, 3, 2  # 3 chunks for 2 bytes
    chunk.signature = key.sign(header_bytes(chunk))
    assert r.feed(chunk).reason.startswith("inconsistent chunk count")
    chunk.seq, chunk.count, chunk.size, chunk.data = 3, 2, 4, b"12345"  # more data than declared
    chunk.sha256 = ""  # (not the last chunk: no digest)
    chunk.signature = key.sign(header_bytes(chunk))
    assert r.feed(chunk).reason.startswith("chunk data exceeds declared size")


@pytest.mark.asyncio
async def test_digest_travels_signed_in_the_last_chunk_only(keys, transport):
    t = transport
    payload = os.urandom(CHUNK * 3 + 5)
    await _send(t, keys, payload)
    msgs = await _drain(t)
    assert [m["sha256"] for m in msgs] == ["", "", "", sha256_hex(payload)]
    assert len({m["signature"] for m in msgs[:-1]}) == 1 and msgs[-1]["signature"] != msgs[0]["signature"]
    # the last chunk may arrive first
    r = _reassembler(keys)
    assert _feed_all(r, [msgs[3], msgs[1], msgs[0], msgs[2]]) == [Completed(ALICE, 1, 0, payload)]

    def signed(msg, key=keys[ALICE], **changes):
        chunk = from_message({**msg, **changes})
        chunk.signature = key.sign(header_bytes(chunk))
        return to_message(chunk)

    # a digest on any other chunk, or a last chunk without one, kills the transfer (both validly signed)
    r = _reassembler(keys)
    assert r.feed(signed(msgs[0], sha256=sha256_hex(payload))) == Rejected(
        ALICE, 1, "the sha256 must come with the last chunk, and only with it"
    )
    assert r.feed(msgs[1]) is None and r.pending() == []
    r = _reassembler(keys)
    assert _feed_all(r, [*msgs[:3], signed(msgs[3], sha256="")]) == [
        Rejected(ALICE, 1, "the sha256 must come with the last chunk, and only with it")
    ]
    # a closing digest signed by someone else is a forgery: dropped, and the real one still completes
    r = _reassembler(keys)
    forged = signed(msgs[3], key=keys[MALLORY], sha256="ab" * 32)
    assert _feed_all(r, [*msgs[:3], forged]) == [Rejected(ALICE, 1, "bad signature")]
    assert _feed_all(r, msgs[3:]) == [Completed(ALICE, 1, 0, payload)]


@pytest.mark.asyncio
async def test_spliced_transfers_fail_the_digest(keys, transport):
    """Two sends under the same signed opening header (a resend of seq 0 with other content):
    chunks of one with the last chunk of the other never pass as either."""
    t = transport
    first, second = os.urandom(CHUNK * 2 + 1), os.urandom(CHUNK * 2 + 1)
    await _send(t, keys, first)
    a = await _drain(t)
    await _send(t, keys, second)
    b = await _drain(t)
    assert a[0]["signature"] == b[0]["signature"]  # same opening header, same (deterministic) signature
    assert _feed_all(_reassembler(keys), a[:2] + b[2:]) == [Rejected(ALICE, 1, "sha256 mismatch")]


def test_feed_rejects_malformed_dicts(keys):
    with pytest.raises(ProtocolError):
        _reassembler(keys).feed({"type": "weights.chunk", "job_id": JOB})


@pytest.mark.asyncio
async def test_backpressure_with_slow_receiver(keys):
    t = MemoryTransport(capacity=5)
    payload = os.urandom(3 * 1024 * 1024)
    r = _reassembler(keys)
    full_seen = 0

    async def slow_receiver():
        while True:
            result = r.feed(from_message(await t.receive("dfl.node.9")))
            await asyncio.sleep(0.01)
            if result is not None:
                return result

    original_send = t.send

    async def counting_send(channel, message):
        nonlocal full_seen
        try:
            await original_send(channel, message)
        except ChannelFull:
            full_seen += 1
            raise

    t.send = counting_send
    receiver = asyncio.create_task(slow_receiver())
    await asyncio.sleep(0)
    chunk = 64 * 1024  # 48 chunks through a 5-slot channel
    sent = await send_payload(
        t, "dfl.node.9", job_id=JOB, round=1, sender=ALICE, seq=0, payload=payload, key=keys[ALICE], chunk_bytes=chunk
    )
    assert sent == len(payload) and full_seen > 0
    assert await asyncio.wait_for(receiver, 10) == Completed(ALICE, 1, 0, payload)


@pytest.mark.asyncio
async def test_full_channel_backs_off_then_gives_up(keys):
    t = MemoryTransport(capacity=1)
    attempts, original_send = 0, t.send

    async def counting_send(channel, message):
        nonlocal attempts
        attempts += 1
        await original_send(channel, message)

    t.send = counting_send
    start = time.monotonic()
    with pytest.raises(ChannelFull):
        await _send(t, keys, os.urandom(CHUNK * 2), full_retry_s=0.3)
    assert time.monotonic() - start >= 0.3
    # exponential backoff 5, 10, 20, 40, 80, 160, 200 ms: a handful of retries, not a busy loop
    assert 7 <= attempts <= 12, attempts  # 8 expected
    assert t.pending("dfl.node.9") == 1


def test_is_channel_full_matches_by_class_name():
    class ChannelFull(Exception):  # e.g. channels.exceptions.ChannelFull
        pass

    class Sub(ChannelFull):
        pass

    assert is_channel_full(ChannelFull()) and is_channel_full(Sub())
    assert not is_channel_full(RuntimeError("ChannelFull"))


@pytest.mark.asyncio
async def test_memory_transport_copies_and_validates():
    t = MemoryTransport()
    msg = {"type": "peer.heartbeat", "payload": [1]}
    await t.send("a.b", msg)
    msg["payload"].append(2)
    assert await t.receive("a.b") == {"type": "peer.heartbeat", "payload": [1]}
    with pytest.raises(ValueError):
        await t.send("bad name!", {})
