"""What the job page's event log and topology graph show, from the database: joins, missed
rounds, rejections with reasons, consent changes and confirmed payouts; the current round's
links and the cut ones. Added to the websocket's snapshot (live.consumers); live frames bring
the same lines again (the page keys them, so none shows twice)."""

from jobs.models import Consent, Job, PeerReport
from jobs.orchestration import round_neighbours
from ledger.models import TxStatus


def _at(when) -> str | None:
    return when.isoformat() if when else None


def job_events(job: Job) -> list[dict]:
    names = {m.node_id: m.node.name for m in job.cohort.select_related("node")}
    events = [
        {
            "key": f"join:{m.node_id}",
            "at": _at(job.started_at),
            "kind": "join",
            "text": f"{m.node.name} joined the cohort (position {m.position})",
        }
        for m in job.cohort.select_related("node")
    ]
    reported: dict[int, set[int]] = {}
    for r in PeerReport.objects.filter(round__job=job).select_related("round", "node"):
        reported.setdefault(r.round.number, set()).add(r.node_id)
        for i, x in enumerate(r.rejected):
            sender = names.get(x.get("sender"), f"node {x.get('sender')}")
            events.append(
                {
                    "key": f"reject:{r.round.number}:{r.node_id}:{i}",
                    "at": _at(r.received_at),
                    "kind": "rejection",
                    "text": f"round {r.round.number}: {r.node.name} rejected {sender}'s weights: {x.get('reason', '')}",
                }
            )
    for rnd in job.round_set.filter(status="closed"):
        for node_id in rnd.members or []:
            if node_id not in reported.get(rnd.number, set()):
                events.append(
                    {
                        "key": f"miss:{rnd.number}:{node_id}",
                        "at": _at(rnd.closed_at),
                        "kind": "drop",
                        "text": f"round {rnd.number}: {names.get(node_id, node_id)} did not report",
                    }
                )
    for c in Consent.objects.filter(job=job).select_related("node"):
        events.append(consent_event(c))
    for p in job.payouts.filter(status=TxStatus.CONFIRMED).select_related("node", "round"):
        events.append(
            {
                "key": f"payout:{p.round.number}:{p.node_id}",
                "at": _at(p.confirmed_at),
                "kind": "payout",
                "text": f"round {p.round.number}: {p.node.name} paid {p.amount_text} tokens",
            }
        )
    return sorted(events, key=lambda e: e["at"] or "")


def consent_event(consent: Consent) -> dict:
    verb = "granted" if consent.granted else "withdrawn"
    return {
        "key": f"consent:{consent.pk}",
        "at": _at(consent.at),
        "kind": "consent",
        "text": f"{consent.node.name}: consent {verb}",
    }


def job_topology(job: Job) -> dict:
    """The open (else the last) round's links between members, and the links cut for the job."""
    rnd = job.round_set.order_by("-number").first()
    links = set()
    if rnd is not None:
        for a, targets in round_neighbours(rnd).items():
            links |= {tuple(sorted((a, b))) for b in targets if b != job.validator_id}
    return {
        "round": rnd.number if rnd else None,
        "links": sorted([list(link) for link in links]),
        "cut": [list(pair) for pair in job.cut_links],
    }
