"""`python manage.py demo`: one federated job end to end in this process, no external service.

Run with DFL_EMBEDDED=1 (SQLite, in-memory channel layer, eager Celery, eth-tester chain);
`make demo` does. Without --headless it also serves the site with daphne on the same event
loop, so the browser watches the job live. Peers run in this process but are the same code
as `python -m peers join`; only their transport (the platform's channel layer) and their
reporter (a direct call instead of HTTP) differ.
"""

import asyncio
import json
import secrets
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from accounts.models import Profile
from jobs import orchestration
from jobs.models import Consent, Job, Round
from ledger.models import tokens_amount
from nodes.authority import platform_key
from nodes.models import Node

DEMO_USER = "demo"
PARTICIPANTS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


class LocalReporter:
    """Hands a peer's report straight to the orchestration (the HTTP API does the same)."""

    def __init__(self, node: Node, pace_s: float = 0.0):
        self.node = node
        self.pace_s = pace_s

    async def report(self, message: dict) -> None:
        from peers.protocol import from_message

        if self.pace_s:
            await asyncio.sleep(self.pace_s)  # let people watching the page follow along
        await sync_to_async(self.node.touch)()  # an in-process peer is online while it reports
        await sync_to_async(orchestration.accept_report)(self.node, from_message(message))


