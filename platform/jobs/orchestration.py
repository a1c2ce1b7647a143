"""Round orchestration: cohort formation, round plans, reports, closing rounds.

Each step writes the database first (in a transaction, with the job row locked) and tells the
outside world (peers over the channel layer, browsers, Celery) only after the commit.
"""

import base64
import logging
import math
import time
from datetime import timedelta
from functools import partial

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from ledger.detection import judge_round
from ledger.models import Escrow, Flag, Stake
from live.broadcast import job_update
from nodes import exchange
from nodes.authority import platform_key
from peers import topology
from peers.evidence import score_from_evidence
from peers.plans import links as plan_links
from peers.plans import round_plans
from peers.protocol import (
    NO_WEIGHTS_BEFORE_DEADLINE,
    JobEvent,
    RoundPlan,
    encode,
    event_bytes,
    node_channel,
    to_message,
)
from peers.protocol import PeerReport as ReportMessage
from peers.protocol import ScoreReport as ScoreMessage

from . import queue
from .models import CohortMember, Consent, Job, PeerReport, Round, ValidatorReport
from .snapshot import round_summary, status_event

log = logging.getLogger(__name__)


class ReportRefused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- starting ---------------------------------------------------------------------------------
def eligible_nodes(job: Job) -> list:
    nodes = [
        n
        for n in Consent.consenting_nodes(job)
        if n.is_online and n.public_key and job.node_is_eligible(n) and n.pk != job.validator_id
    ]
    if job.stake > 0:  # only nodes whose owner's stake is on chain
        staked = set(Stake.objects.filter(job=job, status=Stake.Status.STAKED).values_list("owner_id", flat=True))
        nodes = [n for n in nodes if n.owner_id in staked]
    return nodes


def validator_ready(job: Job) -> bool:
    """A job with a validator starts only once the validator's peer is online (it scores every
    round: without it the rounds would be paid on an even split)."""
    validator = job.validator
    return validator is None or bool(validator.is_online and validator.public_key)


