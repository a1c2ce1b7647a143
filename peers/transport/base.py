"""The transport interface peers talk through (a Django Channels layer also fits it)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class ChannelFull(Exception):
    """The destination channel is at capacity; retry later."""


def is_channel_full(exc: BaseException) -> bool:
    """True for our ``ChannelFull`` and for any other library's class of that name
    (``channels.exceptions.ChannelFull`` when the platform hands us its layer)."""
    return any(cls.__name__ == "ChannelFull" for cls in type(exc).__mro__)


SEND_MANY = "send_many"  # extension: ``send_many(channel, messages) -> int`` adds a batch in one trip


def has_extension(transport: object, name: str) -> bool:
    """Whether a transport declares an optional capability in its ``extensions`` list, as
    Django Channels layers do (``extensions = ["groups", "flush"]``)."""
    return name in getattr(transport, "extensions", ())


@runtime_checkable
class Transport(Protocol):
    extensions: list[str]

    async def send(self, channel: str, message: dict) -> None: ...

    async def receive(self, channel: str) -> dict: ...

    async def close(self) -> None: ...


class BatchingTransport(Transport, Protocol):
    """A transport that declares SEND_MANY."""

    async def send_many(self, channel: str, messages: list[dict]) -> int: ...
