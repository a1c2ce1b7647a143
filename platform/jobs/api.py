"""Peers post their round reports here, and a job's validator its scores (bearer node token)."""

from django.http import JsonResponse

from nodes.api import api_error, node_api
from peers.protocol import PeerReport, ProtocolError, ScoreReport, from_message

from .orchestration import ReportRefused, accept_report, accept_scores


@node_api("POST")
def report(request, node, body):
    body.setdefault("type", PeerReport.TYPE)
    try:
        msg = from_message(body)
    except ProtocolError as exc:
        return api_error(400, f"malformed report: {exc}")
    if not isinstance(msg, PeerReport | ScoreReport):
        return api_error(400, "expected a peer.report or validator.scores message")
    try:
        saved = accept_report(node, msg) if isinstance(msg, PeerReport) else accept_scores(node, msg)
    except ReportRefused as exc:
        return api_error(exc.status, exc.reason)
    return JsonResponse({"ok": True, "report": saved.id}, status=201)