def start_job_if_ready(job_id: int) -> bool:
    """Form the cohort and open round 1 when enough consenting, eligible, online nodes exist."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status != Job.Status.WAITING or not Escrow.lets_start(job) or not validator_ready(job):
            return False
        candidates = eligible_nodes(job)
        if len(candidates) < job.num_peers:
            return False
        for position, node in enumerate(candidates[: job.num_peers]):
            CohortMember.objects.create(job=job, node=node, position=position)
        job.status = Job.Status.RUNNING
        job.started_at = timezone.now()
        first = open_round(job, 1)
    log.info("job %s started with %d peers", job.id, job.num_peers)
    dispatch_plans(first)  # tells the viewers too
    return True


def start_jobs_for_node(node) -> None:
    """A node came online: any waiting job it consented to may now have its cohort."""
    job_ids = Job.objects.filter(Q(consents__node=node) | Q(validator=node), status=Job.Status.WAITING).values_list(
        "id", flat=True
    )
    for job_id in set(job_ids):
        transaction.on_commit(partial(queue.start_job, job_id))


# -- rounds -----------------------------------------------------------------------------------
def open_round(job: Job, number: int) -> Round:
    """Open a round for the members it can count on: consenting, not flagged as attackers in the
    job (ledger.detection), and (after round 1) online and not missing rounds. The topology is
    built over them alone, so nobody waits for the dead. When none of them is online right now
    (a blip, a platform restart), the round is planned for all of them and waits for its
    deadline instead of failing the job at once."""
    job.current_round = number
    job.save(update_fields=["status", "started_at", "current_round"])
    flagged = set(Flag.objects.filter(job=job).values_list("node_id", flat=True))
    eligible = [m for m in active_members(job) if m.node_id not in flagged]
    members = [m for m in eligible if number == 1 or m.plannable] or eligible
    return Round.objects.create(
        job=job,
        number=number,
        deadline=timezone.now() + timedelta(seconds=job.round_timeout_s),
        members=[m.node_id for m in members],
    )


def active_members(job: Job) -> list[CohortMember]:
    """Cohort members whose consent still stands (a revocation drops a node from new rounds)."""
    return [m for m in job.cohort.select_related("node") if Consent.current(job, m.node)]


def round_members(rnd: Round) -> list[CohortMember]:
    """The members a round was planned for whose consent still stands, in position order (by node
    id with an aggregation tree: its root, the lowest id, is then the star's centre)."""
    active = active_members(rnd.job)
    if rnd.members is not None:
        by_node = {m.node_id: m for m in active}
        active = [by_node[node_id] for node_id in rnd.members if node_id in by_node]
    if rnd.job.secagg_tree_group:
        active.sort(key=lambda m: m.node_id)
    return active


def rejoin(node) -> None:
    """A member's peer said hello again: count on it from the next round of its running jobs."""
    CohortMember.objects.filter(node=node, job__status=Job.Status.RUNNING, missed_rounds__gt=0).update(missed_rounds=0)


def mixing_rows(job: Job, round_number: int, positions: dict[int, int]) -> list[dict[int, float]]:
    params = job.topology_params(round_number, positions)
    try:
        return topology.build(job.topology, len(positions), **params)
    except ValueError as exc:
        if not params.get("cut_links"):
            raise
        log.warning("job %s: cut links make no connected graph (%s); using all links again", job.id, exc)
        return topology.build(job.topology, len(positions), **{**params, "cut_links": []})


def signed_plans(rnd: Round) -> list[RoundPlan]:
    """The round's plans, one per member it was planned for, signed with the platform key."""
    job = rnd.job
    members = round_members(rnd)
    positions = {m.node_id: i for i, m in enumerate(members)}
    plans = round_plans(
        job_id=job.id,
        round=rnd.number,
        total_rounds=job.rounds,
        members=[(m.node.id, m.node.public_key) for m in members],
        rows=mixing_rows(job, rnd.number, positions) if members else [],
        config=job.config(),
        deadline=rnd.deadline.timestamp(),
        max_payload_bytes=settings.MAX_WEIGHTS_BYTES,
        sign=platform_key().sign,
        validator=None if job.validator is None else (job.validator.id, job.validator.public_key),
        consent_expiry=consent_expiry(job, members),
    )
    return plans


def consent_expiry(job: Job, members: list[CohortMember]) -> dict[int, float]:
    """Node id -> when its standing consent expires (unix seconds), for members whose grant has an expiry."""
    expiry = {}
    for m in members:
        latest = Consent.latest(job, m.node)
        if latest is not None and latest.granted and latest.expires_at is not None:
            expiry[m.node_id] = latest.expires_at.timestamp()
    return expiry


def build_plans(rnd: Round) -> list[tuple[str, dict]]:
    """(channel, wire message) of each of the round's signed plans."""
    return [(node_channel(plan.node_id), to_message(plan)) for plan in signed_plans(rnd)]


def current_plans_for(node) -> dict:
    """What a (re)starting peer needs to know: the current round of every running job it is a
    member of, and its signed plans for the open rounds it is planned in (msgpack, base64)."""
    jobs = Job.objects.filter(Q(cohort__node=node) | Q(validator=node), status=Job.Status.RUNNING).distinct()
    plans = [
        base64.b64encode(encode(plan)).decode()
        for rnd in Round.objects.filter(job__in=jobs, status=Round.Status.OPEN).select_related("job")
        for plan in signed_plans(rnd)
        if plan.node_id == node.id
    ]
    return {"current_rounds": {str(job.id): job.current_round for job in jobs}, "plans": plans}


def round_neighbours(rnd: Round) -> dict[int, set[int]]:
    """Each planned member's neighbours in the round: the links of its signed plan, from the same
    mixing rows, without building and signing the plans (hello, beat and the relay ask often)."""
    members = round_members(rnd)
    rows = mixing_rows(rnd.job, rnd.number, {m.node_id: i for i, m in enumerate(members)}) if members else []
    links = plan_links([m.node_id for m in members], rows, rnd.job.secagg_tree_group)
    if rnd.job.validator_id and links:  # every member also sends the validator its model
        for targets in links.values():
            targets.add(rnd.job.validator_id)
    return links


def exchange_grants(node_ids: set[int]) -> dict[int, set[int]]:
    """Whose inboxes each node may add to: its neighbours in every open round it is planned in."""
    grants: dict[int, set[int]] = {node_id: set() for node_id in node_ids}
    for rnd in Round.objects.filter(status=Round.Status.OPEN).select_related("job"):
        if rnd.members is not None and not grants.keys() & set(rnd.members):
            continue
        for node_id, neighbours in round_neighbours(rnd).items():
            if node_id in grants:
                grants[node_id] |= neighbours
    return grants


def update_exchange_grants(job: Job, only: set[int] | None = None) -> None:
    """Rewrite what the job's members (or ``only`` these) may send to on the peers' exchange:
    a new round's neighbours in, a dropped member's or a finished job's out."""
    nodes = set(job.cohort.values_list("node_id", flat=True)) if only is None else only
    try:
        exchange.allow_sends(exchange_grants(nodes))
    except exchange.ExchangeUnavailable as exc:
        log.warning("job %s: exchange grants not updated (%s); beat tries again", job.id, exc)


def tell_peers_job_ended(job: Job, reason: str) -> None:
    """A signed `job.event` "ended" to every member and the validator of a job that ended before
    its last planned round (best effort: a peer that misses it waits, as for a lost plan)."""
    event = JobEvent(
        job_id=job.id,
        event="ended",
        detail={"reason": reason[:200]},
        signature=platform_key().sign(event_bytes(job.id, "ended")),
    )
    layer = exchange.plan_layer()
    node_ids = [m.node_id for m in job.cohort.all()] + ([job.validator_id] if job.validator_id else [])
    for node_id in node_ids:
        try:
            async_to_sync(layer.send)(node_channel(node_id), to_message(event))
        except Exception as exc:
            log.warning("could not tell node %s that job %s ended: %s", node_id, job.id, exc)


DELIVERY_RETRIES_S = (0.5, 1.0, 2.0)  # a blip of the exchange (a restart) costs seconds, not the round


def dispatch_plans(rnd: Round, only: set[int] | None = None) -> None:
    """Send each planned member its plan (or only the nodes in ``only``), trying again for a few
    seconds while the exchange cannot be reached; a node still unreachable is a straggler for
    this round until beat sends the plan again (``resend_plans``)."""
    update_exchange_grants(rnd.job, only)
    layer = exchange.plan_layer()
    channels = None if only is None else {node_channel(node_id) for node_id in only}
    pending = [(c, m) for c, m in build_plans(rnd) if channels is None or c in channels]
    for delay in (*DELIVERY_RETRIES_S, None):
        failed = []
        for channel, message in pending:
            try:
                async_to_sync(layer.send)(channel, message)
            except Exception as exc:
                failed.append((channel, message))
                error = exc
        pending = failed
        if not pending or delay is None:
            break
        time.sleep(delay)
    for channel, _ in pending:
        log.warning("round plan for %s not delivered: %s", channel, error)
    if only is None:  # a new round: viewers see it start
        job_update(rnd.job_id, "status", status_event(rnd.job))


def _check_report(msg: ReportMessage) -> None:
    for name in ("train_loss", "eval_loss", "accuracy", "duration_s", "epsilon", "consensus_distance"):
        value = getattr(msg, name)
        if not math.isfinite(value):
            raise ReportRefused(400, f"{name} must be a finite number")
    if msg.epsilon < 0:
        raise ReportRefused(400, "epsilon must not be negative")
    if msg.consensus_distance < 0:
        raise ReportRefused(400, "consensus_distance must not be negative")
    if not 0.0 <= msg.accuracy <= 1.0:
        raise ReportRefused(400, "accuracy must be between 0 and 1")
    # Upper bounds are the database columns' (integer / bigint): beyond them the insert would fail.
    for name, limit in (
        ("samples", 2**31 - 1),
        ("eval_samples", 2**31 - 1),
        ("bytes_sent", 2**63 - 1),
        ("bytes_received", 2**63 - 1),
        ("model_bytes", 2**63 - 1),
    ):
        if not 0 <= getattr(msg, name) <= limit:
            raise ReportRefused(400, f"{name} must be between 0 and {limit}")
    if len(msg.model_hash) != 64 or any(c not in "0123456789abcdef" for c in msg.model_hash):
        raise ReportRefused(400, "model_hash must be a sha256 hex digest")
    for item in msg.rejected:
        if "\x00" in item["reason"] or not -(2**63) <= item["sender"] < 2**63:
            raise ReportRefused(400, "rejected: reason must not contain NUL and sender must be a node id")


def accept_report(node, msg: ReportMessage) -> PeerReport:
    """Persist one peer's report for the open round; close the round when everyone reported."""
    if msg.node_id != node.id:
        raise ReportRefused(403, "report is for another node")
    _check_report(msg)
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=msg.job_id).first()
        if job is None or not any(m.node_id == node.id for m in active_members(job)):
            raise ReportRefused(403, "node is not in this job's active cohort")
        rnd = job.round_set.filter(number=msg.round).first()
        if rnd is None:
            raise ReportRefused(404, f"round {msg.round} does not exist")
        members = round_members(rnd)
        if not any(m.node_id == node.id for m in members):
            raise ReportRefused(403, f"node was not planned for round {msg.round} (it was offline or missing rounds)")
        if rnd.status != Round.Status.OPEN:
            raise ReportRefused(409, f"round {msg.round} is closed")
        if rnd.reports.filter(node=node).exists():
            raise ReportRefused(409, "duplicate report")
        report = PeerReport.objects.create(
            round=rnd,
            node=node,
            train_loss=msg.train_loss,
            eval_loss=msg.eval_loss,
            accuracy=msg.accuracy,
            samples=msg.samples,
            eval_samples=msg.eval_samples,
            model_hash=msg.model_hash,
            bytes_sent=msg.bytes_sent,
            bytes_received=msg.bytes_received,
            duration_s=msg.duration_s,
            rejected=list(msg.rejected),
            diverged=msg.diverged,
            epsilon=msg.epsilon,
            budget_spent=msg.budget_spent,
            consensus_distance=msg.consensus_distance,
            model_bytes=msg.model_bytes,
        )
        complete = rnd.reports.count() >= len(members)
        transaction.on_commit(lambda: job_update(job.id, "report", report.as_event()))
        if complete:
            transaction.on_commit(lambda: queue.close_round(rnd.id))
    for item in msg.rejected:
        log.warning(
            "job %s round %s: node %s rejected weights from %s: %s",
            job.id,
            rnd.number,
            node.id,
            item.get("sender"),
            item.get("reason"),
        )
    return report


