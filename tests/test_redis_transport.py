"""RedisChannelTransport against a real Redis and a real channels_redis layer.

Tests may import channels_redis; peers/ must not. Each test uses its own key prefix
and deletes its keys afterwards.
"""

import asyncio
import os
import uuid

import pytest
import redis
from channels.exceptions import ChannelFull as ChannelsChannelFull
from channels_redis.core import RedisChannelLayer

from peers import protocol as p
from peers.transport import ChannelFull, is_channel_full
from peers.transport.redis import RedisChannelTransport
from peers.wire.exchange import Completed, Reassembler, send_payload
from peers.wire.signing import NodeKey
from tests.federation import sample_plan

pytestmark = pytest.mark.services  # real Redis

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")  # `make test` uses db 9


@pytest.fixture
def prefix():
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def transport(prefix):
    t = RedisChannelTransport(URL, prefix=prefix, capacity=100, block_s=1)
    yield t
    await t.close()


@pytest.fixture
async def layer(prefix):
    layer = RedisChannelLayer(hosts=[URL], prefix=prefix)
    yield layer
    await layer.close_pools()


def _plan():
    return sample_plan(job_id=1, round_number=0, node_id=4, neighbour=5)


@pytest.mark.asyncio
async def test_platform_to_peer(transport, layer):
    await layer.send(p.node_channel(4), p.to_message(_plan()))
    msg = await asyncio.wait_for(transport.receive(p.node_channel(4)), 5)
    assert p.from_message(msg) == _plan()


@pytest.mark.asyncio
async def test_platform_group_send_reaches_peer(transport, layer):
    await layer.group_add(p.job_group(1), p.node_channel(4))
    event = p.JobEvent(job_id=1, event="started", detail={"rounds": 3})
    await layer.group_send(p.job_group(1), p.to_message(event))
    assert p.from_message(await asyncio.wait_for(transport.receive(p.node_channel(4)), 5)) == event


@pytest.mark.asyncio
async def test_peer_to_platform(transport, layer):
    report = p.PeerReport(
        job_id=1,
        round=0,
        node_id=4,
        train_loss=0.3,
        eval_loss=0.4,
        accuracy=0.8,
        samples=600,
        eval_samples=100,
        model_hash="ef" * 32,
        bytes_sent=1,
        bytes_received=2,
        duration_s=0.5,
        rejected=[{"sender": 5, "reason": "sha256 mismatch"}],
    )
    chunk = p.WeightsChunk(
        job_id=1,
        round=0,
        sender=4,
        seq=0,
        index=0,
        count=1,
        size=3,
        sha256="00" * 32,
        signature=b"\x00\x01" * 32,
        data=b"\xff\x00\x80",
    )
    for obj in (report, chunk):
        await transport.send("dfl.platform", p.to_message(obj))
        assert p.from_message(await asyncio.wait_for(layer.receive("dfl.platform"), 5)) == obj


@pytest.mark.asyncio
async def test_order_is_preserved(transport):
    for i in range(20):
        await transport.send("dfl.node.1", {"type": "t", "i": i})
    assert [(await transport.receive("dfl.node.1"))["i"] for _ in range(20)] == list(range(20))


@pytest.mark.asyncio
async def test_channel_full_at_capacity(prefix, layer):
    t = RedisChannelTransport(URL, prefix=prefix, capacity=3)
    try:
        for i in range(3):
            await t.send("dfl.node.2", {"i": i})
        with pytest.raises(ChannelFull) as info:
            await t.send("dfl.node.2", {"i": 3})
        assert is_channel_full(info.value)
        # channels_redis counts the same queue (its default capacity is 100, so use its own check)
        small = RedisChannelLayer(hosts=[URL], prefix=prefix, capacity=3)
        with pytest.raises(ChannelsChannelFull) as info:
            await small.send("dfl.node.2", {"i": 4})
        assert is_channel_full(info.value)
        await small.close_pools()
        assert (await t.receive("dfl.node.2"))["i"] == 0
        await t.send("dfl.node.2", {"i": 5})  # room again
    finally:
        await t.close()


