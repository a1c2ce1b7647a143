"""Contribution scores from an evidence record alone (peers.scoring writes the record): the
standard library only, so the platform recomputes every score it pays on (ledger.rewards,
ledger.audit) without torch. docs/scoring.md has the formula."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

PPM = 1_000_000
OK = "ok"
Coalition = tuple[int, ...]


def _key(members) -> Coalition:
    return tuple(sorted(int(i) for i in members))


def _eligible(evidence: Mapping[str, Any]) -> list[int]:
    return [int(r["node_id"]) for r in evidence["peers"] if r["status"] == OK]


def _pass_marginals(
    method: str, members: list[int], perms: list[list[int]], losses: Mapping[Coalition, float]
) -> dict[int, float]:
    """The marginal value of each of ``members`` among themselves (the empty coalition is the
    reference): leave one out, or the mean over ``perms`` of the loss drop it brings."""
    if method == "loo":
        full = losses[_key(members)]
        return {i: losses[_key(j for j in members if j != i)] - full for i in members}
    if method != "shapley":
        raise ValueError(f"unknown scoring method {method!r}")
    total = dict.fromkeys(members, 0.0)
    for perm in perms:
        before = losses[()]
        for k in range(1, len(perm) + 1):
            after = losses[_key(perm[:k])]
            total[perm[k - 1]] += before - after
            before = after
    return {i: (total[i] / len(perms) if perms else 0.0) for i in members}


def _marginals(evidence: Mapping[str, Any]) -> tuple[dict[int, float], list[int]]:
    """Each eligible peer's marginal value (from the last pass it took part in) and the helpful
    peers (those of the last pass with a positive one), from the evidence alone; checks that
    each pass holds exactly the helpful peers of the one before."""
    losses = {_key(c["members"]): float(c["loss"]) for c in evidence["coalitions"]}
    eligible = _eligible(evidence)
    marginals = dict.fromkeys(eligible, 0.0)
    expected = sorted(eligible)
    helpful: list[int] = []
    members: list[int] = []
    for p in evidence["passes"]:
        members = [int(i) for i in p["members"]]
        if members != expected:
            raise ValueError(f"evidence: pass over {members}, expected {expected}")
        perms = [[int(i) for i in perm] for perm in p["permutations"]]
        values = _pass_marginals(str(evidence["method"]), members, perms, losses)
        marginals.update(values)
        helpful = [i for i in members if values[i] > 0]
        expected = helpful
    if helpful and helpful != members and len(evidence["passes"]) < int(evidence["params"]["max_passes"]):
        raise ValueError("evidence: the passes stop before every peer left helps")
    if eligible and not evidence["passes"]:
        raise ValueError("evidence: no pass over the eligible peers")
    if len(evidence["passes"]) > int(evidence["params"]["max_passes"]):
        raise ValueError("evidence: more passes than max_passes")
    return marginals, helpful


def score_from_evidence(evidence: Mapping[str, Any]) -> dict[int, float]:
    """The final scores (node id -> [0, 1]) recomputed from an evidence record alone."""
    marginals, _ = _marginals(evidence)
    floor = float(evidence["params"]["floor"])
    raw: dict[int, float] = {}
    for r in evidence["peers"]:
        i = int(r["node_id"])
        raw[i] = max(0.0, marginals[i]) * max(0.0, float(r["agreement"])) if r["status"] == OK else 0.0
    positive = [v for v in raw.values() if v > 0]
    if positive:
        threshold = floor * (sum(positive) / len(positive))
        raw = {i: (v if v >= threshold else 0.0) for i, v in raw.items()}
    total = sum(raw.values())
    return {i: (v / total if total > 0 else 0.0) for i, v in raw.items()}


def scores_ppm(scores: Mapping[int, float]) -> dict[int, int]:
    """Integer parts per million, proportional to ``scores`` (negative or non-finite count as 0),
    summing to exactly 1_000_000 when any is positive (else all 0): largest remainder, ties to
    the lowest node id. Computed with exact fractions, so it does not depend on float rounding."""
    clean = {
        int(i): (Fraction(s) if isinstance(s, int | float) and math.isfinite(s) and s > 0 else Fraction(0))
        for i, s in scores.items()
    }
    total = sum(clean.values(), Fraction(0))
    if total == 0:
        return dict.fromkeys(clean, 0)
    quotas = {i: s * PPM / total for i, s in clean.items()}
    out = {i: math.floor(q) for i, q in quotas.items()}
    left = PPM - sum(out.values())
    for i in sorted(quotas, key=lambda i: (-(quotas[i] - out[i]), i))[:left]:
        out[i] += 1
    return out


# ---------------------------------------------------------------- verdicts (ledger.detection)
NORM_OUTLIER = 5.0  # an update this many times longer than the round's median is no honest step
DELIBERATE = {"duplicate": "echo", "no-update": "free ride"}
# Reputation: the mean over the rounds judged so far of each round's standing (``standing``: the
# update's agreement with the helpful peers' consensus, -1 for a far too long or unusable one). A
# node is flagged once MIN_JUDGED rounds are judged and the mean is below FLAG_BELOW. One round
# says little under skewed data (an honest peer's cosine ranges over -0.4..0.8 from round to
# round); the mean over rounds separates: `python -m bench robustness` (16 peers, Dirichlet(0.5),
# 100 rounds) put every honest peer's mean at 0.19 or more and every attacker's (sign-flip,
# scale, gaussian, label-flip) at 0.08 or less (docs/benchmarks.md).
MIN_JUDGED = 3
FLAG_BELOW = 0.1
# A sleeper that helps for many rounds lifts its mean far above FLAG_BELOW and could then attack
# for dozens of rounds before the mean falls. Standing below TURNED_BELOW TURNED_ROUNDS judged
# rounds in a row flags it too: in the bench's 100-round runs every sign-flip and scaling attacker
# did that by round 6 and no honest node did (5 rounds under -0.05 caught one honest node once).
TURNED_ROUNDS = 6
TURNED_BELOW = -0.1


def verdicts(evidence: dict) -> dict[int, tuple[str, dict]]:
    """node id -> (verdict, the numbers it rests on), from one round's evidence alone."""
    _, helpful = _marginals(evidence)
    rows = evidence["peers"]
    norms = [float(r["update_norm"]) for r in rows if r["status"] == OK]
    median = statistics.median(norms) if norms else 0.0
    out = {}
    for row in rows:
        node_id, status = int(row["node_id"]), row["status"]
        facts = {
            "status": status,
            "reason": row.get("reason", ""),
            "agreement": row.get("agreement", 0.0),
            "update_norm": row.get("update_norm", 0.0),
            "median_norm": median,
            "helpful": node_id in helpful,
        }
        if status in DELIBERATE:
            verdict = DELIBERATE[status]
        elif status != OK:
            verdict = "invalid"
        elif node_id in helpful:
            verdict = "ok"
        elif float(row["agreement"]) < 0 or (median > 0 and float(row["update_norm"]) > NORM_OUTLIER * median):
            verdict = "outlier"
        else:
            verdict = "unhelpful"
        out[node_id] = (verdict, facts)
    return out


