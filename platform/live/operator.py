"""The operator console: every node of one user, live (/ws/operator/, group operator.<user id>).
A node's row is its liveness, the latest stats its heartbeat carried (nodes.stats), and its
confirmed earnings."""

import logging
from datetime import datetime

from django.utils import timezone

from ledger.models import Payout, TxStatus, tokens_text
from nodes.models import Node

from . import publish

log = logging.getLogger(__name__)


def operator_group(user_id: int) -> str:
    return f"operator.{user_id}"


def node_status(node: Node, now: datetime | None = None) -> str:
    """offline (missed two beats), stale (online but its stats missed a beat: hung, or an old
    peer), else what the peer says it does: training, validating or idle."""
    now = now or timezone.now()
    if not node.is_online:
        return "offline"
    if node.stats_at is None or (now - node.stats_at).total_seconds() > 1.5 * Node.heartbeat_interval_s():
        return "stale"
    return str(node.stats.get("status", "idle"))


def earnings(nodes) -> dict[int, str]:
    """Confirmed payouts per node, as token text."""
    totals: dict[int, int] = {}
    rows = Payout.objects.filter(node__in=nodes, status=TxStatus.CONFIRMED).values_list("node_id", "amount_wei")
    for node_id, wei in rows:  # wei is text in the database (uint256 overflows its integers)
        totals[node_id] = totals.get(node_id, 0) + int(wei)
    return {node_id: tokens_text(total) for node_id, total in totals.items()}


def node_summary(node: Node, earned: str | None = None) -> dict:
    if earned is None:
        earned = earnings([node]).get(node.id, "0")
    return {
        "node": node.id,
        "name": node.name,
        "status": node_status(node),
        "last_seen": node.last_seen.isoformat() if node.last_seen else None,
        "stats_at": node.stats_at.isoformat() if node.stats_at else None,
        "stats": node.stats,
        "earnings": earned,
    }


def operator_snapshot(user) -> dict:
    nodes = list(Node.objects.filter(owner=user))
    earned = earnings(nodes)
    return {
        "nodes": [node_summary(n, earned.get(n.id, "0")) for n in nodes],
        "online_s": Node.heartbeat_interval_s() * 2,
        "beat_s": Node.heartbeat_interval_s(),
        "now": timezone.now().isoformat(),
    }


def operator_update(node: Node) -> None:
    """Push one node's row to its owner's console (never anyone else's)."""
    try:
        publish.group_send(
            operator_group(node.owner_id), {"type": "operator.update", "kind": "node", "data": node_summary(node)}
        )
    except Exception:  # a console missing an update must never break the node API
        log.exception("console update for node %s failed", node.id)


def operator_update_by_id(node_id: int) -> None:
    node = Node.objects.filter(pk=node_id).first()
    if node is not None:
        operator_update(node)
