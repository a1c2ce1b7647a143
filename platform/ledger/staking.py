"""Operators' stakes and the slashing of flagged peers, on the TrainingLedger.

- `stake_for(job, owner)`: the owner's custodial wallet approves and calls `stake(jobId)`, which
  pulls exactly `Job.stake` tokens. One stake per (job, owner): the contract stakes per operator
  address, so it covers all of the owner's nodes in the job. The job must be registered on chain
  (its creator's deposit, ledger.settlement.fund) first; until then the stake stays pending and
  is placed when the deposit lands (ledger.tasks.fund_job).
- `flag(job, round, node, reason, evidence)`: stores a Flag row (append-only evidence). The
  flagged (round, node) scores 0 for the round (ledger.rewards).
- `slash_flagged(job)`: for each flag not handled yet, burns **the whole remaining stake** of the
  node's owner (the first flag takes it all; a later flag finds nothing left and says so), with
  the flag's evidence hash in the `Slashed` event.
- `release_stakes(job)`: after the escrow is closed, `releaseStake` for every staked operator.

Everything here that sends a transaction runs in the settlement worker (ledger.tasks). Each step
reads the chain first (the stake, a `Slashed` event carrying the flag's hash, the release), so a
run that stopped anywhere is finished by the next without acting twice.
"""

from django.utils import timezone
from web3 import Web3
from web3.logs import DISCARD

from jobs.models import Job
from ledger import signing
from ledger.chain import Chain
from ledger.flags import flag, flag_hash, flag_hash_of  # noqa: F401  (re-exported: the staking API)
from ledger.models import WEI_PER_TOKEN, Flag, Stake, tokens_text
from ledger.wallets import MIN_GAS_WEI, private_key, wallet_for

ZERO_ADDRESS = "0x" + "00" * 20


class StakeError(Exception):
    """A stake that cannot be placed (too few tokens, no gas), with what to do about it."""


# -- stakes -------------------------------------------------------------------------------------
def _registered(ledger, job: Job) -> bool:
    creator = ledger.functions.jobs(job.id).call()[0]
    return creator != ZERO_ADDRESS and int(creator, 16) != 0


def stake_for(job: Job, owner) -> Stake:
    """Place the owner's stake for the job from their custodial wallet (approve + stake). Reads
    `stakes(jobId, operator)` first, so running it again is harmless. Raises StakeError when the
    wallet lacks the tokens or gas (the row says why, status failed)."""
    wallet = wallet_for(owner)
    required = job.stake * WEI_PER_TOKEN
    stake, _ = Stake.objects.get_or_create(
        job=job, owner=owner, defaults={"address": wallet.address, "amount_wei": required}
    )
    if stake.status in (Stake.Status.STAKED, Stake.Status.RELEASED) or not required:
        return stake
    chain = Chain.from_settings()
    ledger, token = chain.ledger(), chain.token()
    operator = Web3.to_checksum_address(stake.address)
    with signing.signer_lock():  # one at a time: two consents of one owner never stake twice
        if not _registered(ledger, job):
            stake.status, stake.error = Stake.Status.PENDING, "waiting for the creator's deposit"
            stake.save(update_fields=["status", "error", "updated_at"])
            return stake
        _amount, staked, _released = ledger.functions.stakes(job.id, operator).call()
        if not staked:
            balance = token.functions.balanceOf(operator).call()
            problem = ""
            if balance < required:
                problem = (
                    f"your wallet holds {tokens_text(balance)} tokens and this job asks a stake of "
                    f"{tokens_text(required)}: get test tokens from your wallet page first"
                )
            elif chain.gas_balance(operator) < MIN_GAS_WEI:
                problem = "your wallet has no gas left: get test tokens (and gas) from your wallet page first"
            if problem:
                stake.status, stake.error = Stake.Status.FAILED, problem
                stake.save(update_fields=["status", "error", "updated_at"])
                raise StakeError(problem)
            key = private_key(wallet)
            if token.functions.allowance(operator, ledger.address).call() < required:
                chain.send_as(key, token.functions.approve(ledger.address, required))
            receipt = chain.send_as(key, ledger.functions.stake(job.id))
            stake.stake_tx_hash = receipt["transactionHash"].to_0x_hex()
        elif not stake.stake_tx_hash:  # staked by a run whose row update was lost
            events = ledger.events.Staked().get_logs(
                from_block=0, argument_filters={"jobId": job.id, "operator": operator}
            )
            stake.stake_tx_hash = events[0]["transactionHash"].to_0x_hex() if events else ""
        stake.amount_wei = required
        stake.status, stake.error = Stake.Status.STAKED, ""
        stake.save()
    return stake