def close_round(round_id: int) -> None:
    """Close a round (quorum or deadline), then open the next one or finish the job."""
    with transaction.atomic():
        rnd = Round.objects.select_related("job").get(pk=round_id)
        job = Job.objects.select_for_update().get(pk=rnd.job_id)
        rnd.refresh_from_db()
        if rnd.status != Round.Status.OPEN:
            return
        reports = list(rnd.reports.all())
        note_missed_rounds(rnd, {r.node_id for r in reports})
        rnd.status = Round.Status.CLOSED
        rnd.closed_at = timezone.now()
        rnd.reporters = len(reports)
        scored = [r for r in reports if not r.diverged]  # a diverged peer's numbers mean nothing
        if scored:
            # Weighted by evaluation samples, so the mean is the accuracy over all held-out data.
            weights = [r.eval_samples for r in scored] if any(r.eval_samples for r in scored) else [1] * len(scored)
            total = sum(weights)
            rnd.mean_accuracy = sum(w * r.accuracy for w, r in zip(weights, scored)) / total
            rnd.mean_loss = sum(w * r.eval_loss for w, r in zip(weights, scored)) / total
        rnd.save()
        if job.topology == "dynamic":
            note_slow_links(job, reports)
        following = None
        if job.cancel_requested:
            # The creator cancelled it: this round was its last (and is paid); no next round.
            job.status = Job.Status.CANCELLED
            job.finished_at = timezone.now()
        elif not reports:
            job.status = Job.Status.FAILED
            job.failure = f"no peer reported in round {rnd.number}"
            job.finished_at = timezone.now()
        elif scored and all(r.budget_spent for r in scored):
            # Every peer's privacy budget is spent: the job ends here, finished (not failed on
            # empty rounds); the rounds it did not run are refunded with the unspent budget.
            job.status = Job.Status.FINISHED
            job.finished_at = timezone.now()
            job.ended_early = f"the privacy budget (epsilon {job.dp_epsilon:g}) was spent after round {rnd.number}"
        elif rnd.number < job.rounds:
            following = open_round(job, rnd.number + 1)
        else:
            job.status = Job.Status.FINISHED
            job.finished_at = timezone.now()
        job.save()
    log.info("job %s round %s closed: %d reports, accuracy %s", job.id, rnd.number, len(reports), rnd.mean_accuracy)
    job_update(job.id, "round", round_summary(rnd))
    if following is not None:
        dispatch_plans(following)
    else:
        update_exchange_grants(job)  # no open round: its members may send nowhere for it
        job_update(job.id, "status", status_event(job))
        if rnd.number < job.rounds:  # ended early: peers (and the validator) waiting for a plan leave it
            tell_peers_job_ended(job, job.ended_early or job.failure or job.status)
    if job.reward_per_round or job.status == Job.Status.FINISHED:
        queue.settle_job(job.id)  # each closed round is committed and paid, on its own queue


