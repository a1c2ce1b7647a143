"""An embedded platform (SQLite, in-memory channel layer: what `make demo` runs) in a daphne
process of its own, for benchmarks of the websocket relay (``python -m bench exchange --relay``).

Two nodes with tokens, in the open round of a running two-node job (so each may send to the
other), are made in a fresh database; nothing of the machine's services is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETUP = """
import json, secrets
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from jobs.models import CohortMember, Consent, Job, Round
from nodes.models import Node
from peers.wire.signing import NodeKey

owner = get_user_model().objects.create_user("bench", password=secrets.token_urlsafe(16))
job = Job.objects.create(owner=owner, name="relay bench", num_peers=2, rounds=1, status=Job.Status.RUNNING,
                         current_round=1, started_at=timezone.now())
nodes = []
for position in range(2):
    node = Node(owner=owner, name=f"bench-{position}", public_key=NodeKey.generate().public_key_hex)
    node.token = node.issue_token()
    node.save()
    Consent.objects.create(job=job, node=node, granted=True, by=owner)
    CohortMember.objects.create(job=job, node=node, position=position)
    nodes.append(node)
Round.objects.create(job=job, number=1, deadline=timezone.now() + timedelta(hours=1), members=[n.id for n in nodes])
print(json.dumps([[n.id, n.token] for n in nodes]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def embedded_platform():
    """Yields (base URL, [(node id, token), (node id, token)])."""
    with tempfile.TemporaryDirectory(prefix="bench-platform-") as var:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": var,
            "DFL_EMBEDDED": "1",
            "DFL_VAR_DIR": var,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
            "LOG_LEVEL": "WARNING",
        }
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True)
        made = subprocess.run(
            [*manage, "shell", "-c", SETUP], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        )
        nodes = [tuple(n) for n in json.loads(made.stdout.strip().splitlines()[-1])]
        port = _free_port()
        log = open(Path(var) / "daphne.log", "wb")
        daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "hub.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(url + "/login/", timeout=2).read()
                    break
                except OSError as exc:
                    if daphne.poll() is not None or time.monotonic() > deadline:
                        log_text = (Path(var) / "daphne.log").read_text()[-2000:]
                        raise RuntimeError(f"daphne did not start: {log_text}") from exc
                    time.sleep(0.2)
            yield url, nodes
        finally:
            daphne.terminate()
            daphne.wait(timeout=15)
            log.close()
