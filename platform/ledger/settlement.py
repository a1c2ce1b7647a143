"""A job's money on chain, round by round: the creator's deposit (escrow), each closed round's
commit and payouts, and the job's close (the unspent budget back to the creator, or burnt).

Runs in the settlement worker (one process, one task per job, `signer_lock` held), never in a
request or in round closing. Each step is a database row first (ledger.signing), so any run may
stop anywhere and the next one carries on without paying anything twice; the contract's
commit-once rule and claimed bitmap are the last guard.
"""

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from web3 import Web3
from web3.logs import DISCARD

from jobs.models import Job, Round
from jobs.snapshot import status_event
from ledger import rewards, signing, staking
from ledger.chain import Chain
from ledger.escrow import open_escrow
from ledger.models import WEI_PER_TOKEN, Escrow, Payout, PayoutBatch, RoundSettlement, TxStatus, tokens_text
from ledger.wallets import FAUCET_GAS_WEI, private_key, wallet_for
from live.broadcast import job_update

log = logging.getLogger(__name__)
BATCH_SIZE = 200  # the contract's MAX_BATCH
ZERO_ADDRESS = "0x" + "00" * 20


class FundingError(Exception):
    """The creator's deposit cannot be made (too few tokens, ...), with what to do about it."""


# -- escrow -----------------------------------------------------------------------------------
def needs_escrow(job: Job) -> bool:
    return job.reward_per_round > 0


def fund(job: Job) -> Escrow:
    """Register the job on the ledger with its creator's address, then take the deposit: from the
    custodial wallet (approve + fundJob, signed here), or, for a creator who deposits from their
    own browser wallet, by finding it on chain. Each step reads the chain first, so running it
    again is harmless."""
    escrow = open_escrow(job)
    if escrow.status != Escrow.Status.UNFUNDED:
        return escrow
    chain = Chain.from_settings()
    ledger, token = chain.ledger(), chain.token()
    wallet = wallet_for(job.owner)
    creator = Web3.to_checksum_address(escrow.funder if escrow.browser_wallet else wallet.address)
    budget = int(escrow.budget_wei)
    config = bytes.fromhex(escrow.config_hash[2:])
    with signing.signer_lock():
        on_chain = ledger.functions.jobs(job.id).call()
        if int(on_chain[0], 16) == 0:
            stake_wei = job.stake * WEI_PER_TOKEN
            chain.wait(
                chain._send(
                    ledger.functions.registerJob(job.id, creator, config, stake_wei, bool(escrow.burn_remainder))
                )
            )
            on_chain = ledger.functions.jobs(job.id).call()
    if escrow.registered_at is None:
        escrow.funder, escrow.registered_at = on_chain[0], timezone.now()
        escrow.save(update_fields=["funder", "registered_at"])
    if not on_chain[5]:  # not funded yet
        if escrow.browser_wallet:
            return escrow  # the creator's own wallet sends approve + fundJob; the next run finds it
        balance = token.functions.balanceOf(creator).call()
        if balance < budget:
            raise FundingError(
                f"your wallet holds {tokens_text(balance)} tokens and this job's budget is "
                f"{escrow.budget_text}: get test tokens from your wallet page first"
            )
        key = private_key(wallet)
        if token.functions.allowance(creator, ledger.address).call() < budget:
            chain.send_as(key, token.functions.approve(ledger.address, budget))
        receipt = chain.send_as(key, ledger.functions.fundJob(job.id, config, budget))
        escrow.fund_tx_hash = receipt["transactionHash"].to_0x_hex()
    else:
        funded = ledger.events.JobFunded().get_logs(from_block=0, argument_filters={"jobId": job.id})
        escrow.fund_tx_hash = escrow.fund_tx_hash or (funded[0]["transactionHash"].to_0x_hex() if funded else "")
    escrow.status, escrow.funded_at, escrow.error = Escrow.Status.FUNDED, timezone.now(), ""
    escrow.save()
    return escrow


