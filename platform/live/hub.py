"""Fan-out of a job's live frames inside one server process.

Without the hub every viewer's JobConsumer joins the job's channel-layer group: one broadcast is
N messages through Redis, N receives and N ``json.dumps`` of the same frame. With it, a server
process holds ONE subscription per job it has viewers of (a channel of its own in the job's
group, joined by the first viewer and left by the last), encodes each frame once and writes that
text to every local viewer's socket. Under daphne the websocket frame itself is built once too
(autobahn's prepared messages); under any other server each viewer gets ``websocket.send``.

Authorization stays Channels': JobConsumer.connect checks the job as before and only then
``join``s. Frames are exactly the ones the per-consumer path sends (same keys, same order, same
``json.dumps``), so the page's sequence and gap handling is unchanged. A viewer joins before its
snapshot is read; frames arriving until the snapshot is sent wait in its backlog and follow it,
the order the per-consumer path gives.

The hub is per event loop (daphne has one; tests may make one per test). DFL_LIVE_HUB=0 in the
server's environment turns it off (the per-consumer path, kept as the benchmark's baseline).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import weakref
from typing import Any

from channels.layers import get_channel_layer

from peers.protocol import job_group

log = logging.getLogger(__name__)


NO_LAYER = "live-hub-viewer"  # not a configured layer: a JobConsumer served by the hub has none


def enabled() -> bool:
    return os.environ.get("DFL_LIVE_HUB", "1") != "0"


def encode(event: dict) -> str:
    """The text of a job.update frame (what JobConsumer.send_json made of it)."""
    return json.dumps({"kind": event["kind"], "seq": event.get("seq"), "data": event["data"]})


class _Viewer:
    __slots__ = ("backlog", "consumer", "protocol")

    def __init__(self, consumer: Any):
        self.consumer = consumer
        self.backlog: list[str] | None = []  # None once the snapshot went out: frames go straight out
        self.protocol = _daphne_protocol(consumer)


def _daphne_protocol(consumer: Any) -> Any:
    """daphne's websocket protocol behind a consumer's send (daphne hands each application
    ``partial(server.handle_reply, protocol)``), or None under another server."""
    send = getattr(consumer, "base_send", None)
    for _ in range(8):  # through middleware that wraps send (channels.sessions keeps it as real_send)
        if isinstance(send, functools.partial) and send.args and hasattr(send.args[0], "sendPreparedMessage"):
            protocol = send.args[0]
            if getattr(protocol, "factory", None) is not None and hasattr(protocol.factory, "prepareMessage"):
                return protocol
            return None
        send = getattr(getattr(send, "__self__", None), "real_send", None)
        if send is None:
            return None
    return None


def _write(protocol: Any, prepared: Any) -> None:
    """Send a prepared websocket frame. On a plain TCP connection with nothing waiting in
    Twisted's buffer the frame goes to the socket at once (one send, instead of a writer added
    to and taken off the reactor per socket per frame: that was most of the cost at 1,000
    viewers); what the socket does not take, and every other case (TLS, compression), goes
    the ordinary way."""
    transport = protocol.transport
    sock = getattr(transport, "socket", None)
    data = prepared.payloadHybi
    if (
        sock is None
        or protocol._perMessageCompress is not None
        or getattr(transport, "dataBuffer", True)
        or getattr(transport, "_tempDataBuffer", True)
        or getattr(transport, "disconnecting", True)
    ):
        protocol.sendPreparedMessage(prepared)
        return
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        return  # the connection is gone; Twisted notices and the consumer disconnects
    if sent < len(data):
        transport.write(data[sent:])


class _Subscription:
    """One job's channel in this process and the viewers it feeds."""

    def __init__(self, hub: Hub, job_id: int):
        self.hub, self.job_id, self.group = hub, job_id, job_group(job_id)
        self.viewers: dict[int, _Viewer] = {}
        self.channel = ""
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        layer = self.hub.layer
        try:
            # The layer's own prefix: channels_redis reads every channel of a process with one
            # blocking pop on the prefix's queue (another prefix would never be read).
            self.channel = await layer.new_channel()
            await layer.group_add(self.group, self.channel)
        except Exception:  # the next viewer to join tries again
            log.exception("live hub of job %s: joining the group failed", self.job_id)
            return
        finally:
            self.ready.set()
        try:
            while True:
                try:
                    event = await layer.receive(self.channel)
                except asyncio.CancelledError:
                    raise
                except Exception:  # Redis went away for a moment: viewers see a gap and resync
                    log.exception("live hub of job %s: receive failed", self.job_id)
                    await asyncio.sleep(1)
                    continue
                if event.get("type") == "job.update":
                    self.deliver(encode(event))
        finally:
            # asyncio.shield: leaving the group must finish even while this task is cancelled.
            await asyncio.shield(layer.group_discard(self.group, self.channel))

    def deliver(self, frame: str) -> None:
        self.hub.encoded += 1
        prepared = None
        for key, viewer in list(self.viewers.items()):
            if viewer.backlog is not None:
                viewer.backlog.append(frame)
                continue
            try:
                if viewer.protocol is not None:
                    if viewer.protocol.state != viewer.protocol.STATE_OPEN:
                        continue
                    if prepared is None:
                        prepared = viewer.protocol.factory.prepareMessage(frame.encode())
                    _write(viewer.protocol, prepared)
                else:
                    self.hub.spawn(viewer.consumer.send(text_data=frame))
            except Exception:
                log.exception("live frame to a viewer of job %s failed", self.job_id)
                self.viewers.pop(key, None)
            self.hub.sent += 1


class Hub:
    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.jobs: dict[int, _Subscription] = {}
        self.encoded = 0  # frames encoded (once per subscription per frame)
        self.sent = 0  # frames written to sockets
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(self, job_id: int, consumer: Any) -> None:
        """After this returns every frame of the job broadcast from now on reaches `consumer`
        (held back until `ready`)."""
        sub = self.jobs.get(job_id)
        if sub is None:
            sub = self.jobs[job_id] = _Subscription(self, job_id)
        if sub.task is None or sub.task.done():  # new, or its subscription failed: (re)start it
            sub.ready = asyncio.Event()
            sub.task = asyncio.ensure_future(sub.run())
        sub.viewers[id(consumer)] = _Viewer(consumer)
        await sub.ready.wait()

    def hold(self, job_id: int, consumer: Any) -> None:
        """Keep the consumer's frames back (while a snapshot is read and sent)."""
        sub = self.jobs.get(job_id)
        viewer = sub.viewers.get(id(consumer)) if sub else None
        if viewer is not None and viewer.backlog is None:
            viewer.backlog = []

    async def ready(self, job_id: int, consumer: Any) -> None:
        """The consumer's snapshot went out: send what waited, then frames go straight out."""
        sub = self.jobs.get(job_id)
        viewer = sub.viewers.get(id(consumer)) if sub else None
        if viewer is None:
            return
        while viewer.backlog:
            frame = viewer.backlog.pop(0)
            await consumer.send(text_data=frame)
        viewer.backlog = None  # no await since the last check: nothing can slip in between

    async def leave(self, job_id: int, consumer: Any) -> None:
        sub = self.jobs.get(job_id)
        if sub is None:
            return
        sub.viewers.pop(id(consumer), None)
        if not sub.viewers:
            del self.jobs[job_id]
            if sub.task is not None:
                sub.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sub.task


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """This event loop's hub."""
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None:
        found = _hubs[loop] = Hub()
    return found
