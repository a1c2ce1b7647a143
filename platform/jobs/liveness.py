"""Which nodes are online, told to the viewers of the jobs they train in. A node comes online
when it calls the API (nodes.api) and goes offline when it has missed two heartbeats in a row
(beat runs mark_offline_nodes every few seconds); each change is announced once."""

import logging

from live.broadcast import job_update
from live.operator import operator_update_by_id
from nodes.models import Node

from .models import Job

log = logging.getLogger(__name__)


def announce(node_id: int, online: bool) -> None:
    """Tell the viewers of every running job with this node in its cohort, and its operator."""
    operator_update_by_id(node_id)
    jobs = Job.objects.filter(status=Job.Status.RUNNING, cohort__node_id=node_id).values_list("id", flat=True)
    for job_id in set(jobs):
        job_update(job_id, "node", {"node": node_id, "online": online})


def mark_offline_nodes() -> list[int]:
    """Nodes announced online but not heard from within NODE_ONLINE_SECONDS: mark and announce."""
    gone = []
    stale = Node.objects.filter(online_announced=True, last_seen__lt=Node.online_cutoff())
    for node_id in stale.values_list("id", flat=True):
        # Compare-and-set: a heartbeat that lands meanwhile keeps the node online.
        if Node.objects.filter(pk=node_id, online_announced=True, last_seen__lt=Node.online_cutoff()).update(
            online_announced=False
        ):
            log.info("node %s missed its heartbeats: offline", node_id)
            announce(node_id, online=False)
            gone.append(node_id)
    return gone
