"""The JSON shape browsers get for a job: the first websocket frame and the page's data."""
from .models import Job, PeerReport


def round_summary(rnd) -> dict:
    return {
        "round": rnd.number, "status": rnd.status, "mean_loss": rnd.mean_loss,
        "mean_accuracy": rnd.mean_accuracy, "reporters": rnd.reporters,
    }


def job_snapshot(job: Job) -> dict:
    reports = PeerReport.objects.filter(round__job=job).select_related("round", "node")
    return {
        "job": job.id, "status": job.status, "current_round": job.current_round, "rounds": job.rounds,
        "closed_rounds": [round_summary(r) for r in job.round_set.filter(status="closed")],
        "reports": [r.as_event() for r in reports],
    }
