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


def test_celery_has_a_broker_of_its_own_and_a_redis_broker_gets_the_same_options():
    """Celery runs on RabbitMQ, which peers never reach (they get the channel layer's Redis);
    configured on a Redis instead, its connections get the options above."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    assert settings.CELERY_BROKER_URL.startswith("amqp://")
    assert settings.REDIS_URL not in settings.CELERY_BROKER_URL
    root = Path(__file__).resolve().parents[1]
    code = (
        "import json\nfrom celery import current_app\nimport hub.celery\n"
        "with hub.celery.app.connection_for_read() as conn:\n"
        "    channel = conn.default_channel\n"
        "    kw = channel.client.connection_pool.connection_kwargs\n"
        "    print(json.dumps({'timeout': kw['socket_timeout'], 'keepalive': kw['socket_keepalive'],"
        " 'brpop': channel.brpop_timeout, 'health': channel.health_check_interval}))"
    )
    env = {
        **os.environ,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "DJANGO_SETTINGS_MODULE": "hub.settings",
        "PLATFORM_SIGNING_KEY": settings.PLATFORM_SIGNING_KEY,
        "PYTHONPATH": os.pathsep.join([str(root / "platform"), str(root)]),
    }
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["timeout"] is None or seen["timeout"] > seen["brpop"] + 5
    assert seen["keepalive"] is True and seen["health"] > 0


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
