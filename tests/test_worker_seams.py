"""The peer's seams: transports declare optional capabilities (as Channels layers declare
``extensions``), background tasks are kept referenced, the reassembler trusts the plan's
neighbours from the start."""

import asyncio
import gc

from peers.data import load_local_data
from peers.transport.base import SEND_MANY, has_extension
from peers.transport.memory import MemoryTransport
from peers.transport.redis import RedisChannelTransport
from peers.wire.exchange import Reassembler, send_payload
from peers.wire.signing import NodeKey
from peers.worker import Peer


class Undeclared(MemoryTransport):
    """Has a send_many method but does not declare it: it must not be used."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    async def send_many(self, channel, messages):
        self.batches += 1
        raise AssertionError("an undeclared extension was used")


class Declared(Undeclared):
    extensions = [SEND_MANY]

    async def send_many(self, channel, messages):
        self.batches += 1
        for message in messages:
            await self.send(channel, message)
        return len(messages)


def test_capabilities_are_declared_not_guessed():
    assert has_extension(RedisChannelTransport, SEND_MANY)
    assert not has_extension(MemoryTransport(), SEND_MANY)


async def test_send_payload_batches_only_through_a_declared_extension():
    key = NodeKey.generate()
    for transport, batched in ((Undeclared(), False), (Declared(), True)):
        await send_payload(
            transport, "dfl.node.2", job_id=1, round=1, sender=1, seq=1, payload=b"x" * 5000, key=key, chunk_bytes=1000
        )
        assert (transport.batches > 0) is batched
        assert transport.pending("dfl.node.2") == 5


async def test_background_tasks_are_kept_until_they_end():
    peer = Peer(
        1, NodeKey.generate(), load_local_data("digits:0/4"), MemoryTransport(), reporter=None, platform_key="00" * 32
    )
    release = asyncio.Event()

    async def answer():
        await release.wait()

    peer._in_background(answer())
    gc.collect()
    assert len(peer._background) == 1
    release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert peer._background == set()


def test_reassembler_trusts_the_plan_neighbours_from_the_start():
    reassembler = Reassembler({2: "ab" * 32}, job_id=1, max_bytes=1000)
    assert reassembler.public_keys == {2: "ab" * 32}
    reassembler.trust({3: "cd" * 32})
    assert reassembler.public_keys == {3: "cd" * 32}
