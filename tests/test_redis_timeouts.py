"""Every Redis connection outlives its own blocking reads. redis-py 8 gives each connection a
5 s socket timeout by default, the same as channels_redis' idle BZPOPMIN: without explicit
options every idle websocket died with 1011 after ~5 s. Checked on the connections the code
really builds (channel layer, Celery broker, the peers' transport), then by idling on real Redis
past the old limit."""

import asyncio
import time

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

from hub.celery import app as celery_app
from peers.transport.redis import RedisChannelTransport

pytestmark = pytest.mark.services  # real Redis

IDLE_S = 7  # past redis-py's 5 s default


async def test_channel_layer_connections_outlive_its_blocking_pop():
    layer = get_channel_layer()
    pool = layer.connection(0).connection_pool
    kwargs = pool.connection_kwargs
    assert kwargs["socket_timeout"] is None or kwargs["socket_timeout"] > layer.brpop_timeout + 5
    assert kwargs["socket_keepalive"] is True
    assert kwargs["health_check_interval"] > 0


async def test_channel_layer_receive_survives_an_idle_wait():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    waiting = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(IDLE_S)
    assert not waiting.done(), f"receive ended while idle: {waiting.exception() if waiting.done() else ''}"
    await layer.send(channel, {"type": "after.idle"})
    message = await asyncio.wait_for(waiting, timeout=10)
    assert message["type"] == "after.idle"
    await layer.flush()


def test_celery_broker_connections_outlive_its_blocking_pop():
    assert settings.CELERY_BROKER_URL.startswith("redis")
    with celery_app.connection_for_read() as conn:
        channel = conn.default_channel
        kwargs = channel.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] is None or kwargs["socket_timeout"] > channel.brpop_timeout + 5
        assert kwargs["socket_keepalive"] is True
        assert channel.health_check_interval > 0


async def test_peer_transport_connections_outlive_its_blocking_pop():
    sender = RedisChannelTransport(settings.REDIS_URL, prefix="timeouts-test.")
    receiver = RedisChannelTransport(settings.REDIS_URL, prefix="timeouts-test.", block_s=5)
    try:
        kwargs = receiver._redis.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] is None or kwargs["socket_timeout"] > receiver.block_s
        assert kwargs["socket_keepalive"] is True
        waiting = asyncio.ensure_future(receiver.receive("node.idle-test"))
        started = time.monotonic()
        await asyncio.sleep(IDLE_S)
        assert not waiting.done(), f"receive ended while idle: {waiting.exception() if waiting.done() else ''}"
        await sender.send("node.idle-test", {"type": "after.idle"})
        message = await asyncio.wait_for(waiting, timeout=10)
        assert message["type"] == "after.idle" and time.monotonic() - started >= IDLE_S
    finally:
        await sender.close()
        await receiver.close()


@pytest.fixture(autouse=True)
def _fresh_layer():
    """channels caches layers per event loop; each async test gets its own."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()
