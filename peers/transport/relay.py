"""The exchange through the platform's websocket relay (``/ws/node/``, platform/nodes/relay.py),
for a peer that cannot reach the peers' Redis: behind a firewall that lets only the platform's
HTTPS port through, or joining the embedded demo. Same interface as the Redis transport.

Binary msgpack frames. Inbound: ``relay.message`` (a message popped from this node's inbox) and
``relay.ack`` (the answer to one of our sends). Outbound: ``relay.send`` with an id, the
recipient's node id and a batch of messages; the ack says how many the recipient's inbox took
(fewer: it is full, back off) or why the relay refused them.

One connection, opened on first use and again after it drops (the caller's retry loop, as with
Redis). Frames stay under daphne's default 1 MiB message limit: chunks of at most
``max_chunk_bytes`` and batches of at most ``FRAME_BYTES``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from peers.transport.base import SEND_MANY, ChannelFull

log = logging.getLogger(__name__)

FRAME_BYTES = 900 * 1024  # a relay.send frame, under daphne's default 1 MiB websocket message
MAX_INBOUND_BYTES = 8 << 20


class RelayRefused(RuntimeError):
    """The relay would not forward a message (a recipient this node may not send to, ...)."""


def relay_url(server: str) -> str:
    """The relay's address on a platform at ``server`` (http -> ws, https -> wss)."""
    base = server.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/ws/node/"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/ws/node/"
    raise ValueError(f"platform URL must start with http:// or https://, got {server!r}")


def _node_id(channel: str) -> int:
    prefix = "dfl.node."
    if not channel.startswith(prefix) or not channel[len(prefix) :].isdigit():
        raise ValueError(f"the relay carries node inboxes only, not {channel!r}")
    return int(channel[len(prefix) :])


class RelayTransport:
    extensions = [SEND_MANY]
    max_chunk_bytes = 256 * 1024  # send_payload cuts weights into chunks no bigger

    def __init__(self, url: str, token: str, open_timeout: float = 20.0):
        self.url = url
        self._token = token
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._inbox: asyncio.Queue[dict] = asyncio.Queue()
        self._acks: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._connecting = asyncio.Lock()
        self._closed: BaseException | None = None

    async def _connection(self) -> ClientConnection:
        async with self._connecting:
            if self._ws is None:
                self._ws = await connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self._token}"},
                    max_size=MAX_INBOUND_BYTES,
                    open_timeout=self._open_timeout,
                )
                self._closed = None
                self._reader = asyncio.create_task(self._read(self._ws))
            return self._ws

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                try:
                    frame = msgpack.unpackb(data, raw=False) if isinstance(data, bytes) else None
                except Exception:
                    frame = None
                if not isinstance(frame, dict):
                    log.warning("relay: dropped a frame that is not a msgpack map")
                elif frame.get("type") == "relay.message" and isinstance(frame.get("message"), dict):
                    self._inbox.put_nowait(frame["message"])
                elif frame.get("type") == "relay.ack":
                    waiter = self._acks.pop(frame.get("id"), None)  # type: ignore[arg-type]
                    if waiter is not None and not waiter.done():
                        waiter.set_result(frame)
        except ConnectionClosed as exc:
            self._lost(exc)
            return
        self._lost(ConnectionError("relay closed the connection"))

    def _lost(self, exc: BaseException) -> None:
        """The connection is gone: fail whoever waits, reconnect on next use."""
        self._ws = None
        self._closed = exc
        for waiter in self._acks.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"relay connection lost: {exc}"))
        self._acks.clear()
        self._inbox.put_nowait({})  # wakes a waiting receive(), which then raises

    async def send(self, channel: str, message: dict) -> None:
        if not await self.send_many(channel, [message]):
            raise ChannelFull(channel)

    async def send_many(self, channel: str, messages: list[dict]) -> int:
        """Forward ``messages`` in order, in frames of at most FRAME_BYTES; returns how many the
        recipient's inbox took (a prefix of the list)."""
        to = _node_id(channel)
        sent = 0
        for frame in _frames(messages):
            took = await self._send_frame(to, frame)
            sent += took
            if took < len(frame):
                break
        return sent

    async def _send_frame(self, to: int, messages: list[dict]) -> int:
        ws = await self._connection()
        request_id = next(self._ids)
        waiter = asyncio.get_running_loop().create_future()
        self._acks[request_id] = waiter
        try:
            await ws.send(msgpack.packb({"type": "relay.send", "id": request_id, "to": to, "messages": messages}))
        except ConnectionClosed as exc:
            self._acks.pop(request_id, None)
            self._lost(exc)
            raise ConnectionError(f"relay connection lost: {exc}") from exc
        ack = await waiter
        if "error" in ack:
            raise RelayRefused(str(ack["error"]))
        return int(ack.get("sent", 0))

    async def receive(self, channel: str) -> dict:
        await self._connection()  # the relay starts forwarding the inbox once connected
        message = await self._inbox.get()
        if not message:  # the connection dropped while we waited
            raise ConnectionError(f"relay connection lost: {self._closed}")
        return message

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def _frames(messages: list[dict]) -> list[list[dict]]:
    """Consecutive groups of messages whose packed size stays under FRAME_BYTES."""
    frames: list[list[dict]] = [[]]
    size = 0
    for message in messages:
        packed = len(msgpack.packb(message))
        if packed > FRAME_BYTES:
            raise ValueError(f"a message of {packed} bytes does not fit a relay frame ({FRAME_BYTES})")
        if frames[-1] and size + packed > FRAME_BYTES:
            frames.append([])
            size = 0
        frames[-1].append(message)
        size += packed
    return frames
