"""Message transports: in-memory queues for tests, Redis (channels_redis-compatible) for real runs."""

from peers.transport.base import ChannelFull, Transport, is_channel_full

__all__ = ["ChannelFull", "Transport", "is_channel_full"]