@pytest.mark.asyncio
async def test_cancelled_receive_loses_nothing(transport):
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(transport.receive("dfl.node.3"), 0.2)
    await transport.send("dfl.node.3", {"n": 1})
    await transport.send("dfl.node.3", {"n": 2})
    assert await asyncio.wait_for(transport.receive("dfl.node.3"), 5) == {"n": 1}
    assert await asyncio.wait_for(transport.receive("dfl.node.3"), 5) == {"n": 2}


@pytest.mark.asyncio
async def test_garbage_in_queue_is_skipped(prefix, transport):
    client = redis.Redis.from_url(URL)
    client.zadd(prefix + "dfl.node.8", {b"x" * 12 + b"\xc1": 1.0, os.urandom(12) + b"\x93\x01\x02\x03": 2.0})
    client.close()
    await transport.send("dfl.node.8", {"ok": True})
    assert await asyncio.wait_for(transport.receive("dfl.node.8"), 5) == {"ok": True}


@pytest.mark.asyncio
async def test_invalid_channel_names(transport):
    for name in ("specific.abc!xyz", "", "a b", "x" * 100):
        with pytest.raises(ValueError):
            await transport.send(name, {})


@pytest.mark.asyncio
async def test_multi_chunk_payload_through_redis(prefix):
    sender_t = RedisChannelTransport(URL, prefix=prefix, capacity=4)
    receiver_t = RedisChannelTransport(URL, prefix=prefix, block_s=1)
    key = NodeKey.generate()
    payload = os.urandom(3 * 1024 * 1024 + 7)
    reassembler = Reassembler({9: key.public_key_hex}, job_id=1, max_bytes=4 << 20)

    async def receive_one():
        while True:
            result = reassembler.feed(p.from_message(await receiver_t.receive(p.node_channel(10))))
            if result is not None:
                return result

    try:
        receiver = asyncio.create_task(receive_one())
        sent = await send_payload(
            sender_t,
            p.node_channel(10),
            job_id=1,
            round=0,
            sender=9,
            seq=0,
            payload=payload,
            key=key,
            chunk_bytes=256 * 1024,
        )
        assert sent == len(payload)
        assert await asyncio.wait_for(receiver, 20) == Completed(9, 0, 0, payload)
    finally:
        await sender_t.close()
        await receiver_t.close()


@pytest.mark.asyncio
async def test_big_members_arrive_as_views_small_replies_stay_bytes(prefix, transport, layer):
    from peers.transport.lean_parser import LEAN_PARSER, VIEW_MIN_BYTES

    # redis-py without hiredis is what the project installs: the lean parser must be the one in use
    # (this fails loudly if a redis-py upgrade moves the private names it builds on).
    assert LEAN_PARSER is not None
    big = os.urandom(VIEW_MIN_BYTES * 3 + 7)
    await transport.send("dfl.node.8", {"type": "blob", "data": big})
    await transport.send("dfl.node.8", {"type": "small", "data": b"x" * 10})
    assert (await transport.receive("dfl.node.8"))["data"] == big
    assert (await transport.receive("dfl.node.8"))["data"] == b"x" * 10
    connection = transport._redis.connection_pool._available_connections[0]
    assert isinstance(connection._parser, LEAN_PARSER)
    await transport._redis.set(prefix + "plain", b"ok")
    assert await transport._redis.get(prefix + "plain") == b"ok"  # small replies: bytes, as before
    await transport._redis.set(prefix + "big", big)
    got = await transport._redis.get(prefix + "big")
    assert isinstance(got, memoryview) and got == big
    # and the platform's channels_redis reads what went through the lean path unchanged
    await transport.send("dfl.node.9", {"type": "blob", "data": big})
    assert (await layer.receive("dfl.node.9"))["data"] == big
