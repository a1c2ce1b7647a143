"""Detecting attackers from the validator's evidence, round after round.

Each round the validator's evidence (peers.scoring, recomputed by peers.evidence) gives every
planned member a verdict:
- `echo` / `free ride`: its model duplicated another's, or was the round's starting model
  unchanged (status `duplicate` / `no-update`): deliberate, flagged at once;
- `invalid`: its model could not be used (non-finite, wrong shape: status `rejected`);
- `outlier`: it made the validator's loss worse (not among the helpful peers) and points away
  from them (agreement < 0) or is far longer than the others' updates (norm over NORM_OUTLIER
  times the median of the usable ones);
- `unhelpful`: it did not help but looks like an honest step (small data, skewed labels);
- `ok`: it helped.
A per-node reputation follows the verdicts (`invalid` and `outlier` count 0, `ok` 1, `unhelpful`
leaves it as it was): r <- DECAY * r + (1 - DECAY) * verdict, from 1. A node whose reputation
falls below FLAG_BELOW is flagged for that round (ledger.flags), with the verdicts and numbers
that led there as evidence: it is paid nothing for the round and its stake is slashed.
"""

import statistics

from django.db import transaction

from jobs.models import Job, Round, ValidatorReport
from ledger.flags import flag
from ledger.models import Reputation
from peers.evidence import OK, _marginals

NORM_OUTLIER = 3.0
DECAY = 0.5
FLAG_BELOW = 0.5
DELIBERATE = {"duplicate": "echo", "no-update": "free ride"}
VERDICT_VALUE = {"ok": 1.0, "invalid": 0.0, "outlier": 0.0, "echo": 0.0, "free ride": 0.0}


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


def judge_round(job: Job, rnd: Round, report: ValidatorReport) -> list[int]:
    """Update the reputations of the round's members from its evidence and flag those that fell
    below FLAG_BELOW (or did something deliberate). Returns the node ids flagged."""
    flagged = []
    with transaction.atomic():
        for node_id, (verdict, facts) in sorted(verdicts(report.evidence).items()):
            rep, _ = Reputation.objects.select_for_update().get_or_create(job=job, node_id=node_id)
            if rep.last_round >= rnd.number:
                continue  # judged already (a round is judged once)
            value = VERDICT_VALUE.get(verdict)
            if value is not None:
                rep.value = DECAY * rep.value + (1 - DECAY) * value
            rep.last_round = rnd.number
            rep.history = [*rep.history, {"round": rnd.number, "verdict": verdict, "reputation": round(rep.value, 6)}]
            rep.save()
            if verdict in DELIBERATE.values() or rep.value < FLAG_BELOW:
                evidence = {
                    "verdict": verdict,
                    "facts": facts,
                    "reputation": round(rep.value, 6),
                    "history": rep.history[-5:],
                    "validator_report": report.pk,
                }
                flag(job, rnd, rep.node, f"{verdict} (reputation {rep.value:.2f})", evidence)
                flagged.append(node_id)
    return flagged