def fund_with_test_tokens(job: Job) -> Escrow:
    """Test chains only (the demo, benchmarks, tests): mint the creator the job's budget and gas,
    as the faucet would, then deposit it as the job page's button does."""
    chain, wallet = Chain.from_settings(), wallet_for(job.owner)
    if chain.chain_id not in settings.TEST_CHAIN_IDS:
        raise FundingError("test tokens exist only on a test chain")
    with signing.signer_lock():
        chain.mint(wallet.address, job.budget_tokens * WEI_PER_TOKEN)
        chain.send_gas(wallet.address, FAUCET_GAS_WEI)
    return fund(job)


# -- rounds -----------------------------------------------------------------------------------
def _commit(chain: Chain, settlement: RoundSettlement) -> None:
    ledger = chain.ledger()
    job_id, number = settlement.job_id, settlement.number

    def call():
        return ledger.functions.commitRound(
            job_id,
            number,
            bytes.fromhex(settlement.model_hash[2:]),
            bytes.fromhex(settlement.contribution_root[2:]),
            bytes.fromhex(settlement.reward_root[2:]),
            int(settlement.total_wei),
        )

    def committed_already() -> bool:
        return ledger.functions.rounds(job_id, number).call()[1].hex() == settlement.reward_root[2:]

    def commit_on_chain() -> tuple[str, int] | None:
        logs = ledger.events.RoundCommitted().get_logs(
            from_block=0, argument_filters={"jobId": job_id, "round": number}
        )
        return (logs[0]["transactionHash"].to_0x_hex(), logs[0]["blockNumber"]) if logs else None

    signing.drive(chain, settlement, call, already_done=committed_already, locate=commit_on_chain)


def _batches(settlement: RoundSettlement) -> list[PayoutBatch]:
    """The round's payout batches, made once: payouts in leaf order, BATCH_SIZE a batch."""
    with transaction.atomic():
        RoundSettlement.objects.select_for_update().get(pk=settlement.pk)
        loose = list(settlement.payouts.filter(batch__isnull=True).order_by("index"))
        chunk = settlement.batches.count()
        for start in range(0, len(loose), BATCH_SIZE):
            batch = PayoutBatch.objects.create(settlement=settlement, chunk=chunk)
            Payout.objects.filter(pk__in=[p.pk for p in loose[start : start + BATCH_SIZE]]).update(batch=batch)
            chunk += 1
    return list(settlement.batches.order_by("chunk"))


def _pay(chain: Chain, batch: PayoutBatch) -> None:
    ledger = chain.ledger()
    settlement = batch.settlement
    payouts = list(batch.payouts.order_by("index"))

    def call():
        tree = rewards.reward_tree(settlement)
        proofs = {p.index: tree.proof(p.index) for p in payouts}
        return ledger.functions.payBatch(
            settlement.job_id,
            settlement.number,
            [p.index for p in payouts],
            [Web3.to_checksum_address(p.address) for p in payouts],
            [int(p.amount_wei) for p in payouts],
            [proofs[p.index] for p in payouts],
        )

    def all_paid() -> bool:
        return all(ledger.functions.isPaid(settlement.job_id, settlement.number, p.index).call() for p in payouts)

    def paid_by() -> dict[int, tuple[str, int]]:
        """Leaf index -> (transaction, block) that paid it, from the round's RewardPaid logs."""
        logs = ledger.events.RewardPaid().get_logs(
            from_block=0, argument_filters={"jobId": settlement.job_id, "round": settlement.number}
        )
        return {e["args"]["index"]: (e["transactionHash"].to_0x_hex(), e["blockNumber"]) for e in logs}

    signing.drive(chain, batch, call, already_done=all_paid, locate=lambda: paid_by().get(payouts[0].index))
    if batch.status == TxStatus.CONFIRMED and batch.error == signing.FOUND_ON_CHAIN:
        # Paid before this batch's own transaction was recorded (a lost row update, or claims):
        # each payout names the transaction that paid its leaf.
        where = paid_by()
        for payout in batch.payouts.exclude(status=batch.status):
            tx_hash, block_number = where.get(payout.index, ("", None))
            Payout.objects.filter(pk=payout.pk).update(
                status=batch.status,
                tx_hash=tx_hash,
                block_number=block_number,
                confirmed_at=batch.confirmed_at,
                error=batch.error,
            )
    elif batch.status in (TxStatus.CONFIRMED, TxStatus.FAILED):
        batch.payouts.exclude(status=batch.status).update(
            status=batch.status,
            tx_hash=batch.tx_hash,
            block_number=batch.block_number,
            confirmed_at=batch.confirmed_at,
            error=batch.error,
        )


