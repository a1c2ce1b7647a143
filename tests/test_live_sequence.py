"""Sequence numbers on /ws/jobs/<id>/: every frame of a job carries a per-job `seq`, the snapshot
says which one it is current to. A viewer that follows the rule static/js/job_live.js follows
(drop seq <= what it has, ask for a new snapshot on a gap, reports keyed by round and node) and
drops its socket mid-job ends with every report exactly once and in order."""

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.utils import timezone

from hub.asgi import application
from jobs.models import PeerReport, Round
from jobs.orchestration import accept_report, close_round
from live.models import JobSequence
from nodes.models import Node
from tests.factories import make_running_job, peer_report
from tests.test_live_websocket import ORIGIN, TIMEOUT, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


class Viewer:
    """The page's bookkeeping (job_live.js), over an in-process websocket."""

    def __init__(self, job_id: int, cookie):
        self.job_id, self.cookie = job_id, cookie
        self.seq = None  # None until the first snapshot
        self.reports: dict[tuple[int, int], dict] = {}
        self.applied: list[int] = []  # seqs of the frames applied, in order
        self.snapshots = 0
        self.socket: WebsocketCommunicator | None = None

    async def connect(self):
        self.socket = WebsocketCommunicator(application, f"/ws/jobs/{self.job_id}/", headers=[ORIGIN, self.cookie])
        assert (await self.socket.connect(timeout=TIMEOUT))[0]
        await self.receive()  # the snapshot

    async def drop(self):
        await self.socket.disconnect()

    async def receive(self, skip: bool = False) -> dict:
        frame = await self.socket.receive_json_from(timeout=TIMEOUT)
        if not skip:
            await self.apply(frame)
        return frame

    async def apply(self, frame: dict) -> None:
        if frame["kind"] == "snapshot":
            self.snapshots += 1
            self.seq = frame["seq"]
            self.reports = {(r["round"], r["node"]): r for r in frame["data"]["reports"]}
            return
        if frame["seq"] <= self.seq:
            return  # already in the snapshot, or seen
        if frame["seq"] > self.seq + 1:  # missed one: start over from the database
            await self.socket.send_json_to({"type": "snapshot"})
            return
        self.seq = frame["seq"]
        self.applied.append(frame["seq"])
        if frame["kind"] == "report":
            self.reports[(frame["data"]["round"], frame["data"]["node"])] = frame["data"]

    async def settle(self):
        """Apply whatever is still in flight."""
        while not await self.socket.receive_nothing(timeout=1.0):  # a loaded machine delays frames
            await self.receive()

    def report_keys(self) -> list[tuple[int, int]]:
        return sorted(self.reports)


@database_sync_to_async
def setup(cohort: int = 4):
    owner = User.objects.create_user("owner", password="x-long-password")
    job, rnd, nodes = make_running_job(owner, cohort_size=cohort, rounds=3)
    Node.objects.filter(pk__in=[n.pk for n in nodes]).update(last_seen=timezone.now())  # planned for round 2
    Round.objects.filter(pk=rnd.pk).update(members=[n.id for n in nodes])
    return job, rnd, nodes, session_cookie(owner)


def report(job, node, round_number):
    return accept_report(
        node, peer_report(job, node, round_number, accuracy=0.1 * round_number + (node.id % 100) / 1000)
    )


@database_sync_to_async
def all_reports(job) -> list[tuple[int, int]]:
    return [(r.round.number, r.node_id) for r in PeerReport.objects.filter(round__job=job).select_related("round")]


async def test_reconnect_mid_job_gets_every_report_once_in_order():
    job, rnd, nodes, cookie = await setup()
    viewer = Viewer(job.id, cookie)
    await viewer.connect()
    base = viewer.seq  # the consents given while the job was made were frames too
    assert base == 4 and viewer.reports == {}

    for node in nodes[:2]:
        await sync_to_async(report)(job, node, 1)
    await viewer.settle()
    assert viewer.report_keys() == [(1, nodes[0].id), (1, nodes[1].id)]
    assert viewer.applied == [base + 1, base + 2]

    await viewer.drop()  # the socket goes away mid-job; the job goes on
    for node in nodes[2:]:
        await sync_to_async(report)(job, node, 1)
    await sync_to_async(close_round)(rnd.id)
    for node in nodes[:2]:
        await sync_to_async(report)(job, node, 2)

    await viewer.connect()  # the snapshot brings what happened meanwhile
    assert viewer.snapshots == 2
    assert viewer.seq == await database_sync_to_async(JobSequence.current)(job.id)
    for node in nodes[2:]:
        await sync_to_async(report)(job, node, 2)
    await viewer.settle()

    expected = await all_reports(job)
    assert len(expected) == 8
    assert viewer.report_keys() == expected  # every report, once (dict), in order
    assert viewer.applied == sorted(set(viewer.applied))  # frames applied in order, none twice
    assert viewer.applied[-2:] == [viewer.seq - 1, viewer.seq]
    await viewer.drop()


