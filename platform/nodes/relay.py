"""The exchange over the platform's own websocket, for peers that cannot reach the peers' Redis:
an operator behind a firewall (only the platform's HTTPS port is open to it) or a participant
joining the embedded demo (whose inboxes live in daphne's memory).

``/ws/node/`` takes the node's bearer token (``Authorization`` header) and speaks msgpack in
binary frames (``peers.transport.relay`` is the peer's side):

- the relay pops the node's inbox (the same inbox the platform writes plans to, on the ``peers``
  layer) and forwards each message: ``{"type": "relay.message", "message": {...}}``;
- the peer sends ``{"type": "relay.send", "id": n, "to": node_id, "messages": [...]}``; the relay
  adds to the inbox of ``to`` only if the node may send there (its neighbours in its open
  rounds, as ``nodes.exchange`` grants on Redis), stamps the sender by refusing any message
  whose ``sender`` is not the node, and answers ``{"type": "relay.ack", "id": n, "sent": k}``
  (``k`` < len(messages): the inbox is full; the peer backs off) or ``{..., "error": "..."}``.

Nothing from the wire is trusted beyond msgpack's plain types: no pickle, frames capped at
``MAX_FRAME_BYTES``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgpack
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncWebsocketConsumer

from peers.protocol import node_channel

from . import exchange
from .models import Node

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 4 << 20  # a relay.send batch (the peer sends at most ~1 MiB of chunks at a time)
GRANTS_TTL_S = 2.0  # how long a node's allowed recipients are cached before the next look-up
GRANTS_MIN_INTERVAL_S = 0.25  # and never looked up more often than this (a hostile node's misses)
TOKEN_CHECK_S = 5.0  # how soon a revoked token's relay session ends


class NodeRelay(AsyncWebsocketConsumer):
    channel_layer_alias = None  # no channel of its own: it reads the node's inbox instead

    async def connect(self) -> None:
        token = _bearer(self.scope)
        node = await database_sync_to_async(Node.authenticate)(token) if token else None
        if node is None:
            await self.close(code=4401)
            return
        self.node: Node = node
        self.layer = exchange.plan_layer()
        self.inbox = node_channel(self.node.id)
        self._grants: set[int] = set()
        self._grants_at = 0.0
        await self.accept()
        self.tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._watch_token())]
        log.info("node %s connected to the relay", self.node.id)

    async def disconnect(self, code):
        for task in getattr(self, "tasks", []):
            task.cancel()

    async def _watch_token(self) -> None:
        """A new token (or the node deleted) ends the session its old token opened."""
        while True:
            await asyncio.sleep(TOKEN_CHECK_S)
            if not await database_sync_to_async(_token_still_valid)(self.node):
                log.info("node %s: token revoked, closing its relay session", self.node.id)
                await self.close(code=4401)
                return

    async def _pump(self) -> None:
        """Forward the node's inbox, in order, as long as the socket lives."""
        try:
            while True:
                message = await self.layer.receive(self.inbox)
                await self.send(bytes_data=msgpack.packb({"type": "relay.message", "message": message}))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the layer went away: the peer reconnects
            log.warning("relay for node %s stopped: %s", self.node.id, exc)
            await self.close(code=1011)

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is None or len(bytes_data) > MAX_FRAME_BYTES:
            await self._answer(None, error=f"frames are binary msgpack of at most {MAX_FRAME_BYTES} bytes")
            return
        try:
            frame = msgpack.unpackb(bytes_data, raw=False, strict_map_key=True)
        except Exception:
            await self._answer(None, error="frame is not msgpack")
            return
        if not isinstance(frame, dict) or frame.get("type") != "relay.send":
            await self._answer(None, error="expected a relay.send frame")
            return
        request_id, to, messages = frame.get("id"), frame.get("to"), frame.get("messages")
        if type(to) is not int or not isinstance(messages, list) or not messages:
            await self._answer(request_id, error="relay.send needs an integer 'to' and a non-empty list 'messages'")
            return
        if not all(isinstance(m, dict) for m in messages):
            await self._answer(request_id, error="every message must be a map")
            return
        if any("sender" in m and m["sender"] != self.node.id for m in messages):
            await self._answer(request_id, error=f"messages must come from node {self.node.id}")
            return
        if not await self._may_send_to(to):
            await self._answer(request_id, error=f"node {self.node.id} may not send to node {to} now")
            return
        sent = 0
        for message in messages:
            try:
                await self.layer.send(node_channel(to), message)
            except ChannelFull:
                break
            sent += 1
        await self._answer(request_id, sent=sent)

    async def _answer(self, request_id, **fields) -> None:
        await self.send(bytes_data=msgpack.packb({"type": "relay.ack", "id": request_id, **fields}))

    async def _may_send_to(self, to: int) -> bool:
        """From the database at most every GRANTS_MIN_INTERVAL_S: a recipient not in the cache
        (a round just opened) waits for the next look-up instead of being refused on stale grants."""
        if to not in self._grants or time.monotonic() - self._grants_at > GRANTS_TTL_S:
            await asyncio.sleep(max(0.0, self._grants_at + GRANTS_MIN_INTERVAL_S - time.monotonic()))
            self._grants = await database_sync_to_async(_grants_of)(self.node.id)
            self._grants_at = time.monotonic()
        return to in self._grants


def _token_still_valid(node: Node) -> bool:
    return Node.objects.filter(pk=node.pk, token_id=node.token_id, token_hash=node.token_hash).exists()


def _grants_of(node_id: int) -> set[int]:
    from jobs.orchestration import exchange_grants

    return exchange_grants({node_id})[node_id]


def _bearer(scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text = value.decode("latin1")
            return text[7:] if text.startswith("Bearer ") else ""
    return ""