def _close(chain: Chain, job: Job, escrow: Escrow) -> None:
    """Close the job on chain once every round is paid: the unspent budget goes back or burns."""
    ledger = chain.ledger()
    if not ledger.functions.jobs(job.id).call()[6]:  # not closed yet
        receipt = chain.wait(chain._send(ledger.functions.closeJob(job.id)))
        escrow.close_tx_hash = receipt["transactionHash"].to_0x_hex()
        events = ledger.events.JobClosed().process_receipt(receipt, errors=DISCARD)  # the token's logs too
        if events:
            escrow.refunded_wei, escrow.burnt_wei = events[0]["args"]["refunded"], events[0]["args"]["burnt"]
    escrow.status, escrow.closed_at = Escrow.Status.CLOSED, timezone.now()
    escrow.save()


def settle(job_id: int) -> dict:
    """Take a job's money as far as it goes now: prepare, commit and pay every closed round (also
    of a failed or cancelled job), then, once the job has ended and all is paid, close its escrow and mark a
    finished job settled. Returns a summary; safe to run again at any time."""
    with signing.signer_lock():
        job = Job.objects.get(pk=job_id)
        escrow = Escrow.objects.filter(job=job).first()
        if needs_escrow(job) and (escrow is None or escrow.status == Escrow.Status.UNFUNDED):
            if job.ended:
                _mark_settled(job)
            return {"job": job.id, "status": job.status, "reason": "no deposit: nothing to pay"}
        chain = Chain.from_settings() if needs_escrow(job) else None
        outstanding = 0
        if chain is not None:
            for rnd in job.round_set.filter(status=Round.Status.CLOSED).order_by("number"):
                if not RoundSettlement.objects.filter(round=rnd).exists() and rewards.awaits_validator(
                    job, rnd, grace_s=validator_grace_s(job)
                ):
                    outstanding += 1  # paid when its scores come (accept_scores queues this again)
                    continue
                settlement = rewards.prepare_round(job, rnd)
                _commit(chain, settlement)
                if settlement.status != TxStatus.CONFIRMED:
                    outstanding += 1
                    continue
                for batch in _batches(settlement):
                    _pay(chain, batch)
                    outstanding += batch.status != TxStatus.CONFIRMED
            staking.slash_flagged(job, chain)  # before the close: stakes are released after it
        if job.ended and not outstanding:
            if chain is not None and escrow is not None and escrow.status == Escrow.Status.FUNDED:
                _close(chain, job, escrow)
            if chain is not None and escrow is not None and escrow.status == Escrow.Status.CLOSED:
                staking.release_stakes(job, chain)
            _mark_settled(job)
        job.refresh_from_db()
    job_update(job.id, "status", status_event(job))  # the page shows payouts (and "settled") live
    return {"job": job.id, "status": job.status, "outstanding": outstanding}


def validator_grace_s(job: Job) -> float:
    """How long a closed round waits for its validator's scores before it is split evenly."""
    return float(job.round_timeout_s)


def _mark_settled(job: Job) -> None:
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status == Job.Status.FINISHED:
            locked.status = Job.Status.SETTLED
            locked.save(update_fields=["status"])
