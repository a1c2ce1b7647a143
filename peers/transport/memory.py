"""In-process transport: one bounded asyncio queue per channel (tests, local simulation)."""

from __future__ import annotations

import asyncio
import copy
from collections import defaultdict

from peers.protocol import NAME_RE
from peers.transport.base import ChannelFull


class MemoryTransport:
    """Shared by any number of peers running in the same event loop."""

    extensions: list[str] = []

    def __init__(self, capacity: int = 100):
        self.capacity = capacity
        self._queues: defaultdict[str, asyncio.Queue] = defaultdict(lambda: asyncio.Queue(maxsize=self.capacity))

    def _queue(self, channel: str) -> asyncio.Queue:
        if not isinstance(channel, str) or not NAME_RE.match(channel):
            raise ValueError(f"invalid channel name {channel!r}")
        return self._queues[channel]

    async def send(self, channel: str, message: dict) -> None:
        if not isinstance(message, dict):
            raise TypeError("message must be a dict")
        try:
            # Deep copy so sender and receiver never share mutable state, as over a wire.
            self._queue(channel).put_nowait(copy.deepcopy(message))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel: str) -> dict:
        return await self._queue(channel).get()

    def pending(self, channel: str) -> int:
        """Messages waiting on ``channel``."""
        return self._queue(channel).qsize()

    async def close(self) -> None:
        self._queues.clear()
