"""Celery tasks: thin wrappers so orchestration runs in a worker (or eagerly in the demo)."""

from celery import shared_task

from . import liveness, orchestration
from .models import Job


@shared_task
def start_job(job_id: int) -> bool:
    return orchestration.start_job_if_ready(job_id)


@shared_task
def start_ready_jobs() -> int:
    started = 0
    for job_id in Job.objects.filter(status=Job.Status.WAITING).values_list("id", flat=True):
        started += orchestration.start_job_if_ready(job_id)
    return started


@shared_task
def close_round_task(round_id: int) -> None:
    orchestration.close_round(round_id)


@shared_task
def enforce_deadlines() -> int:
    return orchestration.enforce_deadlines()


@shared_task
def mark_offline_nodes() -> int:
    return len(liveness.mark_offline_nodes())


@shared_task
def resend_plans() -> int:
    return orchestration.resend_plans()
