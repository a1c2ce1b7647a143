"""The production stack as real processes for end-to-end tests: daphne (HTTP + websockets),
a Celery worker on Redis, and `python -m peers join` peers. They share pytest-django's
PostgreSQL test database, so a test sets up rows with the ORM and checks them the same way."""
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings as django_settings
from django.db import connection

from tests.chain_fixtures import free_port

ROOT = Path(__file__).resolve().parents[1]


class Proc:
    """A child process whose output goes to a temp file we can search and show on failure."""

    def __init__(self, name: str, args: list[str], env: dict):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output()):
            if self.popen.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} not ready after {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


def stack_env(chain_url: str) -> dict:
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=django_settings.REDIS_URL,
        CHAIN_RPC_URL=chain_url,
        SECRET_KEY="e2e-secret-key",
        PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
        NODE_ONLINE_SECONDS="60",
    )
    env.pop("DFL_EMBEDDED", None)
    return env


@pytest.fixture
def stack(transactional_db, anvil):
    """Start daphne and a Celery worker against the test database; yield a handle."""
    env = stack_env(anvil)
    port = free_port()
    procs = []

    class Stack:
        url = f"http://127.0.0.1:{port}"
        chain_url = anvil

        def peer(self, token: str, data: str, *extra: str) -> Proc:
            keyfile = tempfile.mktemp(prefix="node-", suffix=".key")
            proc = Proc(f"peer-{len(procs)}", [
                sys.executable, "-m", "peers", "join", "--server", self.url, "--token", token,
                "--data", data, "--key", keyfile, "--max-jobs", "1", *extra,
            ], env)
            procs.append(proc)
            return proc

        def logs(self) -> str:
            return "\n".join(f"===== {p.name}\n{p.output()[-4000:]}" for p in procs)

    web = Proc("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "hub.asgi:application"], env)
    procs.append(web)
    worker = Proc("celery", [sys.executable, "-m", "celery", "-A", "hub", "worker", "-P", "solo",
                             "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info"], env)
    procs.append(worker)
    try:
        worker.wait_for(r"ready\.", timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(Stack.url + "/login/", timeout=2)
                break
            except requests.RequestException:
                if web.popen.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"daphne did not start:\n{web.output()[-3000:]}")
                time.sleep(0.2)
        yield Stack()
    finally:
        for proc in reversed(procs):
            proc.stop()
