"""How a closed round's pool is split, and the round's evidence turned into Merkle roots.

Rewards follow measured contribution, never a number a peer reports about itself:
- with a validator's scores for the round (ContributionScore rows, source "validator"), the pool
  is split by them (docs/scoring.md);
- without, evenly between the peers that reported a model that did not diverge (source "equal").
  Self-reported sample counts play no part: a peer claiming 2^31 samples gets an equal share.
The scores are stored first (append-only evidence), then the round's payouts and roots are built
from the stored rows only, so `audit_chain` rebuilds the very same roots from the database.
"""

import dataclasses
import hashlib
import json

from django.db import IntegrityError, transaction
from django.utils import timezone
from eth_utils import keccak

from jobs.models import Job, PeerReport, Round, ValidatorReport
from ledger.merkle import MerkleTree, contribution_leaf, reward_leaf
from ledger.models import WEI_PER_TOKEN, ContributionScore, Flag, Payout, RoundSettlement
from ledger.wallets import payout_address
from peers.evidence import score_from_evidence, scores_ppm

PPM = 1_000_000
EQUAL = "equal"
VALIDATOR = "validator"
ZERO_ROOT = "0x" + "00" * 32
# A round that pays nobody commits this root: no leaf hashes to it (the contract refuses zero).
NO_REWARDS_ROOT = "0x" + keccak(b"dfl: a round without reward leaves").hex()


def hex32(data: bytes) -> str:
    return "0x" + data.hex()


def config_hash(job: Job) -> str:
    """keccak256 of the job's terms, as registered and funded on chain: what peers train with and
    what the creator pays for. Any change to them is a different job."""
    terms = {
        "config": dataclasses.asdict(job.config()),
        "rounds": job.rounds,
        "num_peers": job.num_peers,
        "reward_per_round": job.reward_per_round,
        "stake": job.stake,
        "burn_unspent": job.burn_unspent,
    }
    return hex32(keccak(json.dumps(terms, sort_keys=True, separators=(",", ":")).encode()))


def split_ppm(weights: dict[int, float]) -> dict[int, int]:
    """Integer parts per million proportional to non-negative weights, summing to exactly PPM when
    any weight is positive: the validator's own rounding (peers.evidence.scores_ppm, exact
    fractions, largest remainder, ties to the lowest node id), so both sources round alike."""
    return scores_ppm(weights)


