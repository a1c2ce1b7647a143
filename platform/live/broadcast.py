"""Tell the browsers watching a job what just happened (after the database knows it)."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from peers.protocol import job_group

log = logging.getLogger(__name__)


def job_update(job_id: int, kind: str, data: dict) -> None:
    """kind: 'report' (one peer's round metrics), 'round' (a closed round), 'status'."""
    try:
        async_to_sync(get_channel_layer().group_send)(
            job_group(job_id), {"type": "job.update", "kind": kind, "data": data}
        )
    except Exception:  # viewers missing an update must never break orchestration
        log.exception("broadcast to job %s failed", job_id)
