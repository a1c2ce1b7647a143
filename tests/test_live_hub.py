"""live.hub: the viewers of a job on one server process share one channel-layer subscription and
one encoding of each frame (real ASGI application, real Redis channel layer); authorization at
connect is unchanged; the last viewer leaving ends the subscription."""

import json

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User

from hub.asgi import application
from jobs.orchestration import accept_report
from live import hub as live_hub
from live.broadcast import job_update
from peers.protocol import job_group
from tests.factories import make_running_job, peer_report
from tests.test_live_websocket import ORIGIN, TIMEOUT, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def viewer(job_id: int, cookie) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(application, f"/ws/jobs/{job_id}/", headers=[ORIGIN, cookie])
    assert (await socket.connect(timeout=TIMEOUT))[0]
    assert (await socket.receive_json_from(timeout=TIMEOUT))["kind"] == "snapshot"
    return socket


@database_sync_to_async
def setup():
    owner = User.objects.create_user("owner", password="x-long-password")
    stranger = User.objects.create_user("stranger", password="x-long-password")
    job, _, nodes = make_running_job(owner, cohort_size=2, is_public=False)
    other, _, _ = make_running_job(owner, cohort_size=1, name="other job")
    return job, nodes, other, session_cookie(owner), session_cookie(stranger)


async def group_members(group: str) -> int:
    layer = get_channel_layer()
    return await layer.connection(layer.consistent_hash(group)).zcard(layer._group_key(group))


async def test_two_viewers_share_one_subscription_and_one_encoding(monkeypatch):
    job, nodes, other, cookie, stranger_cookie = await setup()
    encoded = []
    real_encode = live_hub.encode
    monkeypatch.setattr(live_hub, "encode", lambda event: encoded.append(event["seq"]) or real_encode(event))

    first, second = await viewer(job.id, cookie), await viewer(job.id, cookie)
    bystander = await viewer(other.id, cookie)
    hub = live_hub.hub()
    try:
        assert set(hub.jobs) == {job.id, other.id}
        assert len(hub.jobs[job.id].viewers) == 2
        assert await group_members(job_group(job.id)) == 1  # one channel per process, not per viewer

        # Someone who may not see the private job is refused and never joins the hub.
        outsider = WebsocketCommunicator(application, f"/ws/jobs/{job.id}/", headers=[ORIGIN, stranger_cookie])
        assert await outsider.connect(timeout=TIMEOUT) == (False, 4403)
        assert len(hub.jobs[job.id].viewers) == 2

        await sync_to_async(accept_report)(nodes[0], peer_report(job, nodes[0], 1, accuracy=0.7))
        frames = [await s.receive_from(timeout=TIMEOUT) for s in (first, second)]
        assert frames[0] == frames[1]  # the same text, byte for byte
        frame = json.loads(frames[0])
        assert list(frame) == ["kind", "seq", "data"] and frame["kind"] == "report"
        assert frame["data"]["accuracy"] == 0.7
        assert encoded == [frame["seq"]]  # encoded once for both viewers
        for s in (first, second):
            assert await s.receive_nothing(timeout=0.3)  # each frame once
        assert await bystander.receive_nothing(timeout=0.3)  # another job's viewer gets nothing

        # One leaves: the other still gets frames; the last leaving ends the subscription.
        await first.disconnect()
        await sync_to_async(job_update)(job.id, "event", {"text": "hello"})
        assert json.loads(await second.receive_from(timeout=TIMEOUT))["data"] == {"text": "hello"}
        await second.disconnect()
        assert job.id not in hub.jobs
        assert await group_members(job_group(job.id)) == 0
    finally:
        await bystander.disconnect()
    assert hub.jobs == {}


async def test_frames_published_during_connect_follow_the_snapshot():
    """Frames broadcast between joining and the snapshot wait in the viewer's backlog."""
    job, _nodes, _other, cookie, _ = await setup()
    hub = live_hub.hub()
    socket = WebsocketCommunicator(application, f"/ws/jobs/{job.id}/", headers=[ORIGIN, cookie])
    assert (await socket.connect(timeout=TIMEOUT))[0]
    held = hub.jobs[job.id]
    viewer_state = next(iter(held.viewers.values()))
    # Hold the viewer as a snapshot in progress would, deliver a frame, then release it.
    snapshot = await socket.receive_json_from(timeout=TIMEOUT)
    hub.hold(job.id, next(iter(held.viewers.values())).consumer)
    held.deliver(live_hub.encode({"kind": "event", "seq": snapshot["seq"] + 1, "data": {}}))
    assert await socket.receive_nothing(timeout=0.2)
    await hub.ready(job.id, viewer_state.consumer)
    frame = await socket.receive_json_from(timeout=TIMEOUT)
    assert frame == {"kind": "event", "seq": snapshot["seq"] + 1, "data": {}}
    await socket.disconnect()


async def test_old_path_still_works_without_the_hub(monkeypatch):
    monkeypatch.setenv("DFL_LIVE_HUB", "0")
    job, nodes, _other, cookie, _ = await setup()
    socket = await viewer(job.id, cookie)
    try:
        assert job.id not in live_hub.hub().jobs
        await sync_to_async(accept_report)(nodes[1], peer_report(job, nodes[1], 1, accuracy=0.5))
        frame = await socket.receive_json_from(timeout=TIMEOUT)
        assert frame["kind"] == "report" and frame["data"]["accuracy"] == 0.5
    finally:
        await socket.disconnect()