def split_amount(total_wei: int, ppm: dict[int, int]) -> dict[int, int]:
    """Wei per node from its ppm (floor); the remainder to the highest score (ties: lowest id)."""
    amounts = {k: total_wei * p // PPM for k, p in ppm.items()}
    paid = [k for k, p in ppm.items() if p > 0]
    if paid:
        top = min(paid, key=lambda k: (-ppm[k], k))
        amounts[top] += total_wei - sum(amounts.values())
    return amounts


def evidence_hash(evidence: dict) -> bytes:
    return keccak(json.dumps(evidence, sort_keys=True, separators=(",", ":")).encode())


def models_digest(reports: list[PeerReport]) -> str:
    """The round's model hash on chain: the peers' common model when they all reached the same one,
    else sha256 over the sorted (node, model hash) pairs they reported."""
    hashes = {r.model_hash for r in reports if not r.diverged}
    if len(hashes) == 1:
        return "0x" + hashes.pop().rjust(64, "0")[:64]
    lines = "\n".join(sorted(f"{r.node_id}:{r.model_hash}" for r in reports))
    return "0x" + hashlib.sha256(lines.encode()).hexdigest()


def record_equal_scores(rnd: Round) -> None:
    """Without a validator (or one that stayed silent): every reporter whose model did not
    diverge gets an equal score; a reporter flagged as an attacker in the round
    (ledger.models.Flag) gets 0, `flagged` in its evidence."""
    reports = list(rnd.reports.order_by("node_id"))
    flagged = set(Flag.objects.filter(round=rnd).values_list("node_id", flat=True))
    ppm = split_ppm({r.node_id: 0.0 if r.diverged or r.node_id in flagged else 1.0 for r in reports})
    rule = "equal split between reporters whose model did not diverge"
    if rnd.job.validator_id:
        rule += "; the job's validator sent no scores for this round"
    for r in reports:
        evidence = {"rule": rule, "diverged": r.diverged}
        if r.node_id in flagged:
            evidence["flagged"] = True
        ContributionScore.objects.get_or_create(
            round=rnd, node_id=r.node_id, defaults={"score_ppm": ppm[r.node_id], "source": EQUAL, "evidence": evidence}
        )


def record_validator_scores(rnd: Round) -> None:
    """From the validator's evidence: each planned member's score, recomputed here (what the
    validator says its scores are is never taken as such); a member the evidence does not name
    (its model never reached the validator), or one flagged as an attacker in the round, scores 0
    (its share is not paid: it goes back with the job's unspent budget)."""
    report = rnd.validator_report
    ppm = scores_ppm(score_from_evidence(report.evidence))
    rows = {int(row["node_id"]): row for row in report.evidence.get("peers", [])}
    planned = rnd.members if rnd.members is not None else sorted(ppm)
    flagged = set(Flag.objects.filter(round=rnd).values_list("node_id", flat=True))
    for node_id in sorted(set(planned) | set(ppm)):
        evidence = {
            "validator_report": report.pk,
            "row": rows.get(node_id, {"status": "no model reached the validator"}),
        }
        if node_id in flagged:
            evidence["flagged"] = True
        ContributionScore.objects.get_or_create(
            round=rnd,
            node_id=node_id,
            defaults={
                "score_ppm": 0 if node_id in flagged else ppm.get(node_id, 0),
                "source": VALIDATOR,
                "evidence": evidence,
            },
        )


def awaits_validator(job: Job, rnd: Round, grace_s: float) -> bool:
    """Whether a closed round should wait for its validator's scores before it is paid: the job
    has a validator, no scores came yet, and the round closed less than ``grace_s`` ago. After
    that the round is split evenly (and the evidence says the validator was silent)."""
    if not job.validator_id or ValidatorReport.objects.filter(round=rnd).exists():
        return False
    return rnd.closed_at is not None and (timezone.now() - rnd.closed_at).total_seconds() < grace_s


def build_trees(job: Job, number: int, scores: list[ContributionScore], payouts: list[tuple[int, str, int]]):
    """(contribution root, reward root) of a round from its score rows and (index, address, wei)
    leaves, in that order: the one definition the settlement and the audit share."""
    contribution = [
        contribution_leaf(job.id, number, s.node_id, s.score_ppm, evidence_hash(s.evidence))
        for s in sorted(scores, key=lambda s: s.node_id)
    ]
    rewards = [reward_leaf(job.id, number, index, address, amount) for index, address, amount in payouts]
    contribution_root = hex32(MerkleTree(contribution).root) if contribution else ZERO_ROOT
    reward_root = hex32(MerkleTree(rewards).root) if rewards else NO_REWARDS_ROOT
    return contribution_root, reward_root


def reward_tree(settlement: RoundSettlement) -> MerkleTree:
    """The round's reward tree from its stored payouts (leaf i is the payout with index i)."""
    leaves = [
        reward_leaf(settlement.job_id, settlement.number, p.index, p.address, int(p.amount_wei))
        for p in settlement.payouts.order_by("index")
    ]
    return MerkleTree(leaves)


def prepare_round(job: Job, rnd: Round) -> RoundSettlement:
    """The round's settlement row, its payouts and its scores: built once, from stored rows, and
    never changed afterwards (a second call returns the first one's)."""
    existing = RoundSettlement.objects.filter(round=rnd).first()
    if existing:
        return existing
    if not rnd.scores.exists():
        if ValidatorReport.objects.filter(round=rnd).exists():
            record_validator_scores(rnd)
        else:
            record_equal_scores(rnd)
    scores = list(rnd.scores.order_by("node_id").select_related("node__owner"))
    for s in scores:  # a flagged node is paid nothing for the round, whatever scored it
        if s.evidence.get("flagged"):
            s.score_ppm = 0
    total_wei = job.reward_per_round * WEI_PER_TOKEN
    amounts = split_amount(total_wei, {s.node_id: s.score_ppm for s in scores})
    paid = [s for s in scores if amounts[s.node_id] > 0]
    leaves = [(index, payout_address(s.node.owner), amounts[s.node_id]) for index, s in enumerate(paid)]
    contribution_root, reward_root = build_trees(job, rnd.number, scores, leaves)
    total = sum(amount for _, _, amount in leaves)
    try:
        with transaction.atomic():
            settlement = RoundSettlement.objects.create(
                job=job,
                round=rnd,
                number=rnd.number,
                model_hash=models_digest(list(rnd.reports.all())),
                contribution_root=contribution_root,
                reward_root=reward_root,
                total_wei=total,
                scoring=scores[0].source if scores else EQUAL,
            )
            Payout.objects.bulk_create(
                Payout(
                    job=job,
                    round=rnd,
                    settlement=settlement,
                    node_id=s.node_id,
                    index=index,
                    address=address,
                    amount_wei=amount,
                    score_ppm=s.score_ppm,
                )
                for (index, address, amount), s in zip(leaves, paid)
            )
    except IntegrityError:  # another run prepared it first
        return RoundSettlement.objects.get(round=rnd)
    return settlement
