"""Check a job's money on chain against the database, from the evidence up.

For every closed round the scores are recomputed from their stored evidence, the split from the
scores, and the contribution and reward roots from those; each must equal what the chain's
RoundCommitted event says, and each reward leaf must have been paid exactly once, for exactly its
amount, to exactly its address (RewardPaid events). The job's deposit, close and refund must
match the escrow row. Used by `manage.py audit_chain` and the admin audit page.
"""

from collections import defaultdict
from dataclasses import dataclass

from jobs.models import Job, Round, ValidatorReport
from ledger.chain import Chain
from ledger.models import WEI_PER_TOKEN, Escrow, Flag, RoundSettlement, Stake, TxStatus, tokens_text
from ledger.rewards import EQUAL, VALIDATOR, build_trees, split_amount, split_ppm
from ledger.staking import flag_hash_of
from peers.evidence import score_from_evidence, scores_ppm


@dataclass
class Check:
    round: int | None  # None: the job as a whole
    what: str
    database: str
    chain: str
    ok: bool
    tx_hash: str = ""


def _hex(value) -> str:
    return "0x" + bytes(value).hex()


def expected_ppm(settlement: RoundSettlement) -> dict[int, int]:
    """The round's scores as their evidence gives them: an equal split from who diverged or was
    flagged, or the validator's evidence recomputed (never the stored score numbers themselves);
    a node flagged as an attacker in the round scores 0 whatever the source."""
    scores = list(settlement.round.scores.order_by("node_id"))
    if scores and all(s.source == EQUAL for s in scores):
        return split_ppm(
            {s.node_id: 0.0 if s.evidence.get("diverged") or s.evidence.get("flagged") else 1.0 for s in scores}
        )
    if scores and all(s.source == VALIDATOR for s in scores):
        report = ValidatorReport.objects.get(round=settlement.round)
        ppm = scores_ppm(score_from_evidence(report.evidence))
        return {s.node_id: 0 if s.evidence.get("flagged") else ppm.get(s.node_id, 0) for s in scores}
    return {s.node_id: 0 for s in scores}  # mixed or unknown sources: nothing is owed on them


def audit_job(job: Job, chain: Chain | None = None) -> list[Check]:
    chain = chain or Chain.from_settings()
    ledger = chain.ledger()
    committed = {
        e["args"]["round"]: e
        for e in ledger.events.RoundCommitted().get_logs(from_block=0, argument_filters={"jobId": job.id})
    }
    paid: dict[tuple[int, int], list] = defaultdict(list)
    for e in ledger.events.RewardPaid().get_logs(from_block=0, argument_filters={"jobId": job.id}):
        paid[(e["args"]["round"], e["args"]["index"])].append(e)
    checks: list[Check] = []
    checks += _escrow_checks(job, ledger)
    settlements = {s.number: s for s in RoundSettlement.objects.filter(job=job)}
    for rnd in job.round_set.filter(status=Round.Status.CLOSED).order_by("number"):
        settlement = settlements.get(rnd.number)
        event = committed.get(rnd.number)
        if settlement is None:
            checks.append(Check(rnd.number, "settlement", "not prepared", "committed" if event else "—", event is None))
            continue
        checks += _round_checks(job, settlement, event, paid)
    for number in sorted(set(committed) - {s for s in settlements}):
        checks.append(Check(number, "commit", "—", "committed without a database row", False))
    checks += _stake_checks(job, ledger)
    return checks


def _stake_checks(job: Job, ledger) -> list[Check]:
    """Each flag's evidence hash recomputed from its row, and its slash (amount, hash) as the
    `Slashed` event has it; each stake and release as `Staked` and `StakeReleased` have them."""
    checks: list[Check] = []
    slashed = list(ledger.events.Slashed().get_logs(from_block=0, argument_filters={"jobId": job.id}))
    by_hash = {_hex(e["args"]["evidenceHash"]): e for e in slashed}
    for f in Flag.objects.filter(job=job).select_related("round", "node").order_by("id"):
        recomputed = flag_hash_of(f)
        event = by_hash.pop(recomputed, None)
        if f.slash_tx_hash:
            chain_side = (
                f"{tokens_text(event['args']['amount'])} ({_hex(event['args']['evidenceHash'])})"
                if event
                else "no Slashed event"
            )
            ok = (
                event is not None
                and recomputed == f.evidence_hash
                and event["args"]["amount"] == int(f.slashed_wei)
                and event["transactionHash"].to_0x_hex() == f.slash_tx_hash
            )
        else:
            chain_side = "slashed" if event else "not slashed"
            ok = event is None and recomputed == f.evidence_hash
        checks.append(
            Check(
                f.round.number,
                f"slash node {f.node_id}",
                f"{tokens_text(int(f.slashed_wei))} ({recomputed})",
                chain_side,
                ok,
                f.slash_tx_hash,
            )
        )
    for e in by_hash.values():
        checks.append(Check(None, "slash", "—", f"{tokens_text(e['args']['amount'])} without a flag", False))
    staked = {
        e["args"]["operator"].lower(): e
        for e in ledger.events.Staked().get_logs(from_block=0, argument_filters={"jobId": job.id})
    }
    released = {
        e["args"]["operator"].lower(): e
        for e in ledger.events.StakeReleased().get_logs(from_block=0, argument_filters={"jobId": job.id})
    }
    for s in Stake.objects.filter(job=job).order_by("owner_id"):
        address = s.address.lower()
        event = staked.pop(address, None)
        placed = s.status in (Stake.Status.STAKED, Stake.Status.RELEASED)
        checks.append(
            Check(
                None,
                f"stake of {s.address}",
                f"{s.amount_text} ({s.status})",
                tokens_text(event["args"]["amount"]) if event else "not staked",
                (event is not None and event["args"]["amount"] == int(s.amount_wei)) if placed else event is None,
                s.stake_tx_hash,
            )
        )
        release = released.pop(address, None)
        if s.status == Stake.Status.RELEASED or release is not None:
            checks.append(
                Check(
                    None,
                    f"stake release {s.address}",
                    tokens_text(int(s.released_wei)),
                    tokens_text(release["args"]["amount"]) if release else "not released",
                    release is not None
                    and s.status == Stake.Status.RELEASED
                    and release["args"]["amount"] == int(s.released_wei)
                    and release["transactionHash"].to_0x_hex() == s.release_tx_hash,
                    s.release_tx_hash,
                )
            )
    for address in staked:
        checks.append(Check(None, f"stake of {address}", "—", "staked without a database row", False))
    return checks


