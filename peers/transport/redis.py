"""Redis transport, wire-compatible with ``channels_redis.core.RedisChannelLayer`` (4.3).

For normal channel names (no ``!``) channels_redis stores each channel as a sorted set
at key ``prefix + channel``; members are 12 random bytes + ``msgpack.packb(message)``,
scored by send time. A peer using this class and the platform using channels_redis
(same Redis, same prefix, msgpack serializer, no encryption) can message each other.

Speed (see docs/benchmarks.md, ``python -m bench exchange``):

- a send is one round trip: one MULTI/EXEC adds the batch (``send_many``: as many messages as
  fit, in order) and counts the inbox; only when that is over capacity does a second trip take
  back the batch's newest members. No Lua and nothing that reads or deletes other senders'
  messages, so the same code runs as a peer's ACL user on the peers' own Redis
  (``peers.acl``: the platform grants exactly those);
- scores strictly increase per transport, so a batch keeps its order in the sorted set;
- ``receive`` pops up to ``prefetch`` waiting messages per round trip (BZMPOP, Redis >= 7:
  blocks only while the channel is empty); popped messages wait in this object, so a
  cancelled ``receive`` loses nothing; messages older than ``expiry`` are dropped as they are
  popped (the sender cannot expire them: it has no right to);
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
from collections.abc import Awaitable, Callable

import msgpack
import redis.asyncio as aioredis
from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from peers.protocol import NAME_RE
from peers.transport.base import SEND_MANY, ChannelFull
from peers.transport.lean_parser import parser_options

log = logging.getLogger(__name__)

RANDOM_PREFIX_LENGTH = 12  # channels_redis default random_prefix_length
ASGI_CHANNEL_KEY = "__asgi_channel__"  # added by channels_redis group_send; stripped on receive
PREFETCH = 16  # messages popped per round trip while a channel has a backlog
PREFETCH_BYTES = 4 << 20  # ...while their total size stays under this (estimated from the last batch)


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


class NodeCredentials(CredentialProvider):
    """A node's user on the peers' exchange, as the platform's hello issued it. Redis forgets its
    node users when it restarts: ``renew`` (another hello) gets a new password then."""

    def __init__(self, username: str, password: str, renew: Callable[[], Awaitable[tuple[str, str]]] | None = None):
        self.username = username
        self.password = password
        self._renew = renew
        self._lock = asyncio.Lock()

    def get_credentials(self) -> tuple[str, str]:
        return self.username, self.password

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()

    async def renew(self, refused: tuple[str, str]) -> bool:
        """Replace the credentials Redis refused (once, however many connections saw it)."""
        if self._renew is None:
            return False
        async with self._lock:
            if self.get_credentials() == refused:
                self.username, self.password = await self._renew()
                log.info("exchange credentials renewed (%s)", self.username)
        return True


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
        credentials: NodeCredentials | None = None,
    ):
        self.prefix = prefix
        self.capacity = capacity
        self.expiry = expiry
        self.block_s = block_s
        self.prefetch = max(1, int(prefetch))
        self.credentials = credentials
        extra = {} if credentials is None else {"credential_provider": credentials}
        self._redis = aioredis.from_url(url, **connection_options(block_s), **parser_options(), **extra)
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

    async def _renewing(self, operation: Callable[[], Awaitable]):
        """Run a Redis operation, once more after a restart of the exchange: a pooled connection
        it closed fails once (a send may then arrive twice: receivers keep the first copy of a
        chunk), and when Redis refuses our node user (a restart forgets them) new credentials
        come from the platform first."""
        for attempt in (1, 2, 3):
            used = None if self.credentials is None else self.credentials.get_credentials()
            try:
                return await operation()
            except AuthenticationError:
                if attempt == 3 or used is None or not await self.credentials.renew(used):  # type: ignore[union-attr]
                    raise
            except RedisConnectionError:
                if attempt == 3:
                    raise
        raise AssertionError("unreachable")

    async def send_many(self, channel: str, messages: list[dict]) -> int:
        return await self._renewing(lambda: self._send_many(channel, messages))

    async def _send_many(self, channel: str, messages: list[dict]) -> int:
        """Queue ``messages`` in order in one round trip; returns how many fit (a prefix of
        the list; 0 when the channel is full).

        One MULTI/EXEC adds the batch and counts the inbox; when that count is over capacity
        a second trip takes back this batch's newest messages until it fits (a sender may only
        remove what it knows the members of: its own). A receiver popping in between can see
        the inbox over capacity by at most this batch, for one round trip."""
        key = self._key(channel)
        members = [self._member(m) for m in messages]
        if not members:
            return 0
        async with self._redis.pipeline(transaction=True) as pipe:
            # ZADD as a flat command: redis-py's zadd() takes a dict, and building one hashes
            # every (megabyte-sized) member in Python just to throw the hashes away.
            pipe.execute_command("ZADD", key, *[x for member in members for x in (repr(self._score()), member)])
            pipe.zcard(key)
            _, size = await pipe.execute()
        excess = min(int(size) - int(self.capacity), len(members))
        if excess > 0:
            await self._redis.zrem(key, *members[len(members) - excess :])
        return len(members) - max(excess, 0)

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
            popped = [(m, float(score)) for m, score in result[1]]  # type: ignore[misc,str-unpack]  # (key, [[member, score], ...])
        else:
            one = await self._redis.bzpopmin(key, timeout=self.block_s)
            if one is None:
                return
            popped = [(one[1], float(one[2]))]
        cutoff = time.time() - self.expiry
        members = [m for m, score in popped if score >= cutoff]
        if len(members) < len(popped):
            log.info("dropped %d expired message(s) from %s", len(popped) - len(members), channel)
        if not members:
            return
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
                    task = asyncio.ensure_future(self._renewing(lambda: self._fetch(key, channel)))
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
