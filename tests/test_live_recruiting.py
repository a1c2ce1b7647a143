"""A recruiting job's page counts its consenting nodes live: each consent given or withdrawn
reaches viewers as an event frame and then a status frame with the new count."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from hub.asgi import application
from jobs.models import Consent, Job
from tests.factories import make_node, make_user
from tests.test_live_websocket import ORIGIN, TIMEOUT, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def test_consents_given_and_withdrawn_update_the_recruiting_count_live():
    @database_sync_to_async
    def setup():
        owner = make_user("recruiter")
        job = Job.objects.create(owner=owner, name="recruiting", num_peers=3, rounds=2, status=Job.Status.WAITING)
        nodes = [make_node(make_user(f"p{i}"), f"n{i}") for i in range(2)]
        return job, nodes, session_cookie(owner)

    job, nodes, cookie = await setup()
    socket = WebsocketCommunicator(application, f"/ws/jobs/{job.id}/", headers=[ORIGIN, cookie])
    assert (await socket.connect(timeout=TIMEOUT))[0]
    snapshot = await socket.receive_json_from(timeout=TIMEOUT)
    assert snapshot["data"]["recruiting"] == {"consented": 0, "online": 0, "needed": 3}

    async def consent(node, granted: bool) -> dict:
        await database_sync_to_async(Consent.objects.create)(job=job, node=node, granted=granted, by=node.owner)
        event = await socket.receive_json_from(timeout=TIMEOUT)
        status = await socket.receive_json_from(timeout=TIMEOUT)
        assert event["kind"] == "event" and status["kind"] == "status" and status["seq"] == event["seq"] + 1
        return status["data"]["recruiting"]

    assert (await consent(nodes[0], True))["consented"] == 1
    assert (await consent(nodes[1], True))["consented"] == 2
    assert (await consent(nodes[0], False))["consented"] == 1
    await socket.disconnect()


async def test_a_running_job_sends_no_recruiting_count():
    @database_sync_to_async
    def setup():
        owner = make_user("runner")
        job = Job.objects.create(owner=owner, name="running", num_peers=1, rounds=2, status=Job.Status.RUNNING)
        node = make_node(make_user("p"), "n")
        return job, node, session_cookie(owner)

    job, node, cookie = await setup()
    socket = WebsocketCommunicator(application, f"/ws/jobs/{job.id}/", headers=[ORIGIN, cookie])
    assert (await socket.connect(timeout=TIMEOUT))[0]
    snapshot = await socket.receive_json_from(timeout=TIMEOUT)
    assert snapshot["data"]["recruiting"] is None
    await database_sync_to_async(Consent.objects.create)(job=job, node=node, granted=True, by=node.owner)
    assert (await socket.receive_json_from(timeout=TIMEOUT))["kind"] == "event"
    assert await socket.receive_nothing(timeout=1)  # no status frame for a job past recruiting
    await socket.disconnect()
