"""Settlement runs in a worker: it waits on the chain."""

from celery import shared_task

from jobs.models import Job
from ledger import services


@shared_task
def settle_job(job_id: int) -> dict:
    """Pay a finished job's rewards (idempotent: safe to run again after a failure)."""
    job = Job.objects.get(pk=job_id)
    payouts = services.settle(job)
    return {"job": job.pk, "status": job.status, "payouts": {p.node_id: p.status for p in payouts}}


@shared_task
def settle_finished_jobs() -> int:
    """Beat's safety net: retry every finished job whose settlement did not complete."""
    job_ids = list(Job.objects.filter(status=Job.Status.FINISHED).values_list("id", flat=True))
    for job_id in job_ids:
        settle_job(job_id)
    return len(job_ids)
