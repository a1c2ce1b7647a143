"""Redis transport, wire-compatible with ``channels_redis.core.RedisChannelLayer`` (4.3).

For normal channel names (no ``!``) channels_redis stores each channel as a sorted set
at key ``prefix + channel``; members are 12 random bytes + ``msgpack.packb(message)``,
scored by send time. A peer using this class and the platform using channels_redis
(same Redis, same prefix, msgpack serializer, no encryption) can message each other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict

import msgpack
import redis.asyncio as aioredis

from peers.protocol import NAME_RE
from peers.transport.base import ChannelFull

log = logging.getLogger(__name__)

RANDOM_PREFIX_LENGTH = 12  # channels_redis default random_prefix_length
ASGI_CHANNEL_KEY = "__asgi_channel__"  # added by channels_redis group_send; stripped on receive


class RedisChannelTransport:
    def __init__(
        self,
        url: str,
        prefix: str = "asgi",
        capacity: int = 100,
        expiry: int = 60,
        block_s: float = 5.0,
    ):
        self.prefix = prefix
        self.capacity = capacity
        self.expiry = expiry
        self.block_s = block_s
        # The socket must outlive a blocking BZPOPMIN, or every idle wait ends in a TimeoutError.
        self._redis = aioredis.from_url(url, socket_timeout=block_s + 10, socket_connect_timeout=10)
        # One in-flight BZPOPMIN per channel, kept across cancellation so a message
        # popped while the caller's receive() was cancelled is not lost.
        self._pending: dict[str, asyncio.Task] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def _key(self, channel: str) -> str:
        if not isinstance(channel, str) or not NAME_RE.match(channel):
            raise ValueError(f"invalid channel name {channel!r} (process-local '!' names unsupported)")
        return self.prefix + channel

    async def send(self, channel: str, message: dict) -> None:
        if not isinstance(message, dict):
            raise TypeError("message must be a dict")
        if ASGI_CHANNEL_KEY in message:
            raise ValueError(f"{ASGI_CHANNEL_KEY} is reserved")
        key = self._key(channel)
        member = os.urandom(RANDOM_PREFIX_LENGTH) + msgpack.packb(message, use_bin_type=True)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, min=0, max=int(time.time()) - int(self.expiry))
            pipe.zcount(key, "-inf", "+inf")
            _, queued = await pipe.execute()
        if queued >= self.capacity:
            raise ChannelFull(channel)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {member: time.time()})
            pipe.expire(key, int(self.expiry))
            await pipe.execute()

    async def receive(self, channel: str) -> dict:
        key = self._key(channel)
        async with self._locks[channel]:
            while True:
                task = self._pending.get(channel)
                if task is None or task.cancelled():
                    task = asyncio.ensure_future(self._redis.bzpopmin(key, timeout=self.block_s))
                    self._pending[channel] = task
                try:
                    result = await asyncio.shield(task)
                except asyncio.CancelledError:
                    raise  # the caller gave up: the task stays pending for the next receive()
                except Exception:
                    del self._pending[channel]
                    raise
                del self._pending[channel]
                if result is None:
                    continue
                message = self._decode(result[1])
                if message is not None:
                    return message

    @staticmethod
    def _decode(member: bytes) -> dict | None:
        try:
            message = msgpack.unpackb(member[RANDOM_PREFIX_LENGTH:], raw=False)
        except Exception as exc:
            log.warning("dropping undecodable message: %s", exc)
            return None
        if not isinstance(message, dict):
            log.warning("dropping non-dict message of type %s", type(message).__name__)
            return None
        message.pop(ASGI_CHANNEL_KEY, None)
        return message

    async def close(self) -> None:
        for task in self._pending.values():
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
        self._pending.clear()
        await self._redis.aclose()
