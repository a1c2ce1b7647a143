"""Peers that cannot reach the peers' Redis train through the platform's websocket relay: an
operator behind a firewall (`python -m peers join --relay`, on the production stack) and a
participant's own peer joining the embedded demo (`make demo`: no Redis at all)."""

import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from jobs.models import Consent, Job, PeerReport, Round
from tests.browser import Browser
from tests.chain_fixtures import free_port
from tests.factories import make_node, make_user
from tests.stack_fixtures import ROOT, Proc, base_env

pytestmark = pytest.mark.slow
ROUNDS = 3


def test_peers_behind_a_firewall_train_through_the_relay(stack):
    nodes = []
    for i in range(2):
        owner = make_user(f"fw-operator{i}", payout_address="0x" + secrets.token_hex(20))
        nodes.append(make_node(owner, f"fw-node-{i}"))
    job = Job.objects.create(
        owner=nodes[0].owner, name="behind a firewall", num_peers=2, rounds=ROUNDS, round_timeout_s=60, local_steps=20
    )
    for node in nodes:
        Consent.objects.create(job=job, node=node, granted=True, by=node.owner)
    peers = [stack.peer(node.token, f"digits:{i}/2", "--relay") for i, node in enumerate(nodes)]
    for peer in peers:
        assert peer.popen.wait(timeout=180) == 0, peer.output()[-3000:] + stack.logs()
        assert "websocket relay" in peer.output()
    job.refresh_from_db()
    assert job.status in (Job.Status.FINISHED, Job.Status.SETTLED), job.failure
    assert list(Round.objects.filter(job=job).values_list("reporters", flat=True)) == [2] * ROUNDS
    reports = PeerReport.objects.filter(round__job=job)
    assert all(r.bytes_received > 0 and r.bytes_sent > 0 for r in reports), "no weights went through the relay"


def test_a_participants_own_peer_joins_the_embedded_demo(tmp_path):
    """`make demo` has no Redis: the node API offers no exchange, so `python -m peers join` goes
    through the relay on its own, gets its plans from daphne's memory and trains the job."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **base_env(tmp_path),
        "DFL_EMBEDDED": "1",
        "DEBUG": "1",
        "DFL_VAR_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
    }
    demo = Proc(
        "demo", [sys.executable, "manage.py", "demo", "--port", str(port), "--peers", "2", "--rounds", "2"], env
    )
    peers: list[Proc] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(url + "/login/", timeout=2)
                break
            except requests.RequestException:
                assert demo.popen.poll() is None and time.monotonic() < deadline, demo.output()[-3000:]
                time.sleep(0.3)
        hw = subprocess.run(
            [sys.executable, "-m", "peers", "hw"], capture_output=True, text=True, check=True, env=base_env(tmp_path)
        ).stdout
        creator = Browser(url)
        creator.sign_up("creator", "a-long-password-1", "0x" + secrets.token_hex(20))
        page = creator.submit(
            "/jobs/new/",
            {
                "name": "My own peers",
                "description": "",
                "is_public": "on",
                "dataset": "digits",
                "model": "mlp",
                "hidden": 32,
                "topology": "ring",
                "num_peers": 2,
                "rounds": ROUNDS,
                "local_steps": 20,
                "lr": 0.2,
                "lr_schedule": "constant",
                "batch_size": 32,
                "round_timeout_s": 60,
                "min_vram_gb": 0,
                "reward_per_round": 100,
            },
        )
        job_id = int(re.search(r"/jobs/(\d+)/", page.url).group(1))
        # The creator takes test tokens from the faucet and deposits the job's budget.
        creator.submit("/payouts/faucet/", {}, form_page="/payouts/")
        funded = creator.submit(f"/jobs/{job_id}/fund/", {}, form_page=f"/jobs/{job_id}/")
        assert 'data-escrow="status">funded<' in funded.text, funded.text[:3000]
        for i in range(2):
            token_page = creator.submit("/nodes/register/", {"name": f"laptop-{i}", "hardware_json": hw})
            token = re.search(r'id="node-token">([^<]+)<', token_page.text).group(1)
            node_id = int(re.search(r"/nodes/(\d+)/", token_page.text).group(1))
            creator.submit(f"/jobs/{job_id}/consent/", {"node": node_id, "grant": "yes"}, form_page=f"/jobs/{job_id}/")
            home = Path(tempfile.mkdtemp(dir=tmp_path))
            peers.append(
                Proc(
                    f"own-peer-{i}",
                    [
                        sys.executable,
                        "-m",
                        "peers",
                        "join",
                        "--server",
                        url,
                        "--data",
                        f"digits:{i}/2",
                        "--max-jobs",
                        "1",
                    ],
                    {**base_env(home), "DFL_NODE_TOKEN": token},
                    cwd=home,
                )
            )
        for peer in peers:
            assert peer.popen.wait(timeout=180) == 0, peer.output()[-3000:] + demo.output()[-3000:]
            assert "websocket relay" in peer.output()
        deadline = time.monotonic() + 90  # the last report closes the job; settlement follows
        while not re.search(r'id="job-status"[^>]*>Completed<', status := creator.get(f"/jobs/{job_id}/").text):
            assert time.monotonic() < deadline, status[:2000]
            time.sleep(0.5)
        assert f"{ROUNDS} / {ROUNDS}" in status
    finally:
        for proc in peers:
            proc.stop()
        demo.stop()
