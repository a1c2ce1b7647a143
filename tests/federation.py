"""Real Peers over MemoryTransport, driven by the one in-memory driver (peers.federation), with
the settings the tests share."""

from dataclasses import replace

from peers import topology
from peers.attacks import make_peer
from peers.data import load_local_data
from peers.federation import InMemoryPlatform
from peers.protocol import ConsentGrant, JobConfig, Neighbour, RoundPlan, node_channel
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey

BASE_CONFIG = JobConfig(
    model="mlp",
    hidden=32,
    lr=0.3,
    lr_schedule="constant",
    local_steps=30,
    batch_size=32,
    seed=11,
    num_features=64,
    num_classes=10,
)


async def run_federation(
    n=4, rounds=2, *, graph="ring", attacks=None, late=None, deadline_s=20, shards=None, validator_data=None, **config
):
    """Run `rounds` rounds of nodes 1..n (shard i - 1 of the digits each) on `graph`; `attacks`
    maps node -> attack mode; `late` maps node -> first round it takes part in (its peer starts
    then); `config` overrides BASE_CONFIG's fields. Returns (reports, peers, transport); each
    peer's last model is kept as ``peer.final_model``. ``shards`` splits the digits that many ways
    (default n); ``validator_data`` (a data spec) adds the job's validator as node n + 1, whose
    score reports come back with the others (``"type": "validator.scores"``)."""
    attacks = attacks or {}
    platform = InMemoryPlatform(replace(BASE_CONFIG, **config), rounds, round_timeout_s=deadline_s)
    transport = MemoryTransport()
    peers = {
        i: make_peer(
            i,
            NodeKey.generate(),
            load_local_data(f"digits:{i - 1}/{shards or n}"),
            transport,
            platform,
            platform_key=platform.public_key_hex,
            attack=attacks.get(i, "none"),
        )
        for i in range(1, n + 1)
    }
    final_models = {}

    def keep_final_model(message: dict) -> None:  # the peer releases the job once it reported the last round
        if message["node_id"] not in peers:
            return  # the validator
        state = peers[message["node_id"]].jobs.get(message["job_id"])
        if message["round"] == rounds and state is not None:
            final_models[message["node_id"]] = state.trainer.state()

    platform.on_report = keep_final_model
    validator = None
    if validator_data is not None:
        validator = (
            n + 1,
            make_peer(
                n + 1,
                NodeKey.generate(),
                load_local_data(validator_data),
                transport,
                platform,
                platform_key=platform.public_key_hex,
            ),
        )
    results = await platform.run(
        peers, transport, lambda r, cut: topology.build(graph, n), joins_at=late, validator=validator
    )
    for node_id, peer in peers.items():
        peer.final_model = final_models.get(node_id)
    return [rep for result in results for rep in result.reports], peers, transport


def sample_plan(job_id: int = 3, round_number: int = 2, node_id: int = 5, neighbour: int = 6) -> RoundPlan:
    """A fixed, well-formed round plan (with a placeholder signature) for wire-format tests."""
    deadline = 1_700_000_000.5
    return RoundPlan(
        job_id=job_id,
        round=round_number,
        total_rounds=10,
        node_id=node_id,
        deadline=deadline,
        config=JobConfig(model="mlp", hidden=64, lr=0.1, local_steps=20, batch_size=32, seed=7),
        neighbours=[Neighbour(node_id=neighbour, channel=node_channel(neighbour), weight=0.25, public_key="ab" * 32)],
        self_weight=0.75,
        max_payload_bytes=1 << 20,
        consent=ConsentGrant(job_id=job_id, node_id=node_id, dataset="digits", expires_at=deadline),
        signature=b"\x02" * 64,
    )
