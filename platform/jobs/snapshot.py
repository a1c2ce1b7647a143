"""The JSON shape browsers get for a job: the first websocket frame and the page's data."""

from ledger.models import Escrow

from .models import Consent, Job, PeerReport


def round_summary(rnd) -> dict:
    return {
        "round": rnd.number,
        "status": rnd.status,
        "mean_loss": rnd.mean_loss,
        "mean_accuracy": rnd.mean_accuracy,
        "reporters": rnd.reporters,
        "members": rnd.members,  # who was planned: the page tells who did not report
        "seconds": (rnd.closed_at - rnd.opened_at).total_seconds() if rnd.closed_at else None,
    }


def cohort_summary(job: Job) -> list[dict]:
    """Who trains in the job, whether each is online and still consents (the page works out from
    this and the reports which peer a round is waiting for)."""
    return [
        {
            "node": m.node_id,
            "name": m.node.name,
            "operator": m.node.owner.username,
            "position": m.position,
            "online": m.node.is_online,
            "consent": Consent.current(job, m.node),
        }
        for m in job.cohort.select_related("node__owner")
    ]


def recruiting_summary(job: Job) -> dict | None:
    """How far a recruiting job is from its cohort: consenting nodes (the validator aside), how
    many of them are online, how many it needs; None once it is not recruiting."""
    if job.status != Job.Status.WAITING:
        return None
    nodes = [n for n in Consent.consenting_nodes(job) if n.pk != job.validator_id]
    return {"consented": len(nodes), "online": sum(1 for n in nodes if n.is_online), "needed": job.num_peers}


def payouts_summary(job: Job) -> list[dict]:
    """Every round's payouts, round by round (each closed round is paid as it closes)."""
    return [p.as_event() for p in job.payouts.select_related("node", "round").order_by("round__number", "node_id")]


def escrow_summary(job: Job) -> dict | None:
    escrow = Escrow.objects.filter(job=job).first()
    return escrow.as_event() if escrow else None


def status_event(job: Job) -> dict:
    """A 'status' frame: the job's state and cohort, its payouts so far and its budget."""
    return {
        "status": job.status,
        "current_round": job.current_round,
        "cohort": cohort_summary(job),
        "payouts": payouts_summary(job),
        "escrow": escrow_summary(job),
        "recruiting": recruiting_summary(job),
    }


def job_snapshot(job: Job) -> dict:
    reports = PeerReport.objects.filter(round__job=job).select_related("round", "node")
    return {
        "job": job.id,
        "status": job.status,
        "current_round": job.current_round,
        "rounds": job.rounds,
        "closed_rounds": [round_summary(r) for r in job.round_set.filter(status="closed")],
        "reports": [r.as_event() for r in reports],
        "cohort": cohort_summary(job),
        "payouts": payouts_summary(job),
        "escrow": escrow_summary(job),
        "recruiting": recruiting_summary(job),
    }
