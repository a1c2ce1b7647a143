"""Jobs that survive faults, measured on the real stack.

    python -m bench faults [--quick] [--peers N] [--rounds R]

Starts the production stack as README's Production section runs it, on this machine's
services: a PostgreSQL database of its own (``dfl_bench_faults``, made afresh), Redis databases
12 (the platform's) and 13 (Celery's broker: a Redis of its own is a documented choice, and it
spares the bench a RabbitMQ vhost), a peers' exchange Redis the bench starts on a port of its
own, anvil, daphne, a Celery worker and beat. Then two jobs of ``--rounds`` rounds with
``--peers`` real ``python -m peers join`` processes (full: 16 peers; ``--quick``: 4):

- the baseline: no fault;
- the faulty run: every few rounds a peer is SIGKILLed (and started again once a round was
  planned without it), and the exchange's Redis is restarted once, mid-job.

Final JSON line: ``rounds_completed`` (must equal ``rounds_planned``), ``reports_lost`` (a
report a peer made that is neither stored nor refused because its round had closed: must be
0), ``duplicate_payouts`` (must be 0) and ``p95_round_s_after_fault`` against
``p95_round_s_baseline``; target: at most 2x. Both percentiles are over steady rounds (not the
first, where every peer starts cold, nor the last); the faulty run's over those after its first
fault that no fault touched: not planned with a peer that was dead during them, not open across
the exchange's restart, not the first round of a peer coming back (it starts cold: those are
listed apart as ``rejoin_round_s``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DB_NAME = "dfl_bench_faults"
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's public account 0
NODE_ONLINE_SECONDS = 6
ROUND_TIMEOUT_S = 15
KILL_EVERY = 3  # rounds between two kills


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)
    return value


class Proc:
    def __init__(self, name: str, args: list[str], env: dict, logs: Path, cwd: Path = ROOT):
        self.name, self.args, self.env, self.cwd = name, args, env, cwd
        self.log_path = logs / f"{name}.log"
        self.home: Path | None = None
        self.start()

    def start(self) -> None:
        self.log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.popen.poll() is None:
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
        self.log.close()


def anvil_binary() -> str:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    npm_bin = ROOT / "node_modules" / "@foundry-rs" / f"anvil-linux-{arch}" / "bin" / "anvil"
    found = os.environ.get("ANVIL_BIN") or (str(npm_bin) if npm_bin.is_file() else shutil.which("anvil"))
    if not found:
        raise RuntimeError("anvil not found: run `make npm` (or set ANVIL_BIN)")
    return found


class Stack:
    """The platform's processes and the services they need, for this benchmark only."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[Proc] = []
        self.exchange_port = free_port()
        self.exchange_password = secrets.token_urlsafe(16)
        self.web_port = free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"

    def __enter__(self) -> Stack:
        import psycopg
        import redis

        with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DB_NAME}")
        for db in (12, 13):
            redis.Redis(db=db).flushdb()
        self.start_exchange()
        anvil_port = free_port()
        self.procs.append(
            Proc("anvil", [anvil_binary(), "--host", "127.0.0.1", "--port", str(anvil_port), "--silent"], {}, self.logs)
        )
        home = self.logs / "home"
        home.mkdir(exist_ok=True)
        self.env = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
            "REDIS_URL": "redis://127.0.0.1:6379/12",
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/13",
            "PEER_REDIS_URL": f"redis://platform:{self.exchange_password}@127.0.0.1:{self.exchange_port}/0",
            "CHAIN_RPC_URL": f"http://127.0.0.1:{anvil_port}",
            "CHAIN_PRIVATE_KEY": ANVIL_KEY,
            "WALLET_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "SECRET_KEY": secrets.token_urlsafe(40),
            "PLATFORM_SIGNING_KEY": secrets.token_hex(32),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "NODE_ONLINE_SECONDS": str(NODE_ONLINE_SECONDS),
            "LOG_LEVEL": "INFO",
        }
        os.environ.update(self.env)  # this process reads and writes the same database (Django ORM)
        sys.path.insert(0, str(ROOT / "platform"))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hub.settings")
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        python = [sys.executable, "-m"]
        self.web = Proc(
            "daphne",
            [*python, "daphne", "-b", "127.0.0.1", "-p", str(self.web_port), "hub.asgi:application"],
            self.env,
            self.logs,
        )
        self.worker = Proc(
            "worker",
            [*python, "celery", "-A", "hub", "worker", "-l", "info", "-c", "2", "-Q", "celery"],
            self.env,
            self.logs,
        )
        settler = [*python, "celery", "-A", "hub", "worker", "-l", "info", "-c", "1", "-Q", "settlement"]
        self.settler = Proc("settler", [*settler, "-n", "settler@%h"], self.env, self.logs)
        self.beat = Proc(
            "beat",
            [*python, "celery", "-A", "hub", "beat", "-l", "info", "-s", str(self.logs / "beat-schedule")],
            self.env,
            self.logs,
        )
        self.procs += [self.web, self.worker, self.settler, self.beat]
        wait_until(lambda: "ready." in self.worker.output(), 120, "the Celery worker")
        wait_until(lambda: "ready." in self.settler.output(), 120, "the settlement worker")
        wait_until(self._serving, 60, "daphne")
        return self

    def _serving(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/login/", timeout=2).read()
            return True
        except OSError:
            return False

    def start_exchange(self) -> None:
        self.exchange = Proc(
            f"exchange-{len([p for p in self.procs if p.name.startswith('exchange')])}",
            [
                "redis-server",
                "--port",
                str(self.exchange_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--user",
                "default",
                "off",
                "--user",
                "platform",
                "on",
                f">{self.exchange_password}",
                "~*",
                "&*",
                "+@all",
            ],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            self.logs,
        )
        self.procs.append(self.exchange)
        wait_until(lambda: "Ready to accept connections" in self.exchange.output(), 10, "the exchange's Redis")

    def restart_exchange(self) -> None:
        self.exchange.kill()
        self.start_exchange()

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@dataclass
class Run:
    name: str
    job_id: int
    peers: dict[int, Proc] = field(default_factory=dict)
    killed: list[tuple[int, float, float | None]] = field(default_factory=list)  # node, died, back (None: still dead)
    exchange_restarts: list[float] = field(default_factory=list)
    first_fault_round: int | None = None


def new_job(stack: Stack, peers: int, rounds: int, name: str) -> tuple[int, list]:
    from django.contrib.auth import get_user_model

    from accounts.models import Profile
    from jobs.models import Consent, Job
    from nodes.models import Node

    User = get_user_model()
    owner = User.objects.create_user(f"{name}-owner-{secrets.token_hex(3)}", password=secrets.token_urlsafe(12))
    job = Job.objects.create(
        owner=owner,
        name=name,
        num_peers=peers,
        rounds=rounds,
        round_timeout_s=ROUND_TIMEOUT_S,
        local_steps=50,
        lr=0.2,
        lr_schedule="constant",
        hidden=32,
        reward_per_round=10,
    )
    from ledger.settlement import fund_with_test_tokens

    fund_with_test_tokens(job)
    nodes = []
    for i in range(peers):
        user = User.objects.create_user(f"{name}-p{i}-{secrets.token_hex(3)}", password=secrets.token_urlsafe(12))
        profile = Profile.for_user(user)
        profile.payout_address = "0x" + secrets.token_hex(20)
        profile.save()
        node = Node(owner=user, name=f"{name}-{i}")
        node.apply_hardware({"cpu": "bench", "cores": 2, "ram_gb": 4.0, "gpus": [], "cuda": False})
        token = node.issue_token()
        node.save()
        Consent.objects.create(job=job, node=node, granted=True, by=user)
        nodes.append((node, token))
    return job.id, nodes


def start_peer(stack: Stack, node, token: str, index: int, total: int, home: Path | None = None) -> Proc:
    home = home or Path(tempfile.mkdtemp(prefix=f"peer-{node.id}-", dir=stack.logs))
    proc = Proc(
        f"peer-{node.id}-{int(time.time() * 1000)}",
        [
            sys.executable,
            "-m",
            "peers",
            "join",
            "--server",
            stack.url,
            "--data",
            f"digits:{index}/{total}",
            "--max-jobs",
            "1",
        ],
        {"PATH": stack.env["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "DFL_NODE_TOKEN": token},
        stack.logs,
        cwd=home,
    )
    proc.home = home
    return proc


def run_job(stack: Stack, peers: int, rounds: int, faults: bool) -> Run:
    from jobs.models import Job, Round

    name = "faulty" if faults else "baseline"
    job_id, nodes = new_job(stack, peers, rounds, name)
    run = Run(name, job_id)
    index = {node.id: i for i, (node, _) in enumerate(nodes)}
    by_id = {node.id: (node, token) for node, token in nodes}
    procs = {node.id: start_peer(stack, node, token, i, peers) for i, (node, token) in enumerate(nodes)}
    run.peers = dict(procs)
    all_procs = list(procs.values())
    dead: dict[int, tuple[float, int]] = {}  # node -> (died at, round it died in)
    next_kill = KILL_EVERY
    restarted_exchange = False
    victims = iter(sorted(by_id)[::-1] * rounds)
    deadline = time.monotonic() + rounds * ROUND_TIMEOUT_S * 2 + 180
    while True:
        job = Job.objects.get(pk=job_id)
        if job.status in (Job.Status.SETTLED, Job.Status.FAILED):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} ({name}) did not end: {job.status}")
        current = job.current_round
        if faults and job.status == Job.Status.RUNNING:
            if current >= next_kill and current < rounds - 2 and len(dead) < max(1, peers // 4):
                victim = next(victims)
                while victim in dead:
                    victim = next(victims)
                procs[victim].kill()
                dead[victim] = (time.time(), current)
                run.first_fault_round = run.first_fault_round or current
                next_kill = current + KILL_EVERY
            for victim, (died, died_in) in list(dead.items()):
                # Started again once a round was planned without it: it rejoins at the next one.
                if Round.objects.filter(job_id=job_id, number__gt=died_in).exclude(members__contains=[victim]).exists():
                    node, token = by_id[victim]
                    procs[victim] = start_peer(stack, node, token, index[victim], peers, home=procs[victim].home)
                    all_procs.append(procs[victim])
                    run.killed.append((victim, died, time.time()))
                    del dead[victim]
            if not restarted_exchange and current >= rounds // 2:
                stack.restart_exchange()
                run.exchange_restarts.append(time.time())
                run.first_fault_round = run.first_fault_round or current
                restarted_exchange = True
        time.sleep(0.2)
    run.killed += [(victim, died, None) for victim, (died, _) in dead.items()]
    for proc in all_procs:
        try:
            proc.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stop()
    run.all_procs = all_procs  # type: ignore[attr-defined]
    return run


def measure(run: Run) -> dict:
    from django.db.models import Count

    from jobs.models import Job, PeerReport, Round
    from ledger.models import Payout

    job = Job.objects.get(pk=run.job_id)
    rows = list(Round.objects.filter(job=job).order_by("number"))
    completed = [r for r in rows if r.status == Round.Status.CLOSED and r.reporters > 0 and r.closed_at is not None]
    stored = set(PeerReport.objects.filter(round__job=job).values_list("node_id", "round__number"))
    made, late = set(), set()
    for proc in run.all_procs:  # type: ignore[attr-defined]
        text = proc.output()
        made |= {(int(n), int(r)) for n, r in re.findall(rf"node (\d+) job {job.id} round (\d+)/", text)}
        late |= {
            (int(n), int(r)) for n, r in re.findall(rf"node (\d+): round (\d+) of job {job.id} closed before", text)
        }
    lost = sorted(made - late - stored)
    duplicates = Payout.objects.filter(job=job).values("round", "node").annotate(n=Count("id")).filter(n__gt=1).count()
    from ledger.audit import audit_job

    audit_mismatches = [f"{c.round}: {c.what}" for c in audit_job(job) if not c.ok]

    # The first round a killed peer is planned in again: it starts cold (a new process builds its
    # model, asks a neighbour for the current one) and is reported apart, as the cost of a rejoin.
    rejoins = set()
    for node, _died, back in run.killed:
        if back is not None:
            again = next((r for r in rows if r.opened_at.timestamp() > back and node in (r.members or [])), None)
            if again is not None:
                rejoins.add(again.number)

    def touched(r) -> bool:
        opened, closed = r.opened_at.timestamp(), r.closed_at.timestamp()
        for node, died, back in run.killed:
            if node in (r.members or []) and died < closed and (back is None or back > opened):
                return True
        return r.number in rejoins or any(opened - 1 <= t <= closed for t in run.exchange_restarts)

    def seconds(r) -> float:
        return r.closed_at.timestamp() - r.opened_at.timestamp()

    # The first round (every peer process starts cold) and the last (peers finish, settlement
    # starts) are neither's steady state: both runs leave them out of the percentiles.
    steady = [r for r in completed if 1 < r.number < job.rounds]
    durations = [seconds(r) for r in steady]
    after = [
        seconds(r)
        for r in steady
        if run.first_fault_round is not None and r.number > run.first_fault_round and not touched(r)
    ]
    return {
        "status": job.status,
        "rounds_completed": len(completed),
        "reports_stored": len(stored),
        "reports_lost": len(lost),
        "lost": lost[:10],
        "duplicate_payouts": duplicates,
        "audit_mismatches": audit_mismatches,
        "payouts": Payout.objects.filter(job=job).count(),
        "p95_round_s": p95(durations),
        "p95_round_s_after_fault": p95(after) if after else None,
        "rounds_after_fault": len(after),
        "rejoin_round_s": [round(seconds(r), 3) for r in completed if r.number in rejoins],
        "kills": len(run.killed),
        "exchange_restarts": len(run.exchange_restarts),
    }


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench faults", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 peers, 12 rounds (full: 16 peers, 24 rounds)")
    ap.add_argument("--peers", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="recorded only: peers train on CPU")
    args = ap.parse_args(argv)
    peers = args.peers or (4 if args.quick else 16)
    rounds = args.rounds or (12 if args.quick else 24)
    started = time.monotonic()
    logs = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    with Stack(logs) as stack:
        baseline = measure(run_job(stack, peers, rounds, faults=False))
        faulty = measure(run_job(stack, peers, rounds, faults=True))
    print(
        f"faults: {peers} peers x {rounds} rounds on the real stack (logs in {logs}); {time.monotonic() - started:.0f} s"
    )
    print()
    print(
        f"{'run':<10} {'status':<9} {'rounds':>7} {'reports':>8} {'lost':>5} {'dup pay':>8} {'p95 round s':>12} {'kills':>6} {'redis restarts':>15}"
    )
    for name, m in (("baseline", baseline), ("faulty", faulty)):
        print(
            f"{name:<10} {m['status']:<9} {m['rounds_completed']:>7} {m['reports_stored']:>8} {m['reports_lost']:>5} "
            f"{m['duplicate_payouts']:>8} {m['p95_round_s']:>12} {m['kills']:>6} {m['exchange_restarts']:>15}"
        )
    print(
        f"faulty run, rounds after the first fault that no fault touched: {faulty['rounds_after_fault']}, "
        f"p95 {faulty['p95_round_s_after_fault']} s; first rounds of rejoining peers: {faulty['rejoin_round_s']} s"
    )
    print()
    after = faulty["p95_round_s_after_fault"]
    result = {
        "bench": "faults",
        "metric": "p95 round s after a fault / without faults",
        "value": after,
        "baseline": baseline["p95_round_s"],
        "ratio": round(after / baseline["p95_round_s"], 3) if after else None,
        "target": "rounds_completed == rounds_planned, reports_lost == 0, duplicate_payouts == 0, ratio <= 2",
        "device": args.device,
        "quick": bool(args.quick),
        "peers": peers,
        "rounds_planned": rounds,
        "rounds_completed": faulty["rounds_completed"],
        "reports_lost": faulty["reports_lost"] + baseline["reports_lost"],
        "duplicate_payouts": faulty["duplicate_payouts"] + baseline["duplicate_payouts"],
        "p95_round_s_after_fault": after,
        "p95_round_s_baseline": baseline["p95_round_s"],
        "kills": faulty["kills"],
        "exchange_restarts": faulty["exchange_restarts"],
        "baseline_run": baseline,
        "faulty_run": faulty,
    }
    print(json.dumps(result))
    return 0
