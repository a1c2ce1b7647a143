"""/ws/jobs/<id>/ over the real ASGI application (origin check, session auth, routing) and the
real Redis channel layer: viewers get a snapshot, then every accepted report and closed round
live; people who may not see the job are refused."""

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from hub.asgi import application
from jobs.orchestration import accept_report, close_round
from peers.protocol import PeerReport
from tests.factories import make_running_job, peer_report

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1")
TIMEOUT = 10


def session_cookie(user: User) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode())


def report(job, node, accuracy: float, round_number: int = 1) -> PeerReport:
    return peer_report(job, node, round_number, accuracy=accuracy)


async def connect(job_id: int, *headers) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, f"/ws/jobs/{job_id}/", headers=list(headers))


async def test_viewer_gets_snapshot_then_reports_and_rounds_live():
    @database_sync_to_async
    def setup():
        owner = User.objects.create_user("owner", password="x-long-password")
        viewer = User.objects.create_user("viewer", password="x-long-password")
        job, _rnd, nodes = make_running_job(owner, cohort_size=2)
        other_job, _, _ = make_running_job(owner, cohort_size=1, name="other job")
        first = accept_report(nodes[1], report(job, nodes[1], 0.40))  # before the viewer connects
        return job, nodes, other_job, session_cookie(viewer), first

    job, nodes, other_job, cookie, first = await setup()

    viewer = await connect(job.id, ORIGIN, cookie)
    connected, _ = await viewer.connect(timeout=TIMEOUT)
    assert connected
    bystander = await connect(other_job.id, ORIGIN, cookie)
    assert (await bystander.connect(timeout=TIMEOUT))[0]
    try:
        snapshot = await viewer.receive_json_from(timeout=TIMEOUT)
        assert snapshot["kind"] == "snapshot"
        data = snapshot["data"]
        assert (data["job"], data["status"], data["current_round"], data["rounds"]) == (job.id, "running", 1, 2)
        assert data["closed_rounds"] == []
        assert [(r["round"], r["node"], r["accuracy"]) for r in data["reports"]] == [(1, nodes[1].id, 0.40)]
        assert (await bystander.receive_json_from(timeout=TIMEOUT))["kind"] == "snapshot"

        # The last member reports: the frame carries that round's metrics.
        saved = await sync_to_async(accept_report)(nodes[0], report(job, nodes[0], 0.80))
        frame = await viewer.receive_json_from(timeout=TIMEOUT)
        assert frame["kind"] == "report"
        assert frame["data"] == {
            "round": 1,
            "node": nodes[0].id,
            "node_name": nodes[0].name,
            "train_loss": 0.5,
            "eval_loss": 0.6,
            "accuracy": 0.80,
            "samples": 200,
            "rejected": [],
            "diverged": False,
            "epsilon": 0.0,
            "budget_spent": False,
            "model_hash": frame["data"]["model_hash"],
            "bytes_sent": frame["data"]["bytes_sent"],
            "bytes_received": frame["data"]["bytes_received"],
            "duration_s": frame["data"]["duration_s"],
            "consensus_distance": 0.0,
            "model_bytes": 0,
        }
        assert frame["seq"] == snapshot["seq"] + 1
        assert saved.pk != first.pk

        # Closing the round (what the Celery task does) sends the round summary, then the new round.
        await sync_to_async(close_round)(saved.round_id)
        frame = await viewer.receive_json_from(timeout=TIMEOUT)
        assert frame["kind"] == "round"
        assert frame["data"]["round"] == 1 and frame["data"]["status"] == "closed" and frame["data"]["reporters"] == 2
        assert frame["data"]["mean_accuracy"] == pytest.approx(0.60)
        frame = await viewer.receive_json_from(timeout=TIMEOUT)
        assert frame["kind"] == "status"
        assert (frame["data"]["status"], frame["data"]["current_round"]) == ("running", 2)
        assert [(m["node"], m["consent"]) for m in frame["data"]["cohort"]] == [(n.id, True) for n in nodes]

        # Frames of one job never reach viewers of another.
        assert await bystander.receive_nothing(timeout=0.5)
    finally:
        await viewer.disconnect()
        await bystander.disconnect()


async def test_private_job_refuses_outsiders_and_anonymous():
    @database_sync_to_async
    def setup():
        owner = User.objects.create_user("owner", password="x-long-password")
        stranger = User.objects.create_user("stranger", password="x-long-password")
        job, _, nodes = make_running_job(owner, cohort_size=2, is_public=False)
        return job, nodes, session_cookie(owner), session_cookie(stranger)

    job, nodes, owner_cookie, stranger_cookie = await setup()

    for headers in ([ORIGIN, stranger_cookie], [ORIGIN], [ORIGIN, (b"cookie", b"sessionid=forged-session")]):
        outsider = await connect(job.id, *headers)
        connected, code = await outsider.connect(timeout=TIMEOUT)
        assert not connected and code == 4403, headers
        await outsider.wait()

    # A job that does not exist looks the same as one you may not see.
    missing = await connect(job.id + 10_000, ORIGIN, owner_cookie)
    assert await missing.connect(timeout=TIMEOUT) == (False, 4403)

    # A page on another origin cannot ride the owner's cookie (cross-site websocket hijacking).
    foreign = await connect(job.id, (b"origin", b"http://evil.example"), owner_cookie)
    connected, _ = await foreign.connect(timeout=TIMEOUT)
    assert not connected

    # The owner is let in, and the refused connections left nothing behind that receives updates.
    owner = await connect(job.id, ORIGIN, owner_cookie)
    assert (await owner.connect(timeout=TIMEOUT))[0]
    try:
        assert (await owner.receive_json_from(timeout=TIMEOUT))["kind"] == "snapshot"
        await sync_to_async(accept_report)(nodes[0], report(job, nodes[0], 0.7))
        frame = await owner.receive_json_from(timeout=TIMEOUT)
        assert frame["kind"] == "report" and frame["data"]["accuracy"] == 0.7
    finally:
        await owner.disconnect()
