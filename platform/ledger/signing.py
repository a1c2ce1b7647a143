"""Transactions signed with the operator key, driven through the database by compare-and-set.

Every such transaction is a row (ledger.models.SignedTx) that moves
pending -> submitted -> confirmed (or failed with a reason), and each move is one
`UPDATE ... WHERE status=<expected> AND tx_hash=<expected>`: a run that lost a race sees 0 rows
updated and re-reads instead of acting. The signed bytes are stored before they are broadcast,
so a crash anywhere leaves nothing signed or a stored transaction that a retry re-broadcasts
(same nonce: mined once at most). One signer at a time: `signer_lock` (a Postgres advisory lock
across processes; a process lock on SQLite), so nonces never interleave.
"""

import time
from collections.abc import Callable

from django.utils import timezone

from ledger.chain import Chain, TransactionFailed
from ledger.locks import signer_lock  # noqa: F401  (callers take the lock from here)
from ledger.models import TxStatus

REPLACED_GRACE_S = 2.0  # how long a spent nonce waits for our receipt before the row is signed anew


def _cas(row, expected_status: str, expected_hash: str, **changes) -> bool:
    """Move a row only if it is still where this run saw it; True when this run moved it."""
    moved = type(row).objects.filter(pk=row.pk, status=expected_status, tx_hash=expected_hash).update(**changes)
    row.refresh_from_db()
    return moved == 1


def submit(chain: Chain, row, build_call: Callable, gas: int | None = None) -> None:
    """Sign a pending row's transaction, store it, then broadcast it."""
    if row.status != TxStatus.PENDING:
        return
    try:
        tx_hash, raw = chain.sign_call(build_call(), gas=gas)
    except Exception as exc:  # nothing signed (a call that would revert, chain unreachable): stays pending
        type(row).objects.filter(pk=row.pk, status=TxStatus.PENDING).update(error=f"not signed: {exc}"[:2000])
        row.refresh_from_db()
        return
    if not _cas(row, TxStatus.PENDING, "", status=TxStatus.SUBMITTED, tx_hash=tx_hash, raw_tx=raw, error=""):
        return  # another run stored its own transaction first; ours is never sent
    _broadcast(chain, row)


def _broadcast(chain: Chain, row) -> None:
    try:
        chain.broadcast(row.raw_tx)
    except Exception as exc:  # stays submitted: confirm() re-broadcasts the same bytes
        type(row).objects.filter(pk=row.pk).update(error=f"broadcast failed: {exc}"[:2000])


def confirm(chain: Chain, row, already_done: Callable[[], bool] | None = None) -> None:
    """Wait for a submitted row's receipt and record it. A transaction whose nonce went to another
    one goes back to pending (signed anew by the next run). A revert is a failure with its reason,
    unless `already_done` says the chain already holds the effect (a lost earlier transaction)."""
    if row.status != TxStatus.SUBMITTED:
        return
    tx_hash = row.tx_hash
    try:
        if chain.receipt(tx_hash) is None:
            if row.raw_tx and chain.nonce_spent(row.raw_tx) and not _mined_within(chain, tx_hash, REPLACED_GRACE_S):
                _cas(
                    row,
                    TxStatus.SUBMITTED,
                    tx_hash,
                    status=TxStatus.PENDING,
                    tx_hash="",
                    raw_tx="",
                    error="transaction replaced before it was mined; signed again next run",
                )
                return
            _broadcast(chain, row)
        receipt = chain.receipt(tx_hash) or chain.wait(tx_hash)
    except TransactionFailed:
        receipt = chain.receipt(tx_hash)
    except Exception as exc:  # not mined yet, or the node is unreachable: checked again later
        type(row).objects.filter(pk=row.pk, tx_hash=tx_hash).update(error=f"not confirmed yet: {exc}"[:2000])
        row.refresh_from_db()
        return
    if receipt is None:
        return
    if receipt["status"] != 1 and not (already_done and already_done()):
        _cas(row, TxStatus.SUBMITTED, tx_hash, status=TxStatus.FAILED, error=f"transaction {tx_hash} reverted")
        return
    _cas(
        row,
        TxStatus.SUBMITTED,
        tx_hash,
        status=TxStatus.CONFIRMED,
        error="",
        block_number=receipt["blockNumber"],
        gas_used=receipt["gasUsed"],
        confirmed_at=timezone.now(),
    )


FOUND_ON_CHAIN = "found on chain"


def _mined_within(chain: Chain, tx_hash: str, seconds: float) -> bool:
    """Whether the transaction's receipt shows up within `seconds` (a node may count a nonce as
    used a moment before it serves the receipt of the transaction that used it)."""
    deadline = time.monotonic() + seconds
    while chain.receipt(tx_hash) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def drive(
    chain: Chain,
    row,
    build_call: Callable,
    already_done: Callable[[], bool] | None = None,
    gas=None,
    locate: Callable[[], tuple[str, int] | None] | None = None,
) -> None:
    """Take a row as far as it goes in one run: sign and send if pending, then confirm. A pending
    row whose effect `already_done` finds on chain (sent by a run whose row update was lost, or
    done by someone else) is confirmed with the transaction `locate` reads from the chain's logs."""
    if row.status == TxStatus.PENDING and already_done and already_done():
        tx_hash, block_number = (locate() if locate else None) or ("", None)
        type(row).objects.filter(pk=row.pk, status=TxStatus.PENDING, tx_hash="").update(
            status=TxStatus.CONFIRMED,
            error=FOUND_ON_CHAIN,
            tx_hash=tx_hash,
            block_number=block_number,
            confirmed_at=timezone.now(),
        )
        row.refresh_from_db()
        return
    submit(chain, row, build_call, gas=gas)
    confirm(chain, row, already_done)
