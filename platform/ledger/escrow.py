"""A job's escrow row: the budget and the hash of the terms its creator deposits against (the
deposit itself is made by the settlement worker, ledger.settlement.fund)."""

from jobs.models import Job
from ledger.models import WEI_PER_TOKEN, Escrow
from ledger.rewards import config_hash


def open_escrow(job: Job) -> Escrow:
    escrow, _ = Escrow.objects.get_or_create(
        job=job,
        defaults={
            "budget_wei": job.budget_tokens * WEI_PER_TOKEN,
            "config_hash": config_hash(job),
            "burn_remainder": job.burn_unspent,
        },
    )
    return escrow
