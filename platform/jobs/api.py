"""Peers post their round reports here (bearer node token)."""

from django.http import JsonResponse

from nodes.api import api_error, node_api
from peers.protocol import PeerReport, ProtocolError, from_message

from .orchestration import ReportRefused, accept_report


@node_api("POST")
def report(request, node, body):
    body.setdefault("type", PeerReport.TYPE)
    try:
        msg = from_message(body)
    except ProtocolError as exc:
        return api_error(400, f"malformed report: {exc}")
    if not isinstance(msg, PeerReport):
        return api_error(400, "expected a peer.report message")
    try:
        saved = accept_report(node, msg)
    except ReportRefused as exc:
        return api_error(exc.status, exc.reason)
    return JsonResponse({"ok": True, "report": saved.id}, status=201)
