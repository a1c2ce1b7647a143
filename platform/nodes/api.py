"""Node-facing JSON API, authenticated by the node's bearer token (no cookies, so no CSRF)."""

from functools import wraps

from django.conf import settings
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from hub.ratelimit import allow
from peers.protocol import key_change_bytes
from peers.wire.signing import verify

from . import exchange, safejson
from .authority import platform_key
from .hardware import HardwareError, parse_hardware
from .models import Node, NodeSample
from .stats import StatsError, parse_stats


def api_error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def node_api(*methods):
    """Authenticate the bearer token, parse a JSON body, hand (request, node, body) to the view."""

    def decorate(view):
        @csrf_exempt
        @require_http_methods(list(methods))
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            header = request.headers.get("Authorization", "")
            node = Node.authenticate(header[7:]) if header.startswith("Bearer ") else None
            if node is None:
                return api_error(401, "missing or invalid node token")
            if not allow(f"NODE_API_RATE_LIMIT:{node.token_id}", settings.NODE_API_RATE_LIMIT):
                return api_error(429, "too many requests for this node: slow down")
            body = {}
            if request.method == "POST":
                try:
                    body = safejson.loads(request.body or b"{}")
                except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, or nesting too deep
                    return api_error(400, f"body must be JSON ({exc})")
                if not isinstance(body, dict):
                    return api_error(400, "body must be a JSON object")
            if node.touch():
                from jobs.liveness import announce

                announce(node.id, online=True)
            return view(request, node, body, *args, **kwargs)

        return wrapper

    return decorate


def node_info(node: Node) -> dict:
    return {
        "node_id": node.id,
        "name": node.name,
        "channel": node.channel,
        "heartbeat_s": node.heartbeat_interval_s(),
        "platform_key": platform_key().public_key_hex,  # peers pin it: round plans must carry its signature
    }


@node_api("GET")
def me(request, node, body):
    return JsonResponse(node_info(node))


@node_api("POST")
def hello(request, node, body):
    """A peer announces itself: refreshed hardware and its signing key. It may start jobs."""
    from jobs.orchestration import exchange_grants, rejoin, start_jobs_for_node

    if "hardware" in body:
        try:
            node.apply_hardware(parse_hardware(body["hardware"]))
        except HardwareError as exc:
            return api_error(400, f"hardware: {exc}")
    key = body.get("public_key", "")
    if not isinstance(key, str) or len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        return api_error(400, "public_key must be 64 lowercase hex characters (Ed25519)")
    if (
        node.public_key
        and key != node.public_key
        and not _key_change_signed(node, key, body.get("key_change_signature"))
    ):
        # A stolen token alone must not re-key the node (and so sign weights in its name).
        return api_error(
            403,
            "this node already has a signing key: a new one needs key_change_signature (hex, by the current key, "
            "over the key change), or its owner resets the key on the node's page",
        )
    node.public_key = key
    node.save(
        update_fields=["cpu", "cores", "ram_gb", "gpu_name", "vram_gb", "cuda_capability", "hardware", "public_key"]
    )
    try:
        # Its own user on the peers' exchange, allowed to send where its open rounds say.
        credentials = exchange.enroll(node.id, exchange_grants({node.id})[node.id])
    except exchange.ExchangeUnavailable as exc:
        return api_error(503, f"{exc}; try again shortly")
    rejoin(node)  # a member left out for missed rounds counts again from the next round
    start_jobs_for_node(node)
    return JsonResponse({**node_info(node), "exchange": credentials})


def _key_change_signed(node: Node, new_key: str, signature) -> bool:
    try:
        raw = bytes.fromhex(signature) if isinstance(signature, str) else b""
    except ValueError:
        return False
    return verify(node.public_key, key_change_bytes(node.id, new_key), raw)


@node_api("GET")
def plans(request, node, body):
    """The node's current rounds and signed plans: a restarted peer starts from these."""
    from jobs.orchestration import current_plans_for

    return JsonResponse(current_plans_for(node))


@node_api("POST")
def heartbeat(request, node, body):
    """Liveness (node_api touched the node), and the peer's stats when it sends them: stored as
    the node's latest, kept as a sample for its charts, pushed to its operator's console."""
    if "stats" in body:
        from live.operator import operator_update

        try:
            stats = parse_stats(body["stats"])
        except StatsError as exc:
            return api_error(400, f"stats: {exc}")
        node.stats, node.stats_at = stats, timezone.now()
        Node.objects.filter(pk=node.pk).update(stats=node.stats, stats_at=node.stats_at)
        NodeSample.record(node, stats)
        operator_update(node)
    return JsonResponse({"ok": True})
