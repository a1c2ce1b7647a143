"""Raw data never leaves its owner: during a whole federation (plans, weights, model requests,
reports), no message carries any row of any peer's dataset, in the form the peer holds it
(float32, scaled) or as the source gives it (float64 pixel counts)."""

import asyncio
import json

import msgpack
import numpy as np
from sklearn.datasets import load_digits

from peers import topology
from peers.data import load_local_data
from peers.federation import InMemoryPlatform
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey
from peers.worker import Peer
from tests.federation import BASE_CONFIG

N = 4


class RecordingTransport(MemoryTransport):
    """The in-memory transport, keeping the bytes of everything sent through it."""

    def __init__(self):
        super().__init__()
        self.sent: list[bytes] = []

    async def send(self, channel: str, message: dict) -> None:
        self.sent.append(msgpack.packb(message, use_bin_type=True))
        await super().send(channel, message)


async def run_and_record():
    platform = InMemoryPlatform(BASE_CONFIG, total_rounds=2, round_timeout_s=5)  # node 3 misses round 1
    transport = RecordingTransport()
    datas = {i: load_local_data(f"digits:{i - 1}/{N}") for i in range(1, N + 1)}
    peers = {
        i: Peer(i, NodeKey.generate(), datas[i], transport, platform, platform_key=platform.public_key_hex)
        for i in range(1, N + 1)
    }
    await platform.run(peers, transport, lambda r, cut: topology.build("ring", N), joins_at={3: 2})  # 3 catches up
    reports = [json.dumps(r).encode() for rows in platform.by_round.values() for r in rows]
    return datas, transport.sent + reports


def rows_of(datas) -> list[bytes]:
    rows = []
    for data in datas.values():
        for X in (data.X_train, data.X_eval):
            rows += [row.tobytes() for row in np.ascontiguousarray(X, dtype=np.float32)]
    rows += [row.tobytes() for row in load_digits().data.astype(np.float64)]  # the source's own form
    rows += [row.tobytes() for row in load_digits().data.astype(np.float32)]
    return rows


def test_no_message_carries_a_row_of_any_dataset():
    datas, messages = asyncio.run(run_and_record())
    wire = b"".join(messages)
    weights = [m for m in messages if b"weights.chunk" in m]
    assert len(wire) > 100_000 and len(weights) >= 2 * N  # the federation really exchanged weights
    rows = rows_of(datas)
    assert len(rows) == 3 * 1797  # every shard row (train and eval), plus the source twice
    leaked = [i for i, row in enumerate(rows) if row in wire]
    assert leaked == []
    # the search finds a row where one is: a message that did carry data would be caught
    assert rows[0] in wire + rows[0]
