"""The production stack as real processes, started once per test session the way the README's
Production section deploys it: `migrate`, `collectstatic`, daphne, a Celery worker and Celery
beat, each its own process, DEBUG off and every setting from the environment (nothing inherited
from this process), against PostgreSQL, Redis, RabbitMQ, anvil and the peers' own Redis (tests.exchange_fixtures). Peers join with `python -m peers join`
from a clean environment (PATH, HOME and the documented DFL_NODE_TOKEN only).

The stack shares pytest-django's PostgreSQL test database, so tests set up rows with the ORM
and check them the same way. Beat acts on every row it sees, so tests that use the stack run
after all the others (conftest orders them last)."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings as django_settings
from django.db import connection

from tests.chain_fixtures import ANVIL_DEV_KEY, free_port
from tests.exchange_fixtures import use_exchange

ROOT = Path(__file__).resolve().parents[1]
NODE_ONLINE_SECONDS = 10  # peers beat every 5 s; two missed beats make a node offline
STACK_FIXTURES = ("stack", "production_stack")


class Proc:
    """A child process whose output goes to a temp file we can search and show on failure."""

    def __init__(self, name: str, args: list[str], env: dict, cwd: Path = ROOT):
        self.name = name
        self.args = args
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.output())):
            if self.popen.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name}: no {pattern!r} after {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        return match

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone, as when a machine loses power."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def base_env(home: Path) -> dict:
    """What any process on a fresh machine has: a PATH (with this virtualenv first) and a HOME."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }


def participant_command(home: Path, *args: str) -> str:
    """`python -m peers ARGS` as a participant runs it on their own machine (nothing of the
    platform's environment); its standard output."""
    return subprocess.run(
        [sys.executable, "-m", "peers", *args],
        check=True,
        capture_output=True,
        text=True,
        env=base_env(home),
        cwd=home,
    ).stdout


def production_env(chain_url: str, peer_redis_url: str, base_url: str, static_root: Path, home: Path) -> dict:
    """The variables README.md's Production section lists, and nothing else."""
    db = connection.settings_dict
    return {
        **base_env(home),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": django_settings.REDIS_URL,
        "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
        "PEER_REDIS_URL": peer_redis_url,
        "CHAIN_RPC_URL": chain_url,
        "CHAIN_PRIVATE_KEY": ANVIL_DEV_KEY,
        "WALLET_ENCRYPTION_KEY": django_settings.WALLET_ENCRYPTION_KEY,  # wallets made here and there agree
        "SECRET_KEY": "production-stack-test-secret-key-0123456789-abcdefghij",
        "PLATFORM_SIGNING_KEY": django_settings.PLATFORM_SIGNING_KEY,  # plans signed here and there agree
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CSRF_TRUSTED_ORIGINS": base_url,
        "STATIC_ROOT": str(static_root),
        "MODEL_STORE_DIR": str(static_root.parent / "models"),
        "NODE_ONLINE_SECONDS": str(NODE_ONLINE_SECONDS),
    }


class ProductionStack:
    def __init__(self, url: str, chain_url: str, env: dict, tmp: Path):
        self.url = url
        self.chain_url = chain_url
        self.env = env
        self.tmp = tmp
        self.services: list[Proc] = []
        self.peers: list[Proc] = []

    def manage(self, *args: str) -> str:
        run = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, f"manage.py {' '.join(args)}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        return run.stdout

    def service(self, name: str, *args: str) -> Proc:
        proc = Proc(name, [sys.executable, "-m", *args], self.env)
        self.services.append(proc)
        return proc

    def peer(self, token: str, data: str, *extra: str, home: Path | None = None) -> Proc:
        """`python -m peers join` as a participant runs it: its own HOME (where its key is kept),
        the token in DFL_NODE_TOKEN, nothing of the platform's environment."""
        home = home or Path(tempfile.mkdtemp(prefix="peer-home-", dir=self.tmp))
        env = {**base_env(home), "DFL_NODE_TOKEN": token}
        proc = Proc(
            f"peer-{len(self.peers)}",
            [sys.executable, "-m", "peers", "join", "--server", self.url, "--data", data, "--max-jobs", "1", *extra],
            env,
            cwd=home,
        )
        proc.home = home
        self.peers.append(proc)
        return proc

    def restart(self, name: str) -> Proc:
        """SIGKILL a service (a crash, not a shutdown) and start it again with the same command;
        returns once it serves again."""
        old = next(p for p in self.services if p.name == name)
        old.kill()
        proc = Proc(name, old.args, self.env)
        self.services[self.services.index(old)] = proc
        if name in ("celery-worker", "celery-settler"):
            proc.wait_for(r"ready\.", timeout=90)
        elif name == "daphne":
            self.wait_until_serving(proc)
        return proc

    def wait_until_serving(self, web: Proc, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(self.url + "/login/", timeout=2)
                return
            except requests.RequestException:
                if web.popen.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"daphne did not start:\n{web.output()[-3000:]}")
                time.sleep(0.2)

    def check_services(self) -> None:
        for proc in self.services:
            if proc.popen.poll() is not None:
                pytest.fail(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.output()[-4000:]}" for p in self.services + self.peers)

    def stop_peers(self) -> None:
        for proc in self.peers:
            proc.stop()
        self.peers.clear()

    def stop(self) -> None:
        self.stop_peers()
        for proc in reversed(self.services):
            proc.stop()


@pytest.fixture(scope="session")
def production_stack(django_db_setup, django_db_blocker, anvil, peer_redis, tmp_path_factory):
    """One production stack for the whole session (started by the first test that asks)."""
    tmp = tmp_path_factory.mktemp("stack")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with django_db_blocker.unblock():
        env = production_env(anvil, peer_redis.admin_url, url, tmp / "static", tmp / "home")
    (tmp / "home").mkdir()
    stack = ProductionStack(url, anvil, env, tmp)
    stack.peer_redis = peer_redis
    stack.manage("migrate", "--noinput")
    stack.manage("collectstatic", "--noinput")
    try:
        web = stack.service("daphne", "daphne", "-b", "127.0.0.1", "-p", str(port), "hub.asgi:application")
        worker = stack.service("celery-worker", "celery", "-A", "hub", "worker", "-l", "info", "-Q", "celery")
        settler = stack.service(
            "celery-settler",
            "celery",
            "-A",
            "hub",
            "worker",
            "-l",
            "info",
            "-Q",
            "settlement",
            "-c",
            "1",
            "-n",
            "settler@%h",
        )
        stack.service("celery-beat", "celery", "-A", "hub", "beat", "-l", "info", "-s", str(tmp / "beat-schedule"))
        worker.wait_for(r"ready\.", timeout=90)
        settler.wait_for(r"ready\.", timeout=90)
        stack.wait_until_serving(web)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(production_stack, transactional_db, settings):
    """The session's production stack for one test: rows committed so its processes see them,
    this process's platform code on the stack's peers' exchange; the peers the test started are
    stopped when it ends."""
    use_exchange(settings, production_stack.peer_redis)
    settings.CHAIN_RPC_URL, settings.CHAIN_PRIVATE_KEY = production_stack.chain_url, ANVIL_DEV_KEY  # the same chain
    production_stack.check_services()
    try:
        yield production_stack
    finally:
        production_stack.stop_peers()
