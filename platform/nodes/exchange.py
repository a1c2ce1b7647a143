"""The peers' exchange: a Redis for peers only, with one ACL user per node.

Peers swap weights through inboxes (one sorted set per node, channels_redis' layout) on a Redis
that holds nothing of the platform's: not the browsers' groups, not Celery, not the cache. Its
``default`` user is disabled; the platform manages it as an admin user (``PEER_REDIS_URL``) and
gives each node, at ``hello``, a user of its own (``node-<id>``, a fresh random password) with the
rights ``peers.acl`` spells out: pop its own inbox, add to the inboxes of the nodes it sends to in
its open rounds (rewritten whenever a round opens, ``allow_sends``, and cleared when the node has
no open round), nothing else.

Revoking the node (a new token, the node deleted) deletes its user, which drops its connections,
and its inbox. Round plans are written to the inboxes by the platform through the ``peers``
channel layer (``plan_layer``). Without ``PEER_REDIS_URL`` (the embedded demo, tests that need no
remote peer) plans go through the default layer and ``hello`` offers remote peers no exchange.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from functools import cache
from urllib.parse import urlsplit, urlunsplit

import redis
from channels.layers import get_channel_layer
from django.conf import settings

from peers import acl
from peers.protocol import node_channel

log = logging.getLogger(__name__)

PREFIX = acl.KEY_PREFIX
inbox_key = acl.inbox_key
username = acl.username


class ExchangeUnavailable(RuntimeError):
    """The peers' Redis could not be reached or refused the platform's admin user."""


def configured() -> bool:
    return bool(settings.PEER_REDIS_URL)


def public_url() -> str:
    """Where peers reach the exchange: PEER_REDIS_PUBLIC_URL, or PEER_REDIS_URL without the
    platform's credentials."""
    if settings.PEER_REDIS_PUBLIC_URL:
        return settings.PEER_REDIS_PUBLIC_URL
    parts = urlsplit(settings.PEER_REDIS_URL)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@cache
def _admin(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, **settings.REDIS_CONNECTION_OPTIONS)


def admin() -> redis.Redis:
    return _admin(settings.PEER_REDIS_URL)


def plan_layer():
    """The channel layer round plans travel on: the exchange's when there is one."""
    return get_channel_layer("peers" if configured() else "default")


def _acl(*args) -> None:
    try:
        admin().execute_command("ACL", *args)
    except redis.RedisError as exc:
        raise ExchangeUnavailable(f"peers' exchange: {exc}") from exc


def enroll(node_id: int, sends_to: Iterable[int] = ()) -> dict | None:
    """Give the node a user with a new password (its old connections keep working, new ones
    need the new password) and return what its peer needs to connect; None without an exchange."""
    if not configured():
        return None
    password = secrets.token_urlsafe(32)
    _acl("SETUSER", username(node_id), *acl.user_rules(node_id, password, sends_to))
    return {
        "url": public_url(),
        "username": username(node_id),
        "password": password,
        "prefix": PREFIX,
        "channel": node_channel(node_id),
    }


def allow_sends(sends_to_by_node: dict[int, set[int]]) -> None:
    """Let each enrolled node add to exactly these inboxes (its neighbours in its open rounds)."""
    if not configured():
        return
    try:
        users = set(admin().execute_command("ACL", "USERS"))
    except redis.RedisError as exc:
        raise ExchangeUnavailable(f"peers' exchange: {exc}") from exc
    for node_id, sends_to in sends_to_by_node.items():
        name = username(node_id)
        if name.encode() in users or name in users:
            _acl("SETUSER", name, "clearselectors", *acl.send_selectors(sends_to))


def revoke(node_id: int) -> None:
    """Delete the node's user (Redis drops its connections) and its inbox."""
    if not configured():
        return
    _acl("DELUSER", username(node_id))
    try:
        admin().delete(inbox_key(node_id))
    except redis.RedisError as exc:
        raise ExchangeUnavailable(f"peers' exchange: {exc}") from exc
    log.info("node %s: exchange credentials revoked", node_id)