def note_missed_rounds(rnd: Round, reporters: set[int]) -> None:
    """Count, per planned member, the rounds in a row it did not report in (open_round leaves
    out those at CohortMember.MAX_MISSED_ROUNDS until their peer says hello again)."""
    planned = rnd.members if rnd.members is not None else [m.node_id for m in active_members(rnd.job)]
    cohort = CohortMember.objects.filter(job=rnd.job, node_id__in=planned)
    cohort.filter(node_id__in=reporters).update(missed_rounds=0)
    cohort.exclude(node_id__in=reporters).update(missed_rounds=F("missed_rounds") + 1)


def note_slow_links(job: Job, reports) -> None:
    """Remember links whose weights missed the deadline, so the next graph avoids them."""
    cut = {tuple(sorted(link)) for link in job.cut_links}
    for report in reports:
        for item in report.rejected:
            if item.get("reason") == NO_WEIGHTS_BEFORE_DEADLINE:
                cut.add(tuple(sorted((report.node_id, int(item["sender"])))))
    job.cut_links = [list(link) for link in sorted(cut)]


RESEND_AFTER_S = 15  # a plan lost on the way (Redis restarted, a message expired) is sent again


def resend_after_s(job: Job) -> float:
    """How long an open round's plans wait before beat sends them again: RESEND_AFTER_S, or a
    third of the round's time when that is shorter (so a lost plan still leaves time to train)."""
    return min(RESEND_AFTER_S, job.round_timeout_s / 3)


