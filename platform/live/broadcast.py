"""Tell the browsers watching a job what just happened (after the database knows it).

Every frame of a job carries `seq`, a per-job number allocated here after the change
committed: a viewer's snapshot says the number it is current to (read before the snapshot is
built), so a frame numbered at or below it is already in the snapshot and one above it is news.
A gap tells the viewer it missed a frame: it asks for a new snapshot."""

import logging

from peers.protocol import job_group

from . import publish
from .models import JobSequence

log = logging.getLogger(__name__)


def job_update(job_id: int, kind: str, data: dict) -> None:
    """kind: 'report' (one peer's round metrics), 'round' (a closed round), 'status', 'node'
    (a member online or offline), 'event' (a line of the event log, e.g. a consent change)."""
    try:
        if kind == "status":  # a new round (or the end): the topology graph follows
            from jobs.models import Job

            from .events import job_topology

            data = {**data, "topology": job_topology(Job.objects.get(pk=job_id))}
        seq = JobSequence.next(job_id)
        publish.group_send(job_group(job_id), {"type": "job.update", "kind": kind, "seq": seq, "data": data})
    except Exception:  # viewers missing an update must never break orchestration
        log.exception("broadcast to job %s failed", job_id)
