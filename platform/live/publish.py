"""Group sends from synchronous code (orchestration, views, Celery tasks) without a new event
loop and a new Redis connection per frame.

`async_to_sync(layer.group_send)` runs each call on a fresh event loop, and channels_redis
keeps its connections per loop: every frame paid a loop and a Redis connection (most of what a
publish cost). Here each process keeps one event loop in a daemon thread and a channel layer
instance of its own on it, so the connection stays open between frames. The instance is
private: the process-wide layer (`get_channel_layer()`) may also be serving daphne's sockets on
daphne's loop, and channels_redis binds its locks to the first loop that uses them (sharing one
instance across the two loops failed with "lock bound to a different event loop").

The in-memory layer (the embedded demo, tests) is process-local state: a second instance would
be a second, empty layer, so it keeps the shared instance and `async_to_sync`."""

import asyncio
import os
import threading

from asgiref.sync import async_to_sync
from channels.layers import DEFAULT_CHANNEL_LAYER, InMemoryChannelLayer, channel_layers, get_channel_layer

SEND_TIMEOUT_S = 10


class _Sender:
    """This process's publishing loop and its own layer; made again after a fork (Celery's prefork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        threading.Thread(target=self.loop.run_forever, name="live-publish", daemon=True).start()

    def run(self, coroutine_of_layer) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine_of_layer(self.layer), self.loop)
        future.result(SEND_TIMEOUT_S)


_sender: _Sender | None = None
_sender_lock = threading.Lock()


def _private_sender() -> _Sender:
    global _sender
    with _sender_lock:
        if _sender is None or _sender.pid != os.getpid():
            _sender = _Sender()
        return _sender


def group_send(group: str, message: dict) -> None:
    """Send to every channel of a group, from synchronous code; raises when it could not."""
    shared = get_channel_layer()
    if shared is None or isinstance(shared, InMemoryChannelLayer):
        if shared is not None:
            async_to_sync(shared.group_send)(group, message)
        return
    _private_sender().run(lambda layer: layer.group_send(group, message))
