"""Rows that several tests start from, made with the ORM."""
from datetime import timedelta

from django.utils import timezone

from jobs.models import CohortMember, Consent, Job, Round
from nodes.models import Node


def make_running_job(owner, cohort_size: int = 2, is_public: bool = True, name: str = "live job",
                     rounds: int = 2, node_names: list[str] | None = None, **job_fields):
    """A running job with consenting cohort members and round 1 open: (job, round, nodes)."""
    job = Job.objects.create(owner=owner, name=name, is_public=is_public, num_peers=cohort_size, rounds=rounds,
                             status=Job.Status.RUNNING, current_round=1, started_at=timezone.now(), **job_fields)
    nodes = []
    for position in range(cohort_size):
        node = Node(owner=owner, name=node_names[position] if node_names else f"{name}-node-{position}")
        node.apply_hardware({"cpu": "c", "cores": 2, "ram_gb": 4})
        node.issue_token()
        node.public_key = "ab" * 32
        node.save()
        Consent.objects.create(job=job, node=node, granted=True, by=owner)
        CohortMember.objects.create(job=job, node=node, position=position)
        nodes.append(node)
    rnd = Round.objects.create(job=job, number=1, deadline=timezone.now() + timedelta(minutes=10))
    return job, rnd, nodes