def stake_pending(job: Job) -> list[Stake]:
    """Place the stakes that waited for the job's deposit (ledger.tasks.fund_job)."""
    placed = []
    for pending in Stake.objects.filter(job=job, status=Stake.Status.PENDING).select_related("owner"):
        try:
            placed.append(stake_for(job, pending.owner))
        except StakeError:
            continue
    return placed


def staked_owner_ids(job: Job) -> set[int]:
    """Owners whose stake for the job is on chain (cheap: one query; orchestration's cohort)."""
    return set(Stake.objects.filter(job=job, status=Stake.Status.STAKED).values_list("owner_id", flat=True))


# -- flags and slashing -------------------------------------------------------------------------
def _slashed_event(ledger, job_id: int, operator: str, hash_hex: str):
    for event in ledger.events.Slashed().get_logs(
        from_block=0, argument_filters={"jobId": job_id, "operator": operator}
    ):
        if "0x" + bytes(event["args"]["evidenceHash"]).hex() == hash_hex:
            return event
    return None


def _done(flag_row: Flag, note: str, tx_hash: str = "", amount: int = 0) -> None:
    Flag.objects.filter(pk=flag_row.pk, slashed_at__isnull=True).update(
        slash_tx_hash=tx_hash, slashed_wei=amount, slashed_at=timezone.now(), slash_note=note[:200]
    )


def slash_flagged(job: Job, chain: Chain | None = None) -> int:
    """Slash the owner's stake of every flagged node not handled yet: the whole remaining stake,
    burnt, with the flag's evidence hash. Returns the wei slashed by this run."""
    flags = list(job.flags.filter(slashed_at__isnull=True).select_related("node", "round").order_by("id"))
    if not flags:
        return 0
    chain = chain or Chain.from_settings()
    ledger = chain.ledger()
    total = 0
    with signing.signer_lock():
        for f in flags:
            stake = Stake.objects.filter(job=job, owner_id=f.node.owner_id).first()
            if stake is None or stake.status not in (Stake.Status.STAKED, Stake.Status.RELEASED):
                _done(f, "no stake to slash")
                continue
            operator = Web3.to_checksum_address(stake.address)
            event = _slashed_event(ledger, job.id, operator, f.evidence_hash)
            if event is None:
                remaining, staked, _released = ledger.functions.stakes(job.id, operator).call()
                if not staked or remaining == 0:
                    _done(f, "nothing left of the stake (slashed or returned before)")
                    continue
                receipt = chain.wait(
                    chain._send(ledger.functions.slash(job.id, operator, remaining, bytes.fromhex(f.evidence_hash[2:])))
                )
                events = ledger.events.Slashed().process_receipt(receipt, errors=DISCARD)
                event = events[0]
            amount = int(event["args"]["amount"])
            _done(f, "stake slashed", event["transactionHash"].to_0x_hex(), amount)
            Stake.objects.filter(pk=stake.pk).update(
                slashed_wei=sum(int(x.slashed_wei) for x in Flag.objects.filter(job=job, node__owner=stake.owner_id))
            )
            total += amount
    return total


def release_stakes(job: Job, chain: Chain | None = None) -> int:
    """After the job's escrow is closed on chain: return every staked operator's remaining stake
    (`releaseStake`), recording the amount. Returns how many stakes this run released."""
    stakes = list(Stake.objects.filter(job=job, status=Stake.Status.STAKED))
    if not stakes:
        return 0
    chain = chain or Chain.from_settings()
    ledger = chain.ledger()
    if not ledger.functions.jobs(job.id).call()[6]:  # not closed yet
        return 0
    released = 0
    with signing.signer_lock():
        for stake in stakes:
            operator = Web3.to_checksum_address(stake.address)
            _amount, staked, done = ledger.functions.stakes(job.id, operator).call()
            if not staked:  # the row says staked, the chain does not: nothing to return, and say so
                stake.status, stake.error = Stake.Status.FAILED, "not staked on chain"
                stake.save(update_fields=["status", "error", "updated_at"])
                continue
            if done:
                events = ledger.events.StakeReleased().get_logs(
                    from_block=0, argument_filters={"jobId": job.id, "operator": operator}
                )
                event = events[0]
            else:
                receipt = chain.wait(chain._send(ledger.functions.releaseStake(job.id, operator)))
                event = ledger.events.StakeReleased().process_receipt(receipt, errors=DISCARD)[0]
            stake.release_tx_hash = event["transactionHash"].to_0x_hex()
            stake.released_wei = int(event["args"]["amount"])
            stake.status = Stake.Status.RELEASED
            stake.save(update_fields=["release_tx_hash", "released_wei", "status", "updated_at"])
            released += 1
    return released
