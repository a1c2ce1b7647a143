"""The operator console: a peer's heartbeat carries its stats (checked, stored, sampled), and
/ws/operator/ pushes them to the node's owner only; anonymous viewers are refused."""

import json
import math

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from hub.asgi import application
from nodes.models import Node, NodeSample
from nodes.stats import parse_stats
from peers.stats import Activity, collect
from tests.factories import make_node, make_user
from tests.test_live_websocket import ORIGIN, TIMEOUT, session_cookie

STATS = {
    "status": "training",
    "job": 7,
    "round": 3,
    "steps_per_s": 41.5,
    "cpu_percent": 87.0,
    "ram_used_gb": 5.2,
    "ram_percent": 33.0,
    "gpu_util": 91.0,
    "gpu_mem_used_gb": 10.5,
    "gpu_mem_total_gb": 80.0,
    "bytes_sent": 123456,
    "bytes_received": 654321,
    "last_error": "report of round 2 of job 7: HTTP 503",
}


def beat(node, body) -> object:
    return Client().post(
        "/api/v1/node/heartbeat",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {node.token}",
    )


def test_what_a_peer_collects_passes_the_platforms_check():
    activity = Activity()
    activity.begin(4, 2, "train")
    activity.trained(50, 2.0)
    activity.moved(1000, 2000)
    activity.failed("x" * 1000)
    stats = collect(activity)
    assert parse_stats(json.loads(json.dumps(stats))) == stats
    assert (stats["status"], stats["job"], stats["round"], stats["steps_per_s"]) == ("training", 4, 2, 25.0)
    assert len(stats["last_error"]) == 300 and 0 <= stats["cpu_percent"] <= 100


@pytest.mark.django_db
def test_heartbeat_stores_stats_and_samples_and_refuses_junk():
    node = make_node(make_user("op"), "n1")
    assert beat(node, {}).status_code == 200  # an older peer: liveness only
    assert beat(node, {"stats": STATS}).status_code == 200
    node.refresh_from_db()
    assert node.stats == STATS and node.stats_at is not None
    assert [s.stats for s in NodeSample.objects.filter(node=node)] == [STATS]

    junk = [
        "not an object",
        {"cpu_percent": "lots"},
        {"cpu_percent": 250},
        {"cpu_percent": -1},
        {"steps_per_s": math.inf},
        {"ram_used_gb": True},
        {"job": -3},
        {"job": 1.5},
        {"status": "mining bitcoin"},
        {"last_error": ["a"]},
        {"last_error": "bad\x00byte"},
        {"admin": True},
        {f"k{i}": 1 for i in range(100)},
    ]
    for stats in junk:
        response = beat(node, {"stats": stats})
        assert response.status_code == 400, stats
        assert response.json()["error"].startswith("stats:"), stats
    raw = '{"stats": {"steps_per_s": NaN}}'  # not JSON at all (safejson refuses NaN)
    response = Client().post(
        "/api/v1/node/heartbeat", data=raw, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {node.token}"
    )
    assert response.status_code == 400
    node.refresh_from_db()
    assert node.stats == STATS  # nothing of the junk was kept
    assert NodeSample.objects.filter(node=node).count() == 1

    # Long strings are cut, not refused; the history is bounded.
    assert beat(node, {"stats": {"last_error": "e" * 5000}}).status_code == 200
    node.refresh_from_db()
    assert node.stats == {"last_error": "e" * 300}
    NodeSample.SAMPLES_KEPT, kept = 3, NodeSample.SAMPLES_KEPT
    try:
        for _ in range(5):
            beat(node, {"stats": {"cpu_percent": 1}})
    finally:
        NodeSample.SAMPLES_KEPT = kept
    assert NodeSample.objects.filter(node=node).count() == 3

    # The node's page charts its history.
    page = Client()
    page.force_login(node.owner)
    response = page.get(f"/nodes/{node.id}/")
    assert response.status_code == 200
    assert b'id="history-usage"' in response.content and b"vendor/plotly/plotly.min.js" in response.content


@pytest.mark.django_db(transaction=True)
async def test_console_gets_own_nodes_live_and_nobody_elses():
    @database_sync_to_async
    def setup():
        alice, bob = make_user("alice"), make_user("bob")
        mine, theirs = make_node(alice, "alice-1", online=True), make_node(bob, "bob-1", online=True)
        return mine, theirs, session_cookie(alice), session_cookie(bob)

    mine, theirs, alice_cookie, bob_cookie = await setup()

    anonymous = WebsocketCommunicator(application, "/ws/operator/", headers=[ORIGIN])
    assert await anonymous.connect(timeout=TIMEOUT) == (False, 4403)
    await anonymous.wait()

    alice = WebsocketCommunicator(application, "/ws/operator/", headers=[ORIGIN, alice_cookie])
    bob = WebsocketCommunicator(application, "/ws/operator/", headers=[ORIGIN, bob_cookie])
    assert (await alice.connect(timeout=TIMEOUT))[0] and (await bob.connect(timeout=TIMEOUT))[0]
    try:
        snapshot = await alice.receive_json_from(timeout=TIMEOUT)
        assert snapshot["kind"] == "snapshot"
        assert [(n["node"], n["status"], n["earnings"]) for n in snapshot["data"]["nodes"]] == [(mine.id, "stale", "0")]
        assert [n["node"] for n in (await bob.receive_json_from(timeout=TIMEOUT))["data"]["nodes"]] == [theirs.id]

        response = await sync_to_async(beat)(mine, {"stats": STATS})
        assert response.status_code == 200
        frame = await alice.receive_json_from(timeout=TIMEOUT)
        if frame["data"]["stats"] == {}:  # first the node's API call announced it online
            assert (frame["kind"], frame["data"]["node"], frame["data"]["status"]) == ("node", mine.id, "stale")
            frame = await alice.receive_json_from(timeout=TIMEOUT)
        assert frame["kind"] == "node"
        assert (frame["data"]["node"], frame["data"]["status"], frame["data"]["stats"]) == (mine.id, "training", STATS)
        assert await bob.receive_nothing(timeout=0.5)  # another user's console never sees it

        # Offline (missed heartbeats, found by beat's sweep) reaches the console too.
        from jobs.liveness import mark_offline_nodes

        await database_sync_to_async(
            lambda: Node.objects.filter(pk=mine.pk).update(online_announced=True, last_seen=Node.online_cutoff())
        )()
        assert await database_sync_to_async(mark_offline_nodes)() == [mine.id]
        frame = await alice.receive_json_from(timeout=TIMEOUT)
        assert (frame["data"]["node"], frame["data"]["status"]) == (mine.id, "offline")
        assert await bob.receive_nothing(timeout=0.5)
    finally:
        await alice.disconnect()
        await bob.disconnect()
