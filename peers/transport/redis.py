"""Redis transport, wire-compatible with ``channels_redis.core.RedisChannelLayer`` (4.3).

For normal channel names (no ``!``) channels_redis stores each channel as a sorted set
at key ``prefix + channel``; members are 12 random bytes + ``msgpack.packb(message)``,
scored by send time. A peer using this class and the platform using channels_redis
(same Redis, same prefix, msgpack serializer, no encryption) can message each other.

Speed (see docs/benchmarks.md, ``python -m bench exchange``):

- a send is one round trip: one MULTI/EXEC drops expired members, adds the message(s) and
  (small Lua script, no payload bytes in Lua) takes back whatever does not fit, so the
  channel is never seen over capacity (channels_redis needs two trips and can overshoot under
  races); ``send_many`` adds a batch of messages in that single trip, as many as fit, in order;
- scores strictly increase per transport, so a batch keeps its order in the sorted set;
- ``receive`` pops up to ``prefetch`` waiting messages at once (ZPOPMIN with a count) and
  only blocks (BZPOPMIN) when the channel is empty; popped messages wait in this object,
  so a cancelled ``receive`` loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import defaultdict, deque

import msgpack
import redis.asyncio as aioredis

from peers.protocol import NAME_RE
from peers.transport.base import ChannelFull

log = logging.getLogger(__name__)

RANDOM_PREFIX_LENGTH = 12  # channels_redis default random_prefix_length
ASGI_CHANNEL_KEY = "__asgi_channel__"  # added by channels_redis group_send; stripped on receive
PREFETCH = 16  # messages popped per round trip while a channel has a backlog
PREFETCH_BYTES = 8 << 20  # ...while their total size stays under this (estimated from the last batch)

# Runs inside the same MULTI/EXEC as the ZADD of a batch, so nobody sees the channel over
# capacity: if it is, this removes the batch's newest members until it fits (or none of them
# is left) and returns how many of the batch stay. KEYS[1] channel key; ARGV: capacity, then
# score1, prefix1, score2, prefix2, ... (each member's random prefix; members are not passed:
# turning megabytes of ARGV into Lua strings doubles Redis' CPU per byte).
_TRIM_SCRIPT = """
local key = KEYS[1]
local excess = redis.call('ZCARD', key) - tonumber(ARGV[1])
local kept = (#ARGV - 1) / 2
local i = kept
while excess > 0 and i >= 1 do
  local score, prefix = ARGV[2 * i], ARGV[2 * i + 1]
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, score, score)) do
    if string.sub(member, 1, #prefix) == prefix then
      redis.call('ZREM', key, member)
      excess = excess - 1
      kept = kept - 1
      break
    end
  end
  i = i - 1
end
return kept
"""


class RedisChannelTransport:
    def __init__(
        self,
        url: str,
        prefix: str = "asgi",
        capacity: int = 100,
        expiry: int = 60,
        block_s: float = 5.0,
        prefetch: int = PREFETCH,
    ):
        self.prefix = prefix
        self.capacity = capacity
        self.expiry = expiry
        self.block_s = block_s
        self.prefetch = max(1, int(prefetch))
        # The socket must outlive a blocking BZPOPMIN, or every idle wait ends in a TimeoutError.
        self._redis = aioredis.from_url(url, socket_timeout=block_s + 10, socket_connect_timeout=10)
        self._trim = self._redis.register_script(_TRIM_SCRIPT)
        self._last_score = 0.0
        # One in-flight fetch per channel, kept across cancellation so messages popped while
        # the caller's receive() was cancelled are not lost; what it popped waits in _buffers.
        self._pending: dict[str, asyncio.Task] = {}
        self._buffers: defaultdict[str, deque] = defaultdict(deque)
        self._batch: dict[str, int] = {}  # channel -> how many to pop next time
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def _key(self, channel: str) -> str:
        if not isinstance(channel, str) or not NAME_RE.match(channel):
            raise ValueError(f"invalid channel name {channel!r} (process-local '!' names unsupported)")
        return self.prefix + channel

    def _score(self) -> float:
        """Send time, strictly increasing within this transport (keeps batches in order)."""
        now = time.time()
        if now <= self._last_score:
            now = math.nextafter(self._last_score, math.inf)
        self._last_score = now
        return now

    @staticmethod
    def _member(message: dict) -> bytes:
        if not isinstance(message, dict):
            raise TypeError("message must be a dict")
        if ASGI_CHANNEL_KEY in message:
            raise ValueError(f"{ASGI_CHANNEL_KEY} is reserved")
        return os.urandom(RANDOM_PREFIX_LENGTH) + msgpack.packb(message, use_bin_type=True)

    async def send(self, channel: str, message: dict) -> None:
        if not await self.send_many(channel, [message]):
            raise ChannelFull(channel)

    async def send_many(self, channel: str, messages: list[dict]) -> int:
        """Queue ``messages`` in order in one round trip; returns how many fit (a prefix of
        the list; 0 when the channel is full). Never leaves the channel over capacity."""
        key = self._key(channel)
        members = [self._member(m) for m in messages]
        if not members:
            return 0
        scored = [(member, self._score()) for member in members]
        trim_args: list = [int(self.capacity)]
        for member, score in scored:
            trim_args += [repr(score), member[:RANDOM_PREFIX_LENGTH]]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, min=0, max=int(time.time()) - int(self.expiry))
            pipe.zadd(key, dict(scored))
            pipe.expire(key, int(self.expiry))
            await self._trim(keys=[key], args=trim_args, client=pipe)
            results = await pipe.execute()
        return int(results[-1])

    async def _fetch(self, key: str, channel: str) -> None:
        """Pop a batch (or block for one message) into the channel's buffer."""
        count = self._batch.get(channel, self.prefetch)
        popped = await self._redis.zpopmin(key, count) if count > 1 else []
        if popped:
            members = [m for m, _ in popped]
            size = sum(len(m) for m in members) / len(members)
            self._batch[channel] = max(1, min(self.prefetch, int(PREFETCH_BYTES // max(size, 1))))
        else:
            self._batch[channel] = self.prefetch
            result = await self._redis.bzpopmin(key, timeout=self.block_s)
            members = [] if result is None else [result[1]]
        self._buffers[channel].extend(members)

    async def receive(self, channel: str) -> dict:
        key = self._key(channel)
        buffer = self._buffers[channel]
        async with self._locks[channel]:
            while True:
                while buffer:
                    message = self._decode(buffer.popleft())
                    if message is not None:
                        return message
                task = self._pending.get(channel)
                if task is None or task.cancelled():
                    task = asyncio.ensure_future(self._fetch(key, channel))
                    self._pending[channel] = task
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    if task.done() and not task.cancelled():
                        del self._pending[channel]  # it finished: its messages are in the buffer
                    raise  # the caller gave up: a pending task stays for the next receive()
                except Exception:
                    del self._pending[channel]
                    raise
                del self._pending[channel]

    @staticmethod
    def _decode(member: bytes) -> dict | None:
        try:
            message = msgpack.unpackb(memoryview(member)[RANDOM_PREFIX_LENGTH:], raw=False)
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
        self._buffers.clear()
        await self._redis.aclose()
