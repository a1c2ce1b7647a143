"""The JSON shape browsers get for a job: the first websocket frame and the page's data."""

from .models import Consent, Job, PeerReport


def round_summary(rnd) -> dict:
    return {
        "round": rnd.number,
        "status": rnd.status,
        "mean_loss": rnd.mean_loss,
        "mean_accuracy": rnd.mean_accuracy,
        "reporters": rnd.reporters,
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


def payouts_summary(job: Job) -> list[dict]:
    return [p.as_event() for p in job.payouts.select_related("node").order_by("node_id")]


def status_event(job: Job) -> dict:
    """A 'status' frame: the job's state and cohort, with its payouts once it has ended."""
    event = {"status": job.status, "current_round": job.current_round, "cohort": cohort_summary(job)}
    if job.status in (Job.Status.FINISHED, Job.Status.SETTLED, Job.Status.FAILED):
        event["payouts"] = payouts_summary(job)
    return event


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
    }
