"""Rewards: how a job's budget is split among its peers, and paying it exactly once per
(job, node). A payout row exists before any transfer, its tx_hash is stored before the receipt is
awaited, and a payout that has a tx_hash is only ever checked on chain, never sent again."""

import re
from collections import defaultdict

from django.db import transaction
from django.utils import timezone

from accounts.models import Profile
from jobs.models import Job, Round
from jobs.snapshot import status_event
from ledger.chain import Chain, TransactionFailed
from ledger.models import WEI_PER_TOKEN, Payout
from live.broadcast import job_update
from nodes.models import Node

NO_ADDRESS = "no payout address"
ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
OPEN_STATUSES = (Payout.Status.PENDING, Payout.Status.SENT)


def is_valid_address(address: str) -> bool:
    return bool(address) and ADDRESS_RE.fullmatch(address) is not None


def split_rewards(job) -> dict[int, int]:
    """node_id -> wei. Each closed round pays exactly reward_per_round tokens, split by samples
    (floor) between the reporters whose models did not diverge; the remainder goes to the one
    with most samples (ties: lowest node id)."""
    budget = job.reward_per_round * WEI_PER_TOKEN
    totals: dict[int, int] = defaultdict(int)
    rounds = job.round_set.filter(status=Round.Status.CLOSED).prefetch_related("reports")
    for rnd in rounds:
        reports = sorted((r for r in rnd.reports.all() if not r.diverged), key=lambda r: r.node_id)
        if not reports:
            continue
        weights = [r.samples for r in reports]
        if not any(weights):  # nobody trained on anything: split evenly
            weights = [1] * len(reports)
        total = sum(weights)
        shares = [budget * w // total for w in weights]
        top = min(range(len(reports)), key=lambda i: (-weights[i], reports[i].node_id))
        shares[top] += budget - sum(shares)
        for report, share in zip(reports, shares):
            totals[report.node_id] += share
    return {node_id: amount for node_id, amount in sorted(totals.items()) if amount > 0}


def pay_rewards(job, items: list[tuple]) -> list[Payout]:
    """Pay each (node, address, amount_wei) once. Safe to call again: existing payouts keep their
    amount; pending ones are sent, sent ones are confirmed from the chain."""
    with transaction.atomic():
        Job.objects.select_for_update().get(pk=job.pk)
        existing = {p.node_id: p for p in Payout.objects.filter(job=job)}
        for node, address, amount_wei in items:
            if amount_wei < 0:
                raise ValueError(f"negative payout for node {node.pk}")
            address = (address or "").strip()
            payout = existing.get(node.pk)
            if payout is None:
                ok = is_valid_address(address)
                existing[node.pk] = Payout.objects.create(
                    job=job,
                    node=node,
                    address=address,
                    amount_wei=int(amount_wei),
                    status=Payout.Status.PENDING if ok else Payout.Status.FAILED,
                    error="" if ok else NO_ADDRESS,
                )
            elif payout.status == Payout.Status.FAILED and not payout.tx_hash and is_valid_address(address):
                # Never sent for want of an address; the owner has set one since.
                payout.address, payout.status, payout.error = address, Payout.Status.PENDING, ""
                payout.save(update_fields=["address", "status", "error"])

    open_ids = list(
        Payout.objects.filter(job=job, status__in=OPEN_STATUSES).order_by("id").values_list("id", flat=True)
    )
    if open_ids:
        chain = Chain.from_settings()
        for payout_id in open_ids:
            _confirm(chain, _send(chain, payout_id))
    node_ids = [node.pk for node, _, _ in items]
    by_node = {p.node_id: p for p in Payout.objects.filter(job=job, node_id__in=node_ids).select_related("node")}
    return [by_node[n] for n in node_ids if n in by_node]


def _send(chain: Chain, payout_id: int) -> Payout:
    """Sign a pending payout's transfer and store it before broadcasting: a crash anywhere leaves
    either nothing sent or a stored transaction that a retry re-broadcasts (never a second one).
    The row lock keeps concurrent settlements from signing twice."""
    with transaction.atomic():
        payout = Payout.objects.select_for_update().get(pk=payout_id)
        if payout.status != Payout.Status.PENDING:
            return payout
        try:
            payout.tx_hash, payout.raw_tx = chain.sign_transfer(payout.address, int(payout.amount_wei))
        except Exception as exc:  # nothing signed: stays pending, retried by the next settlement
            payout.error = f"transfer failed: {exc}"[:2000]
            payout.save(update_fields=["error"])
            return payout
        payout.status, payout.error = Payout.Status.SENT, ""
        payout.save(update_fields=["tx_hash", "raw_tx", "status", "error"])
    _broadcast(chain, payout)
    return payout


def _broadcast(chain: Chain, payout: Payout) -> None:
    try:
        chain.broadcast(payout.raw_tx)
    except Exception as exc:  # stays sent: _confirm re-broadcasts the same transaction
        payout.error = f"broadcast failed: {exc}"[:2000]
        payout.save(update_fields=["error"])


def _confirm(chain: Chain, payout: Payout, resign: bool = True) -> None:
    """Wait for a sent payout's receipt and record it. A transaction that can never be mined (its
    nonce went to another one) is signed anew, once per call."""
    if payout.status != Payout.Status.SENT or not payout.tx_hash:
        return
    try:
        if payout.raw_tx and chain.receipt(payout.tx_hash) is None:
            # Nonce first, receipt second: if ours was mined in between, the receipt shows it.
            if chain.nonce_spent(payout.raw_tx) and chain.receipt(payout.tx_hash) is None:
                payout.status, payout.tx_hash, payout.raw_tx = Payout.Status.PENDING, "", ""
                payout.error = "transaction replaced before it was mined; signing it again"
                payout.save(update_fields=["status", "tx_hash", "raw_tx", "error"])
                if resign:
                    _confirm(chain, _send(chain, payout.pk), resign=False)
                return
            _broadcast(chain, payout)
        receipt = chain.receipt(payout.tx_hash) or chain.wait(payout.tx_hash)
        if receipt["status"] != 1:
            raise TransactionFailed(f"transaction {payout.tx_hash} reverted")
    except TransactionFailed as exc:
        payout.status, payout.error = Payout.Status.FAILED, str(exc)
        payout.save(update_fields=["status", "error"])
        return
    except Exception as exc:  # not mined yet (or node unreachable): stays sent, checked again later
        payout.error = f"not confirmed yet: {exc}"[:2000]
        payout.save(update_fields=["error"])
        return
    payout.status, payout.error = Payout.Status.CONFIRMED, ""
    payout.block_number, payout.confirmed_at = receipt["blockNumber"], timezone.now()
    payout.save(update_fields=["status", "error", "block_number", "confirmed_at"])


def settle(job) -> list[Payout]:
    """Pay a finished job's rewards to its nodes' owners; the job is SETTLED once all are confirmed."""
    job.refresh_from_db()
    if job.status in (Job.Status.WAITING, Job.Status.RUNNING):
        raise ValueError(f"job {job.pk} is {job.status}: rewards are settled once it has finished")
    split = split_rewards(job)
    nodes = Node.objects.select_related("owner").in_bulk(list(split))
    items = [(nodes[nid], Profile.for_user(nodes[nid].owner).payout_address, amount) for nid, amount in split.items()]
    payouts = pay_rewards(job, items)
    if all(p.status == Payout.Status.CONFIRMED for p in payouts):
        with transaction.atomic():
            locked = Job.objects.select_for_update().get(pk=job.pk)
            if locked.status == Job.Status.FINISHED:
                locked.status = Job.Status.SETTLED
                locked.save(update_fields=["status"])
        job.status = locked.status
    job_update(job.pk, "status", status_event(job))  # the page shows payouts (and "settled") live
    return payouts
