"""Secure aggregation of gossip neighbourhoods (peers.secagg.gossip, wired into peers.worker):
the masked sum, uniform-looking payloads, recovery from a dropped sender, the same accuracy as
plain gossip, and the job form's refusals. In memory, with real Peers."""

import asyncio

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from scipy import stats

from peers import topology
from peers.plans import round_plans
from peers.protocol import SecAggRecover, WeightsChunk, from_message, recover_bytes, to_message
from peers.secagg import decode, encode, gossip
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey
from peers.worker import CATCH_UP_SEQ
from tests.federation import BASE_CONFIG, run_federation


def rel_err(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def keys(ids):
    node_keys = {i: NodeKey.generate() for i in ids}
    private = {i: gossip.x25519_private(k.seed()) for i, k in node_keys.items()}
    public = {i: gossip.x25519_public(k.public_key_hex) for i, k in node_keys.items()}
    return private, public


def test_the_x25519_key_derived_from_the_node_key_matches_its_public_half():
    for _ in range(10):
        key = NodeKey.generate()
        raw = (
            gossip.x25519_private(key.seed())
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        assert raw == gossip.x25519_public(key.public_key_hex)


def seed(j, recipient, round=3):  # a self-mask seed per (sender, recipient, round), fixed for the tests
    return bytes([j, recipient, round]) * 10 + b"sm"


def masked_round(models, recipient, private, public, job=1, round=3):
    senders = sorted(models)
    return {
        j: gossip.mask(
            encode(models[j], summands=len(senders)),
            j,
            private[j],
            {k: public[k] for k in senders if k != j},
            job=job,
            round=round,
            recipient=recipient,
            self_seed=seed(j, recipient, round),
        )
        for j in senders
    }


def self_masks(senders, recipient, length, job=1, round=3):
    """What the recipient subtracts once it has rebuilt the senders' seeds."""
    total = np.zeros(length, dtype=np.uint64)
    for j in senders:
        total += gossip.self_mask(seed(j, recipient, round), job=job, round=round, recipient=recipient, length=length)
    return total


def test_the_neighbourhood_sum_equals_the_plain_sum():
    rng = np.random.default_rng(0)
    models = {j: rng.normal(0, 1, 5000) for j in (2, 3, 5)}
    private, public = keys([1, 2, 3, 5])
    masked = masked_round(models, 1, private, public)
    summed = np.sum(list(masked.values()), axis=0, dtype=np.uint64)
    assert rel_err(decode(summed - self_masks([2, 3, 5], 1, 5000)), sum(models.values())) < 1e-6
    assert rel_err(decode(summed), sum(models.values())) > 1  # the self masks stay on until removed
    # bound to the recipient and round: the masks of another recipient do not cancel here
    other = masked_round(models, 9, private, public)
    mixed = decode(masked[2] + masked[3] + other[5] - self_masks([2, 3, 5], 1, 5000))
    assert rel_err(mixed, sum(models.values())) > 1


def test_a_masked_payload_looks_uniform_and_the_plain_model_does_not():
    rng = np.random.default_rng(1)
    models = {j: rng.normal(0, 0.1, 4000) for j in (2, 3, 4)}
    private, public = keys([1, 2, 3, 4])
    masked = masked_round(models, 1, private, public)[2]
    assert stats.kstest(masked / 2.0**64, "uniform").pvalue > 0.01
    plain = encode(models[2], summands=3)
    assert stats.kstest(plain / 2.0**64, "uniform").pvalue < 1e-6


def test_a_dropped_sender_is_recovered_from_the_survivors_corrections():
    rng = np.random.default_rng(2)
    models = {j: rng.normal(0, 1, 3000) for j in (2, 3, 4, 5)}
    private, public = keys([1, 2, 3, 4, 5])
    masked = masked_round(models, 1, private, public)
    survivors, dropped = [2, 3, 5], [4]
    total = np.sum([masked[j] for j in survivors], axis=0, dtype=np.uint64) - self_masks(survivors, 1, 3000)
    for j in survivors:
        total -= gossip.correction(
            j, private[j], {d: public[d] for d in dropped}, job=1, round=3, recipient=1, length=3000
        )
    assert rel_err(decode(total), sum(models[j] for j in survivors)) < 1e-6


def test_masking_refuses_a_neighbourhood_whose_sum_is_one_model():
    private, _ = keys([1, 2])
    with pytest.raises(ValueError, match="fewer than 2"):
        gossip.mask(encode(np.ones(3)), 2, private[2], {}, job=1, round=1, recipient=1, self_seed=bytes(32))


def test_plans_name_each_neighbours_neighbourhood_only_with_secure_aggregation():
    members = [(i, NodeKey.generate().public_key_hex) for i in (10, 11, 12, 13)]
    for on in (True, False):
        plans = round_plans(
            job_id=1,
            round=1,
            total_rounds=2,
            members=members,
            rows=topology.build("complete", 4),
            config=BASE_CONFIG.__class__(**{**BASE_CONFIG.__dict__, "secure_aggregation": on}),
            deadline=2e9,
            max_payload_bytes=1 << 20,
            sign=lambda b: b"s" * 64,
        )
        n = plans[0].neighbours[0]
        assert n.node_id == 11
        assert n.neighbourhood == ({"10": members[0][1], "12": members[2][1], "13": members[3][1]} if on else {})
        assert from_message(to_message(plans[0])) == plans[0]


async def federation(secure, **kw):
    reports, peers, _ = await run_federation(4, 3, graph="complete", secure_aggregation=secure, **kw)
    return reports, peers


def final_accuracy(reports):
    last = [r for r in reports if r["round"] == 3]
    assert len(last) == 4
    return float(np.mean([r["accuracy"] for r in last]))


def test_live_rounds_with_secure_aggregation_reach_the_same_models_and_accuracy():
    plain, plain_peers = asyncio.run(federation(False))
    secure, secure_peers = asyncio.run(federation(True))
    assert abs(final_accuracy(secure) - final_accuracy(plain)) <= 0.005
    assert all(not r["rejected"] for r in secure)
    # complete graph, equal weights: every peer ends on the same mean, as without masks
    finals = [secure_peers[i].final_model for i in (1, 2, 3, 4)]
    for name, tensor in finals[0].items():
        for other in finals[1:]:
            assert float((other[name] - tensor).abs().max()) < 1e-6
        assert float((plain_peers[1].final_model[name] - tensor).abs().max()) < 1e-4


class Dropping(MemoryTransport):
    """Loses node 4's round-1 model to node 1 (it dropped after its masks were fixed), and
    keeps what node 2 sent node 1 in round 1."""

    def __init__(self):
        super().__init__()
        self.seen: list[WeightsChunk] = []
        self.requests: list[SecAggRecover] = []

    async def send(self, channel, message):
        if message.get("type") == "weights.chunk" and channel == "dfl.node.1" and message["round"] == 1:
            if message["sender"] == 4 and message["seq"] == 1:
                return
            if message["sender"] == 2 and message["seq"] == 1:
                self.seen.append(from_message(message))
        if message.get("type") == "secagg.recover":
            self.requests.append(from_message(message))
        await super().send(channel, message)


def test_a_sender_that_drops_after_masking_is_recovered_live(monkeypatch):
    transport = Dropping()
    monkeypatch.setattr("tests.federation.MemoryTransport", lambda: transport)
    reports, _ = asyncio.run(federation(True, deadline_s=8))
    first = {r["node_id"]: r for r in reports if r["round"] == 1}
    assert first[1]["rejected"] == [{"sender": 4, "reason": "no weights before the deadline"}]
    assert not first[1]["diverged"]
    # it mixed (the fallback would keep its own model: distance 0), and sanely
    others = [first[i]["consensus_distance"] for i in (2, 3, 4)]
    assert 0 < first[1]["consensus_distance"] < 3 * max(others)
    # every round each recipient asks its senders to unmask; node 1 in round 1 names 4 dropped
    first_requests = [(q.requester, q.alive, q.dropped) for q in transport.requests if q.round == 1]
    assert [q for q in first_requests if q[0] == 1] == [(1, [2, 3], [4])] * 2  # to nodes 2 and 3
    assert all(q.dropped == [] for q in transport.requests if (q.round, q.requester) != (1, 1))
    assert all(not r["rejected"] for r in reports if r["round"] > 1)
    payload = b"".join(c.data for c in sorted(transport.seen, key=lambda c: c.index))
    length = (len(payload) - 8 - 2 * gossip.RECORD_BYTES) // 8
    values, _ = gossip.unpack_upload(payload, length, {3, 4})  # node 2's: shares for nodes 3 and 4
    assert (
        stats.kstest(values / 2.0**64, "uniform").pvalue > 1e-3
    )  # a 0.1% chance to fail by chance; a model in the clear gives < 1e-6


def test_recovery_requests_are_signed():
    key = NodeKey.generate()
    shares = bytes(2 * gossip.RECORD_BYTES)
    signed = recover_bytes(1, 2, 3, [4], alive=[5, 6], shares=shares)
    request = SecAggRecover(
        job_id=1, round=2, requester=3, dropped=[4], signature=key.sign(signed), alive=[5, 6], shares=shares
    )
    assert from_message(to_message(request)) == request
    # the signature covers the alive set and the shares too
    assert recover_bytes(1, 2, 3, [4], alive=[5], shares=shares) != signed
    assert recover_bytes(1, 2, 3, [4], alive=[5, 6], shares=shares[:-1] + b"x") != signed


# The job form

FORM = {
    "name": "j",
    "description": "",
    "dataset": "digits",
    "model": "mlp",
    "hidden": 32,
    "topology": "complete",
    "degree": 4,
    "redraw_every": 5,
    "rule": "mean",
    "byzantine_f": 0,
    "clip_norm": 10,
    "compression": "none",
    "num_peers": 4,
    "rounds": 5,
    "local_steps": 10,
    "lr": 0.1,
    "batch_size": 32,
    "round_timeout_s": 60,
    "min_vram_gb": 0,
    "reward_per_round": 10,
    "secure_aggregation": "on",
}


def test_the_form_accepts_secure_aggregation_where_it_works_and_the_plan_carries_it():
    from jobs.forms import JobForm

    for changes in ({}, {"topology": "expander", "degree": 3, "num_peers": 8}, {"dp_noise": 1.0, "dp_clip": 1.0}):
        form = JobForm({**FORM, **changes})
        assert form.is_valid(), (changes, form.errors)
        assert form.instance.config().secure_aggregation


@pytest.mark.parametrize(
    "changes",
    [
        {"rule": "median"},
        {"compression": "fp16"},
        {"topology": "ring"},  # 2 neighbours
        {"num_peers": 3},  # complete on 3: 2 neighbours
        {"topology": "star"},  # unequal weights, and leaves with 1 neighbour
        {"topology": "dynamic", "num_peers": 8},
    ],
)
def test_the_form_refuses_secure_aggregation_where_it_cannot_work(changes):
    from jobs.forms import JobForm

    form = JobForm({**FORM, **changes})
    assert not form.is_valid()
    assert "secure_aggregation" in form.errors or "compression" in form.errors, form.errors


def test_the_form_refuses_unequal_weights(monkeypatch):
    from jobs.forms import JobForm

    # No offered topology gives 3+ neighbours everywhere with unequal weights: stand one in.
    rows = [{0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}, {1: 0.4, 0: 0.2, 2: 0.2, 3: 0.2}]
    monkeypatch.setattr(
        topology, "build", lambda *a, **kw: rows + topology.metropolis_hastings(topology.complete(4))[2:]
    )
    form = JobForm(FORM)
    assert not form.is_valid()
    assert "equal mixing weights" in str(form.errors["secure_aggregation"])


@pytest.mark.django_db
def test_the_form_refuses_secure_aggregation_with_a_validator():
    from jobs.forms import JobForm
    from tests.factories import make_node, make_user

    user = make_user()
    node = make_node(user)
    form = JobForm({**FORM, "validator": node.pk}, user=user)
    assert not form.is_valid()
    assert "validator scores" in str(form.errors["secure_aggregation"])


class CatchUpRecorder(MemoryTransport):
    """Keeps the catch-up requests and every catch-up model sent."""

    def __init__(self):
        super().__init__()
        self.asked: list[int] = []
        self.answered: list[tuple[int, str]] = []

    async def send(self, channel, message):
        if message.get("type") == "model.request":
            self.asked.append(message["requester"])
        if message.get("type") == "weights.chunk" and message["seq"] == CATCH_UP_SEQ:
            self.answered.append((message["sender"], channel))
        await super().send(channel, message)


@pytest.mark.parametrize("protection", [{"secure_aggregation": True}, {"dp_noise": 0.5, "dp_clip": 5.0}])
def test_a_late_neighbour_gets_no_model_in_the_clear_to_catch_up_from(monkeypatch, protection):
    """A neighbour that joins late (or says it did) asks for a model to start from. In a job whose
    models leave only masked (SecAgg) or noised (client DP), nobody answers: mid-round, the model a
    peer holds is the one it just trained, in the clear. The late peer starts from the initial
    model and the job goes on."""
    transport = CatchUpRecorder()
    monkeypatch.setattr("tests.federation.MemoryTransport", lambda: transport)
    monkeypatch.setattr("peers.worker.CATCH_UP_WAIT_S", 1.0)
    reports, _, _ = asyncio.run(
        run_federation(4, 3, graph="complete", late={4: 2}, deadline_s=12, dp_epsilon=1e6, **protection)
    )
    assert 4 in transport.asked  # it asked ...
    assert transport.answered == []  # ... and got nothing in the clear
    assert {r["node_id"] for r in reports if r["round"] == 3} == {1, 2, 3, 4}