async def test_a_gap_brings_a_new_snapshot_and_replays_are_dropped():
    job, _rnd, nodes, cookie = await setup()
    viewer = Viewer(job.id, cookie)
    await viewer.connect()
    base = viewer.seq

    await sync_to_async(report)(job, nodes[0], 1)
    first = await viewer.receive()
    assert (first["kind"], first["seq"]) == ("report", base + 1)

    await sync_to_async(report)(job, nodes[1], 1)
    lost = await viewer.receive(skip=True)  # as if this frame never arrived
    assert lost["seq"] == base + 2
    await sync_to_async(report)(job, nodes[2], 1)
    await viewer.receive()  # seq 3 after 1: a gap, so the viewer asks for a snapshot
    await viewer.settle()
    assert viewer.snapshots == 2 and viewer.seq == base + 3
    assert viewer.report_keys() == [(1, n.id) for n in nodes[:3]]

    # A frame seen again (or one older than the snapshot) changes nothing.
    await viewer.apply(first)
    await viewer.apply(lost)
    assert viewer.seq == base + 3 and viewer.report_keys() == [(1, n.id) for n in nodes[:3]]

    # Snapshots on demand are rate limited: a flood of requests gets one answer a second at most.
    for _ in range(5):
        await viewer.socket.send_json_to({"type": "snapshot"})
    await viewer.settle()
    assert viewer.snapshots <= 3
    await viewer.drop()


async def test_sequence_numbers_are_per_job_and_never_repeat():
    @database_sync_to_async
    def allocate():
        owner = User.objects.create_user("o2", password="x-long-password")
        a, _, _ = make_running_job(owner, cohort_size=1, name="a")
        b, _, _ = make_running_job(owner, cohort_size=1, name="b")
        return a, b, [JobSequence.next(a.id) for _ in range(3)] + [JobSequence.next(b.id)]

    a, _b, numbers = await allocate()
    assert numbers == [2, 3, 4, 2]  # each job's one consent was its frame 1
    assert await database_sync_to_async(JobSequence.current)(a.id) == 4


async def test_event_log_history_in_the_snapshot_and_consent_changes_live():
    job, rnd, nodes, cookie = await setup(cohort=3)
    # Round 1: the first peer rejects the second's weights, the third never reports.
    await sync_to_async(accept_report)(
        nodes[0],
        peer_report(job, nodes[0], 1, rejected=[{"sender": nodes[1].id, "reason": "bad signature"}]),
    )
    await sync_to_async(report)(job, nodes[1], 1)
    await sync_to_async(close_round)(rnd.id)

    viewer = Viewer(job.id, cookie)
    viewer.socket = WebsocketCommunicator(application, f"/ws/jobs/{job.id}/", headers=[ORIGIN, cookie])
    assert (await viewer.socket.connect(timeout=TIMEOUT))[0]
    snapshot = await viewer.socket.receive_json_from(timeout=TIMEOUT)
    events = {e["key"]: e for e in snapshot["data"]["events"]}
    assert {e["kind"] for e in events.values()} == {"join", "consent", "rejection", "drop"}
    assert events[f"reject:1:{nodes[0].id}:0"]["text"].endswith(f"rejected {nodes[1].name}'s weights: bad signature")
    assert f"miss:1:{nodes[2].id}" in events and f"miss:1:{nodes[0].id}" not in events
    topology = snapshot["data"]["topology"]
    assert topology["round"] == 2 and topology["cut"] == []
    assert all(a in {n.id for n in nodes} and b in {n.id for n in nodes} for a, b in topology["links"])

    # A consent withdrawn now reaches the viewer as an event frame, numbered like the others.
    @database_sync_to_async
    def withdraw():
        from jobs.models import Consent

        return Consent.objects.create(job=job, node=nodes[2], granted=False, by=job.owner).pk

    consent_id = await withdraw()
    frame = await viewer.socket.receive_json_from(timeout=TIMEOUT)
    assert (frame["kind"], frame["seq"]) == ("event", snapshot["seq"] + 1)
    assert frame["data"]["key"] == f"consent:{consent_id}" and frame["data"]["text"].endswith("consent withdrawn")
    await viewer.drop()


async def test_reported_consensus_distance_and_dense_bytes_reach_the_page_and_junk_is_refused():
    from jobs.orchestration import ReportRefused

    job, _rnd, nodes, _cookie = await setup(cohort=2)
    saved = await sync_to_async(accept_report)(
        nodes[0], peer_report(job, nodes[0], 1, consensus_distance=0.25, model_bytes=4000)
    )
    event = await database_sync_to_async(
        lambda: PeerReport.objects.select_related("round", "node").get(pk=saved.pk).as_event()
    )()
    assert (event["consensus_distance"], event["model_bytes"]) == (0.25, 4000)
    for bad in ({"consensus_distance": -1.0}, {"consensus_distance": float("inf")}, {"model_bytes": -5}):
        with pytest.raises(ReportRefused):
            await sync_to_async(accept_report)(nodes[1], peer_report(job, nodes[1], 1, **bad))
