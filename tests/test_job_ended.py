"""A peer leaves a job the platform ended early only on the platform's signed word: a neighbour
(who may write to its inbox) cannot make it quit."""

import asyncio
from types import SimpleNamespace

from peers.data import load_local_data
from peers.protocol import JobEvent, event_bytes, node_channel, to_message
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey
from peers.worker import Peer


class Reports:
    def __init__(self):
        self.messages = []

    async def report(self, message):
        self.messages.append(message)


def run_with(event_signer: NodeKey, platform: NodeKey) -> bool:
    """Whether a peer in a job leaves it on an 'ended' event signed by ``event_signer``."""
    transport = MemoryTransport()
    peer = Peer(
        1, NodeKey.generate(), load_local_data("digits:0/2"), transport, Reports(), platform_key=platform.public_key_hex
    )
    peer.jobs[7] = SimpleNamespace(consensus=None)  # in job 7, not its validator

    async def go():
        task = asyncio.create_task(peer.run(max_jobs=1))
        event = JobEvent(
            job_id=7,
            event="ended",
            detail={"reason": "cancelled"},
            signature=event_signer.sign(event_bytes(7, "ended")),
        )
        await transport.send(node_channel(1), to_message(event))
        try:
            await asyncio.wait_for(task, 2)
            return True
        except TimeoutError:
            return False

    return asyncio.run(go())


def test_a_signed_ended_event_makes_the_peer_leave_the_job():
    platform = NodeKey.generate()
    assert run_with(platform, platform)


def test_a_neighbour_cannot_end_a_job_for_a_peer():
    assert not run_with(NodeKey.generate(), NodeKey.generate())
