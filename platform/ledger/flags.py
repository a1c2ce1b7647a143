"""Flags: a peer caught attacking in a round, with the evidence (no chain access here: flags are
raised where scores arrive, in the web process; ledger.staking slashes them in the settler)."""

from django.db import IntegrityError, transaction

from jobs.models import Job, Round
from ledger.models import Flag
from ledger.rewards import evidence_hash, hex32
from nodes.models import Node


def flag_hash(job_id: int, round_number: int, node_id: int, reason: str, evidence: dict) -> str:
    """keccak256 of the flag's canonical JSON: what it is about (job, round, node) and why, so two
    flags never share a hash and an edited evidence row no longer matches the chain's."""
    record = {"job": job_id, "round": round_number, "node": node_id, "reason": reason, "evidence": evidence}
    return hex32(evidence_hash(record))


def flag_hash_of(flag: Flag) -> str:
    return flag_hash(flag.job_id, flag.round.number, flag.node_id, flag.reason, flag.evidence)


def flag(job: Job, rnd: Round, node: Node, reason: str, evidence: dict) -> Flag:
    """Record that `node` attacked in `rnd` (once per (round, node): a second flag returns the
    first). Settlement scores it 0 for the round and slashes its owner's stake."""
    existing = Flag.objects.filter(round=rnd, node=node).first()
    if existing:
        return existing
    try:
        with transaction.atomic():
            return Flag.objects.create(
                job=job,
                round=rnd,
                node=node,
                reason=reason[:200],
                evidence=evidence,
                evidence_hash=flag_hash(job.id, rnd.number, node.id, reason[:200], evidence),
            )
    except IntegrityError:
        return Flag.objects.get(round=rnd, node=node)
