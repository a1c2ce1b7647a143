"""Live job pages on the production stack (daphne, Celery worker and beat, real Redis).

redis-py 8 gives every connection a 5 s socket timeout and channels_redis blocks 5 s on an idle
channel, so daphne used to close every idle websocket with 1011 after ~5 s: a viewer of a quiet
job flickered between "Live" and "reconnecting" and never saw it start. The embedded demo and a
busy test cannot see that; these tests sit idle on the real thing."""

import json
import time

import pytest
import requests
from django.contrib.auth.models import User
from websockets.protocol import State

from jobs.models import Consent, Job
from jobs.orchestration import accept_report
from nodes.models import Node
from tests.browser import Browser
from tests.factories import make_running_job, peer_report
from tests.live_clients import JobWatcher, open_job_socket

PASSWORD = "a-long-password-1"
IDLE_S = 30


def logged_in_cookie(stack, username: str) -> str:
    User.objects.create_user(username, password=PASSWORD)
    person = Browser(stack.url)
    person.log_in(username, PASSWORD)
    return person.session_cookie


def test_idle_viewer_stays_connected_and_gets_the_next_update(stack):
    cookie = logged_in_cookie(stack, "idle-viewer")
    owner = User.objects.get(username="idle-viewer")
    job, _, nodes = make_running_job(owner, cohort_size=2, name="quiet job")

    with open_job_socket(stack.url, job.id, cookie) as socket:
        assert json.loads(socket.recv(timeout=10))["kind"] == "snapshot"
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # nothing to say for 30 s: the server keeps quiet, and the socket open
            socket.recv(timeout=IDLE_S)
        assert time.monotonic() - started >= IDLE_S
        assert socket.state is State.OPEN

        accept_report(nodes[0], peer_report(job, nodes[0], accuracy=0.7))
        frame = json.loads(socket.recv(timeout=10))  # on the same connection
        assert frame["kind"] == "report" and frame["data"]["accuracy"] == 0.7
    daphne = next(p for p in stack.services if p.name == "daphne")
    assert "TimeoutError" not in daphne.output(), daphne.output()[-3000:]


def test_viewer_of_a_waiting_job_sees_it_start(stack):
    cookie = logged_in_cookie(stack, "early-viewer")
    owner = User.objects.get(username="early-viewer")
    job = Job.objects.create(owner=owner, name="starts while watched", num_peers=2, rounds=2, round_timeout_s=600)
    tokens = []
    for i in range(2):
        node = Node(owner=owner, name=f"starter-{i}")
        tokens.append(node.issue_token())
        node.save()
        Consent.objects.create(job=job, node=node, granted=True, by=owner)

    watcher = JobWatcher(stack.url, job.id, cookie)
    try:
        snapshot = watcher.wait_for(lambda f: f["kind"] == "snapshot", 10, "snapshot")
        assert snapshot["data"]["status"] == "waiting" and snapshot["data"]["cohort"] == []
        time.sleep(6)  # idle past the old 5 s limit before anything happens

        # The nodes' peers say hello (as `python -m peers join` does): the worker forms the cohort.
        for i, token in enumerate(tokens):
            response = requests.post(
                f"{stack.url}/api/v1/node/hello",
                json={"public_key": f"{i + 1:02x}" * 32},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert response.status_code == 200, response.text
        started = watcher.wait_for(
            lambda f: f["kind"] == "status" and f["data"]["status"] == "running", 30, "the job starting"
        )
        assert started["data"]["current_round"] == 1
        cohort = started["data"]["cohort"]
        assert sorted(m["name"] for m in cohort) == ["starter-0", "starter-1"]
        assert all(m["online"] and m["consent"] for m in cohort)
        assert watcher.closed is None
    finally:
        watcher.close()