def _round_checks(job: Job, settlement: RoundSettlement, event, paid) -> list[Check]:
    number = settlement.number
    ppm = expected_ppm(settlement)
    amounts = split_amount(job.reward_per_round * WEI_PER_TOKEN, ppm)
    payouts = list(settlement.payouts.order_by("index"))
    stored = {p.node_id: p for p in payouts}
    leaves = [(p.index, p.address, amounts.get(p.node_id, 0)) for p in payouts]
    scores = list(settlement.round.scores.order_by("node_id"))
    for s in scores:  # the root is rebuilt from the recomputed scores, not the stored ones
        s.score_ppm = ppm.get(s.node_id, 0)
    contribution_root, reward_root = build_trees(job, number, scores, leaves)
    total = sum(amounts.values())
    checks = [
        Check(
            number,
            "payees",
            ", ".join(str(n) for n in sorted(stored)),
            ", ".join(str(n) for n in sorted(k for k, v in amounts.items() if v > 0)),
            set(stored) == {k for k, v in amounts.items() if v > 0},
        )
    ]
    tx = settlement.tx_hash
    if event is None:
        checks.append(Check(number, "commit", settlement.status, "no RoundCommitted event", False, tx))
        return checks
    args = event["args"]
    checks += [
        Check(
            number,
            "contribution root",
            contribution_root,
            _hex(args["contributionRoot"]),
            contribution_root == _hex(args["contributionRoot"]),
            tx,
        ),
        Check(
            number, "reward root", reward_root, _hex(args["rewardRoot"]), reward_root == _hex(args["rewardRoot"]), tx
        ),
        Check(number, "round total", tokens_text(total), tokens_text(args["total"]), total == args["total"], tx),
        Check(
            number,
            "model hash",
            settlement.model_hash,
            _hex(args["modelHash"]),
            settlement.model_hash == _hex(args["modelHash"]),
            tx,
        ),
        Check(number, "commit status", settlement.status, "mined", settlement.status == TxStatus.CONFIRMED, tx),
    ]
    for p in payouts:
        events = paid.get((number, p.index), [])
        want = amounts.get(p.node_id, 0)
        got = ", ".join(f"{tokens_text(e['args']['amount'])} to {e['args']['account']}" for e in events) or "unpaid"
        ok = (
            len(events) == 1
            and events[0]["args"]["amount"] == want == int(p.amount_wei)
            and events[0]["args"]["account"].lower() == p.address.lower()
        )
        if p.status != TxStatus.CONFIRMED and not events:
            ok = True  # not paid yet, and the chain agrees
            got = "unpaid"
        checks.append(
            Check(
                number,
                f"payout node {p.node_id}",
                f"{tokens_text(want)} to {p.address} ({p.status})",
                got,
                ok,
                p.tx_hash,
            )
        )
    for (event_round, index), events in paid.items():
        if event_round == number and index >= len(payouts):
            checks.append(Check(number, f"payout leaf {index}", "—", f"{len(events)} payment(s)", False))
    return checks


def _escrow_checks(job: Job, ledger) -> list[Check]:
    escrow = Escrow.objects.filter(job=job).first()
    funded = list(ledger.events.JobFunded().get_logs(from_block=0, argument_filters={"jobId": job.id}))
    closed = list(ledger.events.JobClosed().get_logs(from_block=0, argument_filters={"jobId": job.id}))
    if escrow is None:
        return [Check(None, "deposit", "no escrow", f"{len(funded)} deposit(s)", not funded)]
    budget = int(escrow.budget_wei)
    on_chain = funded[0]["args"]["budget"] if funded else 0
    checks = [
        Check(
            None,
            "deposit",
            f"{tokens_text(budget)} ({escrow.status})",
            f"{tokens_text(on_chain)}" if funded else "none",
            (len(funded) == 1 and on_chain == budget) or (not funded and escrow.status == Escrow.Status.UNFUNDED),
            escrow.fund_tx_hash,
        )
    ]
    if escrow.status == Escrow.Status.CLOSED or closed:
        refunded = closed[0]["args"]["refunded"] if closed else 0
        burnt = closed[0]["args"]["burnt"] if closed else 0
        checks.append(
            Check(
                None,
                "returned / burnt",
                f"{tokens_text(int(escrow.refunded_wei))} / {tokens_text(int(escrow.burnt_wei))}",
                f"{tokens_text(refunded)} / {tokens_text(burnt)}" if closed else "not closed",
                len(closed) == 1 and refunded == int(escrow.refunded_wei) and burnt == int(escrow.burnt_wei),
                escrow.close_tx_hash,
            )
        )
    return checks