def resend_plans() -> int:
    """Send the plan again to planned members of open rounds that have not reported after
    ``resend_after_s`` (the same signed bytes: a peer that has it already ignores the copy)."""
    sent = 0
    now = timezone.now()
    for rnd in Round.objects.filter(status=Round.Status.OPEN).select_related("job"):
        if rnd.opened_at > now - timedelta(seconds=resend_after_s(rnd.job)):
            continue
        waiting = {m.node_id for m in round_members(rnd)} - set(rnd.reports.values_list("node_id", flat=True))
        if waiting:
            dispatch_plans(rnd, only=waiting)
            sent += len(waiting)
    return sent


def enforce_deadlines() -> int:
    """Close every open round whose deadline passed (stragglers are dropped for that round), and
    every open round all its members reported in whose close could not be queued."""
    open_rounds = Round.objects.filter(status=Round.Status.OPEN).select_related("job")
    due = [
        rnd.id for rnd in open_rounds if rnd.deadline < timezone.now() or rnd.reports.count() >= len(round_members(rnd))
    ]
    for round_id in due:
        close_round(round_id)
    return len(due)


def accept_scores(node, msg: ScoreMessage) -> ValidatorReport:
    """Store the validator's scores of a round, once, after recomputing them from their evidence:
    only the job's validator may send them, only for members the round was planned for."""
    job = Job.objects.filter(pk=msg.job_id).first()
    if job is None or job.validator_id != node.id or msg.node_id != node.id:
        raise ReportRefused(403, "only the job's validator reports scores")
    rnd = job.round_set.filter(number=msg.round).first()
    if rnd is None:
        raise ReportRefused(404, f"round {msg.round} does not exist")
    if len(msg.consensus_hash) != 64 or any(c not in "0123456789abcdef" for c in msg.consensus_hash):
        raise ReportRefused(400, "consensus_hash must be a sha256 hex digest")
    try:
        scores = score_from_evidence(msg.evidence)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportRefused(400, f"the evidence does not give scores: {exc}") from None
    planned = set(rnd.members if rnd.members is not None else [m.node_id for m in active_members(job)])
    strangers = sorted(set(scores) - planned)
    if strangers:
        raise ReportRefused(400, f"scores for nodes not planned in round {msg.round}: {strangers}")
    try:
        with transaction.atomic():
            report = ValidatorReport.objects.create(
                round=rnd, node=node, evidence=msg.evidence, consensus_hash=msg.consensus_hash
            )
    except IntegrityError:
        raise ReportRefused(409, "duplicate report") from None
    flagged = judge_round(job, rnd, report)  # reputations; attackers flagged before the round is paid
    if flagged:
        log.warning("job %s round %s: nodes %s flagged as attackers", job.id, rnd.number, flagged)
    if job.reward_per_round:
        transaction.on_commit(partial(queue.settle_job, job.id))  # the round can be paid now
    return report
