"""Tell the browsers watching a job what just happened (after the database knows it).

Every frame of a job carries `seq`, a per-job number allocated here after the change
committed: a viewer's snapshot says the number it is current to (read before the snapshot is
built), so a frame numbered at or below it is already in the snapshot and one above it is news.
A gap tells the viewer it missed a frame: it asks for a new snapshot."""

import asyncio
import logging
import os
import threading

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from peers.protocol import job_group

from .models import JobSequence

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10

_sender: tuple[int, asyncio.AbstractEventLoop] | None = None  # (pid, loop) of this process's sender
_sender_lock = threading.Lock()


def _sender_loop() -> asyncio.AbstractEventLoop:
    """An event loop of this process's own, in a daemon thread, for sends to a Redis layer: one
    connection kept open instead of a new loop and a new Redis connection per frame (most of the
    time a publish took). Made again after a fork (Celery's prefork workers)."""
    global _sender
    with _sender_lock:
        if _sender is None or _sender[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="live-broadcast", daemon=True).start()
            _sender = (os.getpid(), loop)
        return _sender[1]


def _group_send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if isinstance(layer, InMemoryChannelLayer):  # the embedded demo: the layer lives in daphne's loop
        async_to_sync(layer.group_send)(group, message)
        return
    asyncio.run_coroutine_threadsafe(layer.group_send(group, message), _sender_loop()).result(SEND_TIMEOUT_S)


def job_update(job_id: int, kind: str, data: dict) -> None:
    """kind: 'report' (one peer's round metrics), 'round' (a closed round), 'status', 'node'
    (a member online or offline), 'event' (a line of the event log, e.g. a consent change)."""
    try:
        if kind == "status":  # a new round (or the end): the topology graph follows
            from jobs.models import Job

            from .events import job_topology

            data = {**data, "topology": job_topology(Job.objects.get(pk=job_id))}
        seq = JobSequence.next(job_id)
        _group_send(job_group(job_id), {"type": "job.update", "kind": kind, "seq": seq, "data": data})
    except Exception:  # viewers missing an update must never break orchestration
        log.exception("broadcast to job %s failed", job_id)
