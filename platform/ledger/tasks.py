"""The settlement queue's tasks (hub.settings routes ledger.tasks.* to its own worker): everything
that signs with the operator key or waits on the chain, one job a task."""

import logging

from celery import shared_task
from django.contrib.auth import get_user_model
from django.db.models import Q

from jobs import queue
from jobs.models import Job, Round
from ledger import settlement, staking, wallets
from ledger.chain import Chain
from ledger.models import Escrow, Flag, RoundSettlement, Stake, TxStatus, Wallet, tokens_text
from ledger.signing import signer_lock

log = logging.getLogger(__name__)


@shared_task
def settle_job(job_id: int) -> dict:
    """Commit and pay a job's closed rounds, and close it once it has ended (idempotent)."""
    return settlement.settle(job_id)


@shared_task
def fund_job(job_id: int) -> str:
    """Deposit a job's budget from its creator's wallet, then let it start."""
    job = Job.objects.get(pk=job_id)
    try:
        escrow = settlement.fund(job)
    except settlement.FundingError as exc:
        Escrow.objects.filter(job=job).update(error=str(exc))
        return str(exc)
    finally:
        wallets.refresh_balances(wallets.wallet_for(job.owner), Chain.from_settings())
    if escrow.status == Escrow.Status.FUNDED:
        staking.stake_pending(job)  # stakes asked for before the deposit
        queue.start_job(job.id)
    return escrow.status


@shared_task
def grant_test_tokens(user_id: int) -> str:
    """The faucet, run where the operator key lives; the wallet row gets the new balances."""
    user = get_user_model().objects.get(pk=user_id)
    chain = Chain.from_settings()
    try:
        with signer_lock():
            granted = wallets.faucet(user, chain)
        result = f"granted {tokens_text(granted)} test tokens"
    except wallets.FaucetRefused as exc:
        result = f"refused: {exc}"
        Wallet.objects.filter(user=user).update(faucet_note=str(exc))
    else:
        Wallet.objects.filter(user=user).update(faucet_note="")
    wallets.refresh_balances(wallets.wallet_for(user), chain)
    return result


@shared_task
def refresh_wallet(user_id: int) -> None:
    wallets.refresh_balances(wallets.wallet_for(get_user_model().objects.get(pk=user_id)), Chain.from_settings())


@shared_task
def settle_ended_jobs() -> int:
    """Beat's safety net: one settle_job task per job with money work left (a closed round not
    committed or paid yet, or an ended job not closed yet), so one failure never blocks the rest."""
    open_tx = [TxStatus.PENDING, TxStatus.SUBMITTED]
    job_ids = set(
        RoundSettlement.objects.filter(Q(status__in=open_tx) | Q(batches__status__in=open_tx)).values_list(
            "job_id", flat=True
        )
    )
    job_ids |= set(
        Round.objects.filter(
            status=Round.Status.CLOSED, settlement__isnull=True, job__escrow__status=Escrow.Status.FUNDED
        ).values_list("job_id", flat=True)
    )
    ended = Job.objects.filter(
        Q(status=Job.Status.FINISHED)
        | Q(status__in=[Job.Status.FAILED, Job.Status.CANCELLED], escrow__status=Escrow.Status.FUNDED)
    )
    job_ids |= set(ended.values_list("id", flat=True))
    job_ids |= set(Flag.objects.filter(slashed_at__isnull=True).values_list("job_id", flat=True))
    job_ids |= set(
        Stake.objects.filter(status=Stake.Status.STAKED, job__escrow__status=Escrow.Status.CLOSED).values_list(
            "job_id", flat=True
        )
    )
    for job_id in sorted(job_ids):
        try:
            queue.settle_job(job_id)
        except Exception:  # in process (eager) a task's failure is raised here: the others still run
            log.exception("settlement of job %s failed; the next beat tries again", job_id)
    return len(job_ids)


@shared_task
def audit_job_task(job_id: int) -> dict:
    """`manage.py audit_chain` for the admin audit page: the checks go into the cache
    (ledger.audit_results), since the web process never reaches the chain."""
    from ledger import audit_results
    from ledger.audit import audit_job

    job = Job.objects.get(pk=job_id)
    try:
        result = audit_results.as_result(audit_job(job))
    except Exception as exc:  # the chain unreachable, say: the page shows why instead of a stale verdict
        log.exception("audit of job %s failed", job_id)
        result = audit_results.as_result([], error=f"{type(exc).__name__}: {exc}")
    audit_results.store(job.id, result)
    return result["counts"]


@shared_task
def stake_for_consent(job_id: int, user_id: int) -> str:
    """Place a consenting owner's stake for a job from their wallet, then let the job start."""
    job = Job.objects.get(pk=job_id)
    user = get_user_model().objects.get(pk=user_id)
    try:
        stake = staking.stake_for(job, user)
    except staking.StakeError as exc:
        return str(exc)
    finally:
        wallets.refresh_balances(wallets.wallet_for(user), Chain.from_settings())
    if stake.status == Stake.Status.STAKED and job.status == Job.Status.WAITING:
        queue.start_job(job.id)
    return stake.status


@shared_task
def register_final_model(final_model_id: int) -> dict:
    """Register a job's final model in the ModelRegistry and grant access to it (idempotent)."""
    from ledger import registry

    return registry.register(final_model_id)


@shared_task
def register_final_models() -> int:
    """Beat's safety net: one register_final_model task per final model with work left."""
    from ledger import registry
    from modelstore.models import FinalModel

    models = FinalModel.objects.exclude(status=FinalModel.Status.FAILED).select_related("job__owner")
    ids = [m.id for m in models if registry.outstanding(m)]
    for final_model_id in ids:
        queue.register_final_model(final_model_id)
    return len(ids)