def standing(verdict: str, facts: Mapping[str, Any]) -> float:
    """One round's standing in [-1, 1]: the update's agreement (cosine with the helpful peers'
    consensus update); -1 for an unusable, deliberate or far too long update."""
    if verdict not in ("ok", "outlier", "unhelpful"):
        return -1.0
    median = float(facts.get("median_norm", 0.0))
    if median > 0 and float(facts.get("update_norm", 0.0)) > NORM_OUTLIER * median:
        return -1.0
    agreement = float(facts.get("agreement", 0.0))
    return max(-1.0, min(1.0, agreement)) if math.isfinite(agreement) else -1.0


def next_reputation(value: float, judged: int, verdict: str, facts: Mapping[str, Any]) -> float:
    """A node's reputation after one more round: the mean of its standings, ``value`` being the
    mean over the ``judged`` rounds before (ignored when there were none)."""
    if judged <= 0:
        return standing(verdict, facts)
    return (value * judged + standing(verdict, facts)) / (judged + 1)


def flagged(verdict: str, reputation: float, judged: int, before: bool = False, recent: Sequence[float] = ()) -> bool:
    """Whether a node is a flagged attacker after a round's verdict: something deliberate at
    once; a mean standing under FLAG_BELOW over at least MIN_JUDGED judged rounds (``judged``
    counts this one); or its ``recent`` standings (oldest first, this round's last) under
    TURNED_BELOW for the last TURNED_ROUNDS rounds. A node flagged ``before`` in the job stays
    flagged: an attacker that now and then sends a model that helps is not paid for those rounds
    either."""
    turned = len(recent) >= TURNED_ROUNDS and all(s < TURNED_BELOW for s in recent[-TURNED_ROUNDS:])
    return before or verdict in DELIBERATE.values() or (judged >= MIN_JUDGED and reputation < FLAG_BELOW) or turned
