"""Rows that several tests start from, made with the ORM."""

import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from accounts.models import Profile
from jobs.models import CohortMember, Consent, Job, Round
from nodes.models import Node
from peers.protocol import PeerReport

CPU_HARDWARE = {"cpu": "Test CPU", "cores": 4, "ram_gb": 16.0, "gpus": [], "cuda": False}


def make_user(username: str | None = None, *, payout_address: str | None = None, password: str = "pw-unused-123"):
    user = get_user_model().objects.create_user(username or f"user-{secrets.token_hex(4)}", password=password)
    if payout_address is not None:
        profile = Profile.for_user(user)
        profile.payout_address = payout_address
        profile.save()
    return user


def make_node(
    owner, name: str = "node", *, hardware: dict | None = None, public_key: str = "", online: bool = False
) -> Node:
    """A registered node; its API token in clear is ``node.token`` (the database has its hash)."""
    node = Node(owner=owner, name=name, public_key=public_key)
    node.apply_hardware(hardware or CPU_HARDWARE)
    node.token = node.issue_token()
    node.last_seen = timezone.now() if online else None
    node.save()
    return node


def make_running_job(
    owner,
    cohort_size: int = 2,
    is_public: bool = True,
    name: str = "live job",
    rounds: int = 2,
    node_names: list[str] | None = None,
    **job_fields,
):
    """A running job with consenting cohort members and round 1 open: (job, round, nodes)."""
    job = Job.objects.create(
        owner=owner,
        name=name,
        is_public=is_public,
        num_peers=cohort_size,
        rounds=rounds,
        status=Job.Status.RUNNING,
        current_round=1,
        started_at=timezone.now(),
        **job_fields,
    )
    nodes = []
    for position in range(cohort_size):
        node = make_node(
            owner,
            node_names[position] if node_names else f"{name}-node-{position}",
            hardware={"cpu": "c", "cores": 2, "ram_gb": 4},
            public_key="ab" * 32,
        )
        Consent.objects.create(job=job, node=node, granted=True, by=owner)
        CohortMember.objects.create(job=job, node=node, position=position)
        nodes.append(node)
    rnd = Round.objects.create(job=job, number=1, deadline=timezone.now() + timedelta(minutes=10))
    return job, rnd, nodes


def peer_report(job, node, round_number: int = 1, **fields) -> PeerReport:
    """A well-formed round report from ``node``; ``fields`` override the defaults."""
    values = {
        "train_loss": 0.5,
        "eval_loss": 0.6,
        "accuracy": 0.5,
        "samples": 200,
        "eval_samples": 50,
        "model_hash": "d" * 64,
        "bytes_sent": 10,
        "bytes_received": 20,
        "duration_s": 0.3,
    }
    return PeerReport(job_id=job.id, round=round_number, node_id=node.id, **{**values, **fields})
