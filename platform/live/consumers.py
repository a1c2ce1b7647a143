"""Websockets for browsers: /ws/jobs/<id>/ (a job's live metrics, only users who may see the
job) and /ws/operator/ (the logged-in operator's own nodes)."""

import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs.models import Job
from jobs.snapshot import job_snapshot
from peers.protocol import job_group

from . import hub
from .events import job_events, job_topology
from .models import JobSequence
from .operator import operator_group, operator_snapshot

SNAPSHOT_EVERY_S = 1.0  # a viewer may ask for a fresh snapshot at most this often


class JobConsumer(AsyncJsonWebsocketConsumer):
    async def __call__(self, scope, receive, send):
        if hub.enabled():
            # The process's hub receives for every viewer: no channel of this viewer's own, so no
            # receive of its own waiting on the channel layer (with hundreds of viewers those
            # waits, not the frames, were the cost).
            self.channel_layer_alias = hub.NO_LAYER
        return await super().__call__(scope, receive, send)

    async def connect(self):
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        self.last_snapshot = -SNAPSHOT_EVERY_S  # when a viewer last asked for one
        if not await self._allowed(self.scope.get("user")):
            await self.close(code=4403)
            return
        # Join the group before reading the sequence: every frame numbered above the snapshot's
        # number is then delivered to this connection. With the process's hub (live.hub) the
        # process's one subscription of the job is joined instead; its frames wait until the
        # snapshot went out.
        if hub.enabled():
            self.hub = hub.hub()
            await self.hub.join(self.job_id, self)
        else:
            self.group = job_group(self.job_id)
            await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self._send_snapshot()

    async def disconnect(self, code):
        if hasattr(self, "hub"):
            await self.hub.leave(self.job_id, self)
        elif hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        """Viewers only listen, save to ask for a fresh snapshot (after a gap in the sequence)."""
        wants_snapshot = isinstance(content, dict) and content.get("type") == "snapshot"
        if wants_snapshot and time.monotonic() - self.last_snapshot >= SNAPSHOT_EVERY_S:
            self.last_snapshot = time.monotonic()
            await self._send_snapshot()

    async def job_update(self, event):
        await self.send_json({"kind": event["kind"], "seq": event.get("seq"), "data": event["data"]})

    async def _send_snapshot(self):
        if hasattr(self, "hub"):  # frames wait while the snapshot is read and sent, then follow it
            self.hub.hold(self.job_id, self)
        seq, snapshot = await self._snapshot()
        await self.send_json({"kind": "snapshot", "seq": seq, "data": snapshot})
        if hasattr(self, "hub"):
            await self.hub.ready(self.job_id, self)

    @database_sync_to_async
    def _allowed(self, user) -> bool:
        job = Job.objects.filter(pk=self.job_id).first()
        return job is not None and user is not None and job.can_view(user)

    @database_sync_to_async
    def _snapshot(self) -> tuple[int, dict]:
        seq = JobSequence.current(self.job_id)  # before the snapshot: it holds at least this much
        job = Job.objects.get(pk=self.job_id)
        return seq, {**job_snapshot(job), "events": job_events(job), "topology": job_topology(job)}


class OperatorConsumer(AsyncJsonWebsocketConsumer):
    """/ws/operator/: the logged-in user's own nodes, a snapshot then every change."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4403)
            return
        self.group = operator_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"kind": "snapshot", "data": await database_sync_to_async(operator_snapshot)(user)})

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        """The console only listens."""

    async def operator_update(self, event):
        await self.send_json({"kind": event["kind"], "data": event["data"]})
