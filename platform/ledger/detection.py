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
A per-node reputation is the mean, over the rounds judged so far, of each round's standing: its
update's agreement with the helpful peers' consensus (cosine, -1 to 1), -1 for an unusable or
far too long update (peers.evidence.standing). A node whose mean falls below FLAG_BELOW once
MIN_JUDGED rounds are judged, or whose standing stays under TURNED_BELOW for TURNED_ROUNDS rounds
in a row (a sleeper turning after a long honest history), is flagged for that round and every later one (ledger.flags), with
the verdicts and numbers that led there as evidence: it is paid nothing for the round and its
stake is slashed. One round's verdict says little under skewed data (an honest peer's update is
now and then unhelpful or points away); the mean over rounds separates attackers from honest
peers (peers.evidence has the measured margins).

The verdicts and the reputation rule are pure functions of the evidence (peers.evidence:
`verdicts`, `next_reputation`, `flagged`), shared with `python -m bench robustness`.
"""

from django.db import transaction

from jobs.models import Job, Round, ValidatorReport
from ledger.flags import flag
from ledger.models import Flag, Reputation
from peers.evidence import (  # noqa: F401  (FLAG_BELOW, MIN_JUDGED: the API)
    FLAG_BELOW,
    MIN_JUDGED,
    TURNED_ROUNDS,
    flagged,
    next_reputation,
    standing,
    verdicts,
)


def judge_round(job: Job, rnd: Round, report: ValidatorReport) -> list[int]:
    """Update the reputations of the round's members from its evidence and flag those that fell
    below FLAG_BELOW (or did something deliberate). Returns the node ids flagged."""
    raised = []
    with transaction.atomic():
        for node_id, (verdict, facts) in sorted(verdicts(report.evidence).items()):
            rep, _ = Reputation.objects.select_for_update().get_or_create(job=job, node_id=node_id)
            if rep.last_round >= rnd.number:
                continue  # judged already (a round is judged once)
            judged = len(rep.history)  # rounds judged before this one
            rep.value = next_reputation(rep.value, judged, verdict, facts)
            rep.last_round = rnd.number
            now = {"round": rnd.number, "verdict": verdict, "standing": round(standing(verdict, facts), 6)}
            rep.history = [*rep.history, {**now, "reputation": round(rep.value, 6)}]
            recent = [float(h["standing"]) for h in rep.history[-TURNED_ROUNDS:] if "standing" in h]
            rep.save()
            before = Flag.objects.filter(job=job, node_id=node_id, round__number__lt=rnd.number).exists()
            if flagged(verdict, rep.value, judged + 1, before, recent):
                evidence = {
                    "verdict": verdict,
                    "facts": facts,
                    "reputation": round(rep.value, 6),
                    "history": rep.history[-5:],
                    "validator_report": report.pk,
                }
                why = f"{verdict} (reputation {rep.value:.2f})" + ("; flagged in an earlier round" if before else "")
                flag(job, rnd, rep.node, why, evidence)
                raised.append(node_id)
    return raised