class Command(BaseCommand):
    help = "Run a federated job of N peers on the bundled digits data, settled on the embedded chain."

    def add_arguments(self, parser):
        parser.add_argument("--headless", action="store_true", help="run the job, print a JSON summary, exit")
        parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3 headless, 30 served)")
        parser.add_argument("--peers", type=int, default=4)
        parser.add_argument("--local-steps", type=int, default=30)
        parser.add_argument("--lr", type=float, default=0.3)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--pace",
            type=float,
            default=None,
            help="seconds each peer waits before reporting (default 0 headless, 1.5 served)",
        )
        parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")

    def handle(self, *args, **opts):
        if not settings.EMBEDDED:
            raise CommandError("the demo runs embedded: set DFL_EMBEDDED=1 (make demo does)")
        if not 1 <= opts["peers"] <= len(PARTICIPANTS):
            raise CommandError(f"--peers must be between 1 and {len(PARTICIPANTS)}")
        headless = opts["headless"]
        rounds = opts["rounds"] or (3 if headless else 30)
        pace = opts["pace"] if opts["pace"] is not None else (0.0 if headless else 1.5)
        call_command("migrate", verbosity=0, interactive=False)
        password = self._demo_login()
        job, peers = self._set_up_job(rounds, opts)
        if headless:
            summary = asyncio.run(self._run_job(job, peers, pace, opts["timeout"]))
            self.stdout.write(json.dumps(summary))
            return
        self.stdout.write(f"Serving http://{opts['host']}:{opts['port']}/  log in as {DEMO_USER} / {password}")
        self.stdout.write(f"Job page: http://{opts['host']}:{opts['port']}/jobs/{job.id}/")
        self._serve(job, peers, pace, rounds, opts)

    # -- set-up ---------------------------------------------------------------------------------
    def _demo_login(self) -> str:
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True})
        password = "demo-" + secrets.token_urlsafe(6)
        user.set_password(password)
        user.save()
        Profile.for_user(user)
        return password

    def _set_up_job(self, rounds: int, opts):
        from peers.data import load_local_data
        from peers.wire.signing import NodeKey

        User = get_user_model()
        owner = User.objects.get(username=DEMO_USER)
        job = Job.objects.create(
            owner=owner,
            name=f"Digits demo ({opts['peers']} peers, ring)",
            rounds=rounds,
            num_peers=opts["peers"],
            local_steps=opts["local_steps"],
            lr=opts["lr"],
            batch_size=32,
            description="Each peer holds a private shard of the digits data and averages with its ring neighbours.",
            round_timeout_s=60,
            reward_per_round=100,
        )
        from ledger.settlement import fund_with_test_tokens

        fund_with_test_tokens(job)  # as the creator would, with the faucet's test tokens
        peers = []
        for index, name in enumerate(PARTICIPANTS[: opts["peers"]]):
            user, _ = User.objects.get_or_create(username=name)
            profile = Profile.for_user(user)
            if not profile.payout_address:
                profile.payout_address = "0x" + secrets.token_hex(20)
                profile.save()
            node, _created = Node.objects.get_or_create(
                owner=user, name=f"{name}-laptop", defaults={"token_id": secrets.token_hex(6)}
            )
            key = NodeKey.generate()
            node.public_key = key.public_key_hex
            node.apply_hardware(_this_machine())
            node.save()
            node.touch()
            Consent.objects.create(job=job, node=node, granted=True, by=user)
            data = load_local_data(f"digits:{index}/{opts['peers']}", seed=job.seed % 1000)
            peers.append((node, key, data))
        return job, peers

    # -- running --------------------------------------------------------------------------------
    async def _run_job(self, job: Job, peers, pace: float, timeout: float) -> dict:
        from peers.worker import Peer

        layer = get_channel_layer()
        started = time.monotonic()
        workers = [
            Peer(node.id, key, data, layer, LocalReporter(node, pace), platform_key=platform_key().public_key_hex)
            for node, key, data in peers
        ]
        tasks = [asyncio.create_task(w.run(max_jobs=1)) for w in workers]
        if not await sync_to_async(orchestration.start_job_if_ready)(job.id):
            raise CommandError("the demo job did not start (no eligible nodes)")
        while True:
            await asyncio.sleep(0.2)
            state = await sync_to_async(_job_status)(job.id)
            if state in (Job.Status.SETTLED, Job.Status.FAILED):
                break
            if time.monotonic() - started > timeout:
                raise CommandError(f"the demo job did not finish within {timeout:.0f} s (status {state})")
            await sync_to_async(orchestration.enforce_deadlines)()
        for task in tasks:
            task.cancel()
        return await sync_to_async(_summary)(job.id, time.monotonic() - started)

    def _serve(self, job: Job, peers, pace: float, rounds: int, opts) -> None:
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server
        from twisted.internet import reactor

        from hub.asgi import application

        async def jobs_back_to_back():
            """Keep a job running for whoever opens the site; each one is a fresh job."""
            current, current_peers = job, peers
            while True:
                summary = await self._run_job(current, current_peers, pace, opts["timeout"])
                self.stdout.write(json.dumps(summary))
                await asyncio.sleep(5)
                current, current_peers = await sync_to_async(self._set_up_job)(rounds, opts)
                self.stdout.write(f"Next job: http://{opts['host']}:{opts['port']}/jobs/{current.id}/")

        reactor.callLater(1.0, lambda: reactor._asyncioEventloop.create_task(jobs_back_to_back()))  # type: ignore[arg-type]
        Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=opts["host"], port=opts["port"]),
            signal_handlers=True,
        ).run()


def _this_machine() -> dict:
    from peers.hw import detect_hardware

    return detect_hardware()


def _job_status(job_id: int) -> str:
    return Job.objects.values_list("status", flat=True).get(pk=job_id)


def _summary(job_id: int, seconds: float) -> dict:
    job = Job.objects.get(pk=job_id)
    closed = list(job.round_set.filter(status=Round.Status.CLOSED).order_by("number"))
    payouts = list(job.payouts.filter(status="confirmed").order_by("node_id"))
    return {
        "job": job.id,
        "status": job.status,
        "rounds": len(closed),
        "peers": job.cohort.count(),
        "first_accuracy": closed[0].mean_accuracy if closed else None,
        "final_accuracy": closed[-1].mean_accuracy if closed else None,
        "tokens_paid": float(tokens_amount(sum(int(p.amount_wei) for p in payouts))),
        "chain_txs": sorted({p.tx_hash for p in payouts}),
        "seconds": round(seconds, 2),
    }
