"""Recycled receive buffers: reused only once nothing refers to them, bounded in memory."""

import asyncio
import os

import torch

from peers.transport.memory import MemoryTransport
from peers.wire.buffers import BufferPool
from peers.wire.exchange import Completed, Reassembler, send_payload
from peers.wire.signing import NodeKey
from peers.wire.tensorbytes import dump, parse

MB = 1 << 20


def test_a_released_buffer_is_handed_out_again():
    pool = BufferPool()
    first = pool.take(MB)
    assert isinstance(first, bytearray) and len(first) == MB
    second = pool.take(MB)
    assert second is not first  # the first is still held
    first_id = id(first)
    del first
    third = pool.take(MB)
    assert id(third) == first_id and pool.reused == 1


def test_sizes_must_match_exactly():
    pool = BufferPool()
    pool.take(MB)  # dropped at once: idle
    assert len(pool.take(MB - 1)) == MB - 1
    assert pool.reused == 0


def test_tensors_parsed_from_a_buffer_keep_it_busy():
    pool = BufferPool()
    data = dump({"w": torch.arange(1000, dtype=torch.float32)})
    buffer = pool.take(len(data))
    buffer[:] = data
    tensors, _ = parse(buffer)
    view = tensors["w"][10:20]  # a view of a view still holds the buffer
    del buffer, tensors
    other = pool.take(len(data))
    other[:] = bytes(len(data))  # must not be the memory `view` reads
    assert view.tolist() == [float(i) for i in range(10, 20)]
    del view, other
    pool.take(len(data))
    assert pool.reused == 1


def test_a_pool_keeps_at_most_max_bytes_and_drops_idle_buffers_first():
    pool = BufferPool(max_bytes=3 * MB)
    held = pool.take(MB)
    pool.take(MB)  # idle at once
    assert pool.pooled_bytes == 2 * MB
    pool.take(2 * MB)  # makes room by dropping the idle 1 MB buffer, never the held one
    assert pool.pooled_bytes == 3 * MB
    big = pool.take(4 * MB)  # over the budget: handed out, not pooled
    assert len(big) == 4 * MB and pool.pooled_bytes == 3 * MB
    again = pool.take(MB)  # `held` is busy: a fresh one, and the idle 2 MB buffer makes room
    assert again is not held and pool.reused == 0 and pool.pooled_bytes == 2 * MB


def test_a_pool_keeps_at_most_max_buffers():
    pool = BufferPool(max_buffers=2)
    held = [pool.take(100), pool.take(100)]
    pool.take(100)  # both pooled buffers are busy: not pooled
    assert pool.pooled_bytes == 200
    del held
    pool.take(100)
    assert pool.reused == 1


def _transfer(reassembler, key, payload, seq):
    transport = MemoryTransport()

    async def run():
        await send_payload(
            transport,
            "dfl.node.2",
            job_id=1,
            round=1,
            sender=1,
            seq=seq,
            payload=payload,
            key=key,
            chunk_bytes=64 * 1024,
        )
        results = []
        while transport.pending("dfl.node.2"):
            result = reassembler.feed(await transport.receive("dfl.node.2"))
            if result is not None:
                results.append(result)
        return results

    (result,) = asyncio.run(run())
    assert isinstance(result, Completed)
    return result.payload


def test_the_reassembler_reuses_a_released_payload_buffer_and_overwrites_all_of_it():
    key = NodeKey.generate()
    reassembler = Reassembler({1: key.public_key_hex}, job_id=1, max_bytes=MB)
    one, two, three = (os.urandom(300_000) for _ in range(3))
    first = _transfer(reassembler, key, one, seq=0)
    assert first == one
    second = _transfer(reassembler, key, two, seq=1)  # `first` is still held: a new buffer
    assert second == two and first == one and reassembler.pool.reused == 0
    first_id = id(first)
    del first
    third = _transfer(reassembler, key, three, seq=2)
    assert id(third) == first_id and reassembler.pool.reused == 1
    assert third == three and second == two
