"""Consent to train on a declared dataset: the checks of a grant, the append-only history each
role may read, and the revocations a job page shows. The rows are jobs.Consent."""

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet
from django.utils import timezone

from jobs.models import Consent, Job

from .models import Dataset


def grant_problem(job: Job, node, dataset_id: int | None, expires_at: datetime | None) -> tuple[Dataset | None, str]:
    """(the dataset a grant covers, "") or (None, why the grant is refused). A node that declares
    datasets must name one of its own whose task is the job's; a node that declares none grants
    without one (the rows from before datasets, and peers that only load the built-in tasks)."""
    mine = Dataset.objects.filter(node=node)
    if expires_at is not None and expires_at <= timezone.now():
        return None, "The consent's expiry must be in the future."
    if dataset_id is None:
        if not mine.exists():
            return None, ""
        if not mine.filter(task=job.dataset).exists():
            return None, f"{node} declares no {job.get_dataset_display()} dataset: declare one to consent to this job."
        return None, f"Choose which of {node}'s datasets this consent covers."
    dataset = mine.filter(pk=dataset_id).first()
    if dataset is None:
        return None, f"{node} declares no such dataset."
    if dataset.task != job.dataset:
        return None, (
            f"“{dataset.name}” holds {dataset.get_task_display()} data; "
            f"this job trains on {job.get_dataset_display()}: choose a matching dataset."
        )
    return dataset, ""


def history_for_job(job: Job, user) -> QuerySet[Consent] | None:
    """The job's consent records ``user`` may read: all for the job's creator, their own nodes'
    for a participant, None (a 404) for anyone else."""
    rows = Consent.objects.filter(job=job).select_related("node", "dataset", "by").order_by("-at", "-id")
    if user.is_authenticated and job.owner_id == user.id:
        return rows
    own = rows.filter(node__owner=user) if user.is_authenticated else rows.none()
    return own if own.exists() else None


def history_for_participant(user) -> QuerySet[Consent]:
    """Every consent record of the user's nodes, across jobs, newest first."""
    return (
        Consent.objects.filter(node__owner=user).select_related("job", "node", "dataset", "by").order_by("-at", "-id")
    )


@dataclass
class Departure:
    node: object
    at: datetime
    expired: bool
    from_round: int | None  # the first round without the node (None: the job runs no more rounds)


def departures(job: Job) -> list[Departure]:
    """Cohort members whose consent no longer stands: when it was revoked or expired, and the
    round they leave from (the one after the last round planned with them: rounds open with
    orchestration.active_members, so the change takes effect at the next round)."""
    out = []
    rounds = list(job.round_set.values_list("number", "members"))
    for member in job.cohort.select_related("node"):
        latest = Consent.latest(job, member.node)
        if latest is None or latest.stands:
            continue
        expired = latest.granted  # a grant that no longer stands has expired
        at = latest.expires_at if expired and latest.expires_at else latest.at
        planned = [number for number, members in rounds if members is None or member.node_id in members]
        leaves = max(planned, default=0) + 1
        out.append(
            Departure(node=member.node, at=at, expired=expired, from_round=leaves if leaves <= job.rounds else None)
        )
    return out
