"""The last chain audit of each job, kept in the cache for the admin audit page.

The web process never reaches the chain: the settler runs `ledger.audit.audit_job` (the task
`ledger.tasks.audit_job_task`) and stores its checks here, as plain JSON, for the page to read.
This module imports nothing of the chain, so the views can use it."""

from dataclasses import asdict
from datetime import UTC, datetime

from django.core.cache import cache

AUDIT_TIMEOUT_S = 7 * 24 * 3600  # a week: the page says when the audit ran
REQUEST_TIMEOUT_S = 3600


def result_key(job_id: int) -> str:
    return f"ledger:audit:{int(job_id)}"


def request_key(job_id: int) -> str:
    return f"ledger:audit-requested:{int(job_id)}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def as_result(checks, error: str = "") -> dict:
    """Checks (ledger.audit.Check) as the JSON the cache keeps: when, every check, and counts."""
    rows = [asdict(c) for c in checks]
    bad = sum(1 for r in rows if not r["ok"])
    return {
        "ran_at": _now(),
        "error": error,
        "checks": [
            {
                "round": r["round"],
                "what": r["what"],
                "database": r["database"],
                "chain": r["chain"],
                "ok": bool(r["ok"]),
                "tx_hash": r["tx_hash"],
            }
            for r in rows
        ],
        "counts": {"checks": len(rows), "ok": len(rows) - bad, "mismatches": bad},
    }


def store(job_id: int, result: dict) -> dict:
    cache.set(result_key(job_id), result, AUDIT_TIMEOUT_S)
    cache.delete(request_key(job_id))
    return result


def last(job_id: int) -> dict | None:
    return cache.get(result_key(job_id))


def last_many(job_ids) -> dict[int, dict]:
    """The last audit of each job that has one, by job id (one cache round trip)."""
    keys = {result_key(j): j for j in job_ids}
    return {keys[k]: v for k, v in cache.get_many(list(keys)).items()}


def mark_requested(job_id: int) -> None:
    cache.set(request_key(job_id), _now(), REQUEST_TIMEOUT_S)


def requested_at(job_id: int) -> str | None:
    return cache.get(request_key(job_id))
