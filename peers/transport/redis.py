"""Redis transport, wire-compatible with ``channels_redis.core.RedisChannelLayer`` (4.3).

For normal channel names (no ``!``) channels_redis stores each channel as a sorted set
at key ``prefix + channel``; members are 12 random bytes + ``msgpack.packb(message)``,
scored by send time. A peer using this class and the platform using channels_redis
(same Redis, same prefix, msgpack serializer, no encryption) can message each other.

Speed (see docs/benchmarks.md, ``python -m bench exchange``):

- a send is one round trip and exact about the capacity (channels_redis needs two trips and
  can overshoot it under races): small messages go through one Lua EVAL that drops expired
  members and adds what fits; big batches through one MULTI/EXEC that adds them and then (Lua,
  no payload bytes in Lua: turning megabytes of ARGV into Lua strings doubles Redis' CPU per
  byte) takes back the newest ones that do not fit, so nobody sees the channel over capacity;
  ``send_many`` adds a batch of messages in that single trip, as many as fit, in order;
- scores strictly increase per transport, so a batch keeps its order in the sorted set;
- ``receive`` pops up to ``prefetch`` waiting messages per round trip (BZMPOP, Redis >= 7:
  blocks only while the channel is empty); popped messages wait in this object, so a
  cancelled ``receive`` loses nothing;
- big members (weight chunks) reach us as views of what the socket read, not as the two
  further copies redis-py's pure-Python parser makes of every bulk string
  (``peers.transport.lean_parser``).
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
from redis.exceptions import ResponseError

from peers.protocol import NAME_RE
from peers.transport.base import SEND_MANY, ChannelFull
from peers.transport.lean_parser import parser_options

log = logging.getLogger(__name__)

RANDOM_PREFIX_LENGTH = 12  # channels_redis default random_prefix_length
ASGI_CHANNEL_KEY = "__asgi_channel__"  # added by channels_redis group_send; stripped on receive
PREFETCH = 16  # messages popped per round trip while a channel has a backlog
PREFETCH_BYTES = 4 << 20  # ...while their total size stays under this (estimated from the last batch)

# Small batches (round plans, reports, small chunks): one EVAL drops expired members, adds as
# many messages as fit, in order, and returns that number. KEYS[1] channel key; ARGV: cutoff,
# capacity, expiry, then score1, member1, score2, member2, ...
_ADD_SCRIPT = """
local key = KEYS[1]
redis.call('ZREMRANGEBYSCORE', key, 0, ARGV[1])
local room = tonumber(ARGV[2]) - redis.call('ZCARD', key)
local n = math.max(0, math.min(room, (#ARGV - 3) / 2))
for i = 1, n do
  redis.call('ZADD', key, ARGV[2 + 2 * i], ARGV[3 + 2 * i])
end
if n > 0 then
  redis.call('EXPIRE', key, ARGV[3])
end
return n
"""
SMALL_BATCH_BYTES = 64 * 1024  # up to this, members go through Lua; above, MULTI/EXEC + trim

# Big batches: runs inside the same MULTI/EXEC as the ZADD of a batch, so nobody sees the channel over
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


def connection_options(block_s: float) -> dict:
    """redis-py options for a transport that blocks up to ``block_s`` on a pop. redis-py 8 gives
    every connection socket_timeout=5 by default: the socket must outlive the blocking pop, or
    every idle wait ends in a TimeoutError. Keepalive and health checks find dead connections."""
    return {
        "socket_timeout": block_s + 10,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }


class RedisChannelTransport:
    extensions = [SEND_MANY]

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
        self._redis = aioredis.from_url(url, **connection_options(block_s), **parser_options())
        self._last_score = 0.0
        self._has_bzmpop = True
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
        cutoff = int(time.time()) - int(self.expiry)
        if sum(len(m) for m in members) <= SMALL_BATCH_BYTES:
            args: list = [cutoff, int(self.capacity), int(self.expiry)]
            for member, score in scored:
                args += [repr(score), member]
            return int(await self._redis.eval(_ADD_SCRIPT, 1, key, *args))
        trim_args: list = [int(self.capacity)]
        for member, score in scored:
            trim_args += [repr(score), member[:RANDOM_PREFIX_LENGTH]]
        # EVAL, not a registered Script: redis-py checks SCRIPT EXISTS before every pipeline
        # that holds one (an extra round trip), and an EVALSHA failing inside EXEC would leave
        # the batch untrimmed.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, min=0, max=cutoff)
            # ZADD as a flat command: redis-py's zadd() takes a dict, and building one hashes
            # every (megabyte-sized) member in Python just to throw the hashes away.
            pipe.execute_command("ZADD", key, *[x for member, score in scored for x in (repr(score), member)])
            pipe.expire(key, int(self.expiry))
            pipe.eval(_TRIM_SCRIPT, 1, key, *trim_args)
            results = await pipe.execute()
        return int(results[-1])

    async def _fetch(self, key: str, channel: str) -> None:
        """Pop up to a batch of messages into the channel's buffer, blocking while it is empty
        (BZMPOP: one command, one round trip, Redis >= 7)."""
        count = self._batch.get(channel, self.prefetch)
        if self._has_bzmpop:
            try:
                result = await self._redis.bzmpop(self.block_s, 1, [key], min=True, count=count)
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._has_bzmpop = False  # Redis < 7: one message per round trip
                return
            if not result:
                return
            members = [m for m, _ in result[1]]  # type: ignore[misc,str-unpack]  # (key, [[member, score], ...])
        else:
            popped = await self._redis.bzpopmin(key, timeout=self.block_s)
            if popped is None:
                return
            members = [popped[1]]
        size = sum(len(m) for m in members) / len(members)
        self._batch[channel] = max(1, min(self.prefetch, int(PREFETCH_BYTES // max(size, 1))))
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
