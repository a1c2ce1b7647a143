"""Faults during a running job on the production stack, with four real peer processes: a peer is
SIGKILLed mid-round and comes back, the peers' exchange (a Redis the tests started on its own
port) restarts, the Celery worker crashes and restarts, daphne crashes and restarts. The job
still runs every round and is settled; every completed round's reports and the job's payouts
exist exactly once; the dead peer is left out of the rounds after it died and counts again from
the round after its restart."""

import secrets
import threading
import time

import pytest
from django.db.models import Count

from jobs.models import Consent, Job, PeerReport, Round
from jobs.orchestration import dispatch_plans
from ledger.audit import audit_job
from ledger.models import Payout
from ledger.settlement import fund_with_test_tokens
from nodes.exchange import inbox_key
from tests.factories import make_node, make_running_job, make_user

PEERS = 4
# Enough rounds (of about a second each) that every fault lands while the job runs: a restarted
# peer process takes seconds to import torch and say hello again.
ROUNDS = 30
LOCAL_STEPS = 300
ROUND_TIMEOUT_S = 20
JOB_WITHIN_S = 480


@pytest.mark.django_db(transaction=True)
def test_plans_sent_while_the_exchange_restarts_still_arrive(exchange):
    """The platform tries again for a few seconds: a restart of the exchange as a round opens
    used to leave every member without its plan until the deadline, failing the job."""
    _, rnd, nodes = make_running_job(make_user(), cohort_size=2)
    exchange.stop()
    restart = threading.Timer(1.0, exchange.start)
    restart.start()
    dispatch_plans(rnd)
    restart.join()
    with exchange.admin() as admin:
        assert [admin.zcard(inbox_key(node.id)) for node in nodes] == [1, 1]


def wait_until(condition, timeout: float, stack, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f} s\n{stack.logs()}")
        time.sleep(0.2)
    return value


@pytest.mark.slow
def test_a_job_survives_a_dead_peer_and_restarts_of_the_exchange_worker_and_web(stack):
    nodes = []
    for i in range(PEERS):
        owner = make_user(f"operator{i}", payout_address="0x" + secrets.token_hex(20))
        nodes.append(make_node(owner, f"node-{i}"))
    job = Job.objects.create(
        owner=nodes[0].owner,
        name="faults",
        num_peers=PEERS,
        rounds=ROUNDS,
        round_timeout_s=ROUND_TIMEOUT_S,
        local_steps=LOCAL_STEPS,
        lr=0.2,
        lr_schedule="constant",
        reward_per_round=10,
    )
    fund_with_test_tokens(job)  # the creator's deposit, before the job may start
    for node in nodes:
        Consent.objects.create(job=job, node=node, granted=True, by=node.owner)
    peers = [stack.peer(node.token, f"digits:{i}/{PEERS}") for i, node in enumerate(nodes)]
    victim = nodes[-1]

    def round_open(number: int) -> Round | None:
        return Round.objects.filter(job=job, number=number).first()

    wait_until(lambda: round_open(2), 120, stack, "round 2")
    peers[-1].kill()  # mid-job, no goodbye
    dropped = wait_until(
        lambda: Round.objects.filter(job=job, number__gt=2).exclude(members__contains=[victim.id]).first(),
        120,
        stack,
        "a round planned without the dead peer",
    )
    restarted = stack.peer(victim.token, f"digits:{PEERS - 1}/{PEERS}", home=peers[-1].home)
    restarted.wait_for(r"joined", timeout=60)
    back_in = wait_until(
        lambda: Round.objects.filter(job=job, number__gt=dropped.number, members__contains=[victim.id]).first(),
        90,
        stack,
        "the restarted peer planned again",
    )

    def current_round() -> int:
        return Job.objects.get(pk=job.pk).current_round

    stack.peer_redis.restart()  # every node user and every inbox is gone
    after = min(current_round() + 1, ROUNDS)
    wait_until(lambda: round_open(after), 120, stack, f"round {after} after the exchange restarted")
    stack.restart("celery-worker")
    after = min(current_round() + 1, ROUNDS)
    wait_until(lambda: round_open(after), 120, stack, f"round {after} after the worker restarted")
    stack.restart("daphne")

    wait_until(
        lambda: Job.objects.filter(pk=job.pk, status__in=[Job.Status.SETTLED, Job.Status.FAILED]).exists(),
        JOB_WITHIN_S,
        stack,
        "the job's end",
    )
    job.refresh_from_db()
    assert job.status == Job.Status.SETTLED, f"{job.status}: {job.failure}\n{stack.logs()}"

    rounds = list(Round.objects.filter(job=job).order_by("number"))
    assert [r.number for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r.status == Round.Status.CLOSED and r.reporters >= 1 for r in rounds)
    stored = {r.number: PeerReport.objects.filter(round=r).count() for r in rounds}
    assert stored == {r.number: r.reporters for r in rounds}, "a report stored after its round closed, or lost"
    assert not PeerReport.objects.filter(round__job=job).values("round", "node").annotate(n=Count("id")).filter(n__gt=1)
    assert PeerReport.objects.filter(round__job=job, round__number__gte=back_in.number, node=victim).exists()

    # Every round was paid, once per reporter, and the chain agrees with the database.
    payouts = Payout.objects.filter(job=job)
    reported = PeerReport.objects.filter(round__job=job, diverged=False).values_list("round__number", "node_id")
    assert sorted(payouts.values_list("round__number", "node_id")) == sorted(reported)  # once each
    assert set(payouts.values_list("status", flat=True)) == {Payout.Status.CONFIRMED}
    assert [c for c in audit_job(job) if not c.ok] == []

    for proc in [*peers[:-1], restarted]:
        assert proc.popen.wait(timeout=120) == 0, proc.output()[-3000:]
    renewed = sum("exchange credentials renewed" in p.output() for p in [*peers[:-1], restarted])
    assert renewed >= 1, "no peer needed new exchange credentials after the restart?"
