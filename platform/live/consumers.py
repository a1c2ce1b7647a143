"""Websocket for a job's live metrics: /ws/jobs/<id>/. Only users who may see the job."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs.models import Job
from jobs.snapshot import job_snapshot
from peers.protocol import job_group


class JobConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        snapshot = await self._snapshot_if_allowed(self.scope.get("user"))
        if snapshot is None:
            await self.close(code=4403)
            return
        self.group = job_group(self.job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"kind": "snapshot", "data": snapshot})

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        """Viewers only listen."""

    async def job_update(self, event):
        await self.send_json({"kind": event["kind"], "data": event["data"]})

    @database_sync_to_async
    def _snapshot_if_allowed(self, user):
        job = Job.objects.filter(pk=self.job_id).first()
        if job is None or user is None or not job.can_view(user):
            return None
        return job_snapshot(job)
