"""What a node may do on the peers' exchange, as Redis ACL rules: the one definition the
platform grants (platform/nodes/exchange.py) and the peer's transport lives within
(peers/transport/redis.py). Standard library only: the platform imports it.

A node's user may pop its own inbox, and add to (and take back what it added from) the inboxes
of the nodes it sends to, one ACL selector each. Nothing else: no other key, command or pub/sub
channel. In particular no Lua (a script can freeze the server), no range read or range delete
(they would read or wipe other senders' messages) and no EXPIRE (it would expire a whole inbox);
the receiver drops expired messages itself as it pops them.
"""

from __future__ import annotations

from collections.abc import Iterable

from peers.protocol import node_channel

KEY_PREFIX = "asgi"  # channels_redis' default key prefix: the platform's plans use its layer
CONNECTION_COMMANDS = (
    "ping",
    "hello",
    "auth",
    "multi",
    "exec",
    "discard",
)  # redis-py set-up, health checks, MULTI/EXEC
RECEIVER_COMMANDS = ("bzmpop", "zmpop")
SENDER_COMMANDS = ("zadd", "zcard", "zrem")


def username(node_id: int) -> str:
    return f"node-{int(node_id)}"


def inbox_key(node_id: int) -> str:
    return KEY_PREFIX + node_channel(node_id)


def send_selectors(sends_to: Iterable[int]) -> list[str]:
    """One selector per inbox the node may add to."""
    commands = " ".join(f"+{c}" for c in SENDER_COMMANDS)
    return [f"(%RW~{inbox_key(n)} {commands})" for n in sorted(set(sends_to))]


def user_rules(node_id: int, password: str, sends_to: Iterable[int] = ()) -> list[str]:
    """``ACL SETUSER <username(node_id)>`` arguments: a fresh user with exactly these rights."""
    return [
        "reset",
        "on",
        f">{password}",
        "resetchannels",
        "-@all",
        *(f"+{c}" for c in CONNECTION_COMMANDS + RECEIVER_COMMANDS),
        f"%RW~{inbox_key(node_id)}",
        *send_selectors(sends_to),
    ]
