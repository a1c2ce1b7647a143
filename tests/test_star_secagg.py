"""Secure aggregation on the live star (peers.star with peers.secagg.gossip): the aggregator
learns only the sum of the leaves' models, ends every round on the same global model as without
masks, recovers from a leaf that drops, and the job form allows it where it works. In memory,
with real Peers and plans built as the platform builds them."""

import asyncio
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from peers.plans import round_plans
from peers.protocol import NO_WEIGHTS_BEFORE_DEADLINE, SecAggRecover, WeightsChunk, from_message
from peers.secagg import encode, gossip
from peers.topology import build
from peers.transport.memory import MemoryTransport
from peers.wire.codec import WeightsDecoder
from peers.wire.format import WeightsRejected, describe, pack_state, sha256_hex
from peers.wire.signing import NodeKey
from peers.worker import RECOVERY_SEQ
from tests.federation import BASE_CONFIG, run_federation
from tests.test_secagg_gossip import FORM as GOSSIP_FORM

N, ROUNDS = 4, 3
HUB = 1  # position 0 of the in-memory platform's members: the star's centre


def by_round(reports, r):
    return {rep["node_id"]: rep for rep in reports if rep["round"] == r}


def flat(model):
    return torch.cat([t.detach().double().reshape(-1) for t in model.values()]).numpy()


class Recording(MemoryTransport):
    """Keeps every chunk a leaf sends the aggregator, and the recovery requests."""

    def __init__(self):
        super().__init__()
        self.to_hub: list[WeightsChunk] = []
        self.requests: list[SecAggRecover] = []

    async def send(self, channel, message):
        if message.get("type") == "weights.chunk" and channel == f"dfl.node.{HUB}" and message["sender"] != HUB:
            self.to_hub.append(from_message(message))
        if message.get("type") == "secagg.recover":
            self.requests.append(from_message(message))
        await super().send(channel, message)


def payloads(chunks, sender, round, seq=1):
    mine = sorted((c for c in chunks if (c.sender, c.round, c.seq) == (sender, round, seq)), key=lambda c: c.index)
    return b"".join(c.data for c in mine)


@pytest.fixture(scope="module")
def secure_and_plain():
    transport = Recording()
    mp = pytest.MonkeyPatch()
    mp.setattr("tests.federation.MemoryTransport", lambda: transport)
    try:
        secure = asyncio.run(run_federation(N, ROUNDS, graph="star", rule="fedavg", secure_aggregation=True))
    finally:
        mp.undo()
    plain = asyncio.run(run_federation(N, ROUNDS, graph="star", rule="fedavg"))
    return secure, plain, transport


def test_every_peer_ends_each_round_on_the_global_model_of_the_job_without_masks(secure_and_plain):
    (reports, peers, _), (_, plain_peers, _), _ = secure_and_plain
    for r in range(1, ROUNDS + 1):
        got = by_round(reports, r)
        assert set(got) == set(range(1, N + 1))
        assert len({rep["model_hash"] for rep in got.values()}) == 1, r
        assert all(rep["rejected"] == [] for rep in got.values())
    finals = [peers[i].final_model for i in range(1, N + 1)]
    assert len({sha256_hex(pack_state(m)) for m in finals}) == 1
    secure, plain = flat(peers[HUB].final_model), flat(plain_peers[HUB].final_model)
    assert np.linalg.norm(secure - plain) <= 1e-5 * np.linalg.norm(plain)
    assert min(rep["accuracy"] for rep in by_round(reports, ROUNDS).values()) > 0.85


def test_the_aggregator_receives_only_masked_models(secure_and_plain):
    (_, peers, _), _, transport = secure_and_plain
    spec = peers[HUB].final_model
    length = sum(math.prod(t.shape) for t in spec.values())
    # round uploads and unmask answers only: no catch-up, no plain model
    assert {c.seq for c in transport.to_hub} == {1, RECOVERY_SEQ}
    # every round the centre asks each leaf to unmask; nobody dropped: no pairwise mask removed
    assert sorted((q.round, q.alive, q.dropped) for q in transport.requests) == [
        (r, [2, 3, 4], []) for r in range(1, ROUNDS + 1) for _ in range(2, N + 1)
    ]
    uploads = []
    for r in range(1, ROUNDS + 1):
        for leaf in range(2, N + 1):
            payload = payloads(transport.to_hub, leaf, r)
            with pytest.raises(WeightsRejected):  # not a model in the wire format either
                WeightsDecoder(describe(spec), 1 << 30).decode(payload)
            masked, _ = gossip.unpack_upload(payload, length, set(range(2, N + 1)) - {leaf})
            uploads.append(masked)
            # an answer holds shares of the other leaves' seeds (t = 1 of 2 here) and no correction
            shares, correction = gossip.unpack_answer(
                payloads(transport.to_hub, leaf, r, RECOVERY_SEQ), length, set(range(2, N + 1)) - {leaf}, False
            )
            assert len(shares) == N - 2 and correction is None
    # every upload together looks uniform (one test over all nine, so it rarely fails by chance)
    assert stats.kstest(np.concatenate(uploads) / 2.0**64, "uniform").pvalue > 1e-3
    # whereas a leaf's model in the clear, as fixed point, looks nothing like uniform
    plain = encode(flat(peers[2].final_model), summands=N - 1)
    assert stats.kstest(plain / 2.0**64, "uniform").pvalue < 1e-6


def test_a_leaf_that_never_sends_is_left_out_and_the_others_finish():
    # Node 4 never starts: the aggregator asks leaves 2 and 3 to remove the masks they drew with 4.
    transport = Recording()
    mp = pytest.MonkeyPatch()
    mp.setattr("tests.federation.MemoryTransport", lambda: transport)
    try:
        reports, _, _ = asyncio.run(
            run_federation(N, ROUNDS, graph="star", rule="fedavg", secure_aggregation=True, late={4: 99}, deadline_s=12)
        )
    finally:
        mp.undo()
    for r in range(1, ROUNDS + 1):
        got = by_round(reports, r)
        assert set(got) == {1, 2, 3}
        assert len({rep["model_hash"] for rep in got.values()}) == 1, r
        assert got[HUB]["rejected"] == [{"sender": 4, "reason": NO_WEIGHTS_BEFORE_DEADLINE}]
        assert got[2]["rejected"] == [] and got[3]["rejected"] == []
        assert got[HUB]["consensus_distance"] > 0  # it averaged, it did not keep its own model
    assert sorted((q.round, q.requester, q.alive, q.dropped) for q in transport.requests) == [
        (r, HUB, [2, 3], [4]) for r in range(1, ROUNDS + 1) for _ in (2, 3)
    ]
    assert min(rep["accuracy"] for rep in by_round(reports, ROUNDS).values()) > 0.8


class Asking(Recording):
    """Also keeps the catch-up requests."""

    def __init__(self):
        super().__init__()
        self.asked: list[tuple[str, int]] = []

    async def send(self, channel, message):
        if message.get("type") == "model.request":
            self.asked.append((channel, message["requester"]))
        await super().send(channel, message)


def test_a_leaf_hands_a_late_aggregator_no_model_to_catch_up_from(monkeypatch):
    # The centre starts in round 2 and asks the leaves for their models: none answers (the model a
    # leaf holds may be the one it trained), so the centre starts from the job's initial model.
    transport = Asking()
    monkeypatch.setattr("tests.federation.MemoryTransport", lambda: transport)
    monkeypatch.setattr("peers.worker.CATCH_UP_WAIT_S", 1.0)
    reports, _, _ = asyncio.run(
        run_federation(N, ROUNDS, graph="star", rule="fedavg", secure_aggregation=True, late={HUB: 2}, deadline_s=12)
    )
    assert sorted(transport.asked) == [(f"dfl.node.{leaf}", HUB) for leaf in range(2, N + 1)]
    # masked uploads and unmask answers only, never a model in the clear
    assert {c.seq for c in transport.to_hub} == {1, RECOVERY_SEQ}
    for r in (2, 3):
        got = by_round(reports, r)
        assert set(got) == set(range(1, N + 1)) and len({rep["model_hash"] for rep in got.values()}) == 1, r


class Dropping(Recording):
    """Round 1: loses leaf 4's masked model on its way to the aggregator (it dropped after its
    masks were fixed). Round 2: loses the global model on its way to leaf 4 (it dropped after
    sending)."""

    async def send(self, channel, message):
        if message.get("type") == "weights.chunk":
            if (message["round"], message["sender"], message["seq"], channel) == (1, 4, 1, f"dfl.node.{HUB}"):
                return
            if (message["round"], message["sender"], message["seq"], channel) == (2, HUB, 4, "dfl.node.4"):
                return
        await super().send(channel, message)


def test_a_leaf_that_drops_before_or_after_sending_is_recovered_and_the_others_finish(monkeypatch):
    transport = Dropping()
    monkeypatch.setattr("tests.federation.MemoryTransport", lambda: transport)
    reports, _, _ = asyncio.run(
        run_federation(N, ROUNDS, graph="star", rule="fedavg", secure_aggregation=True, deadline_s=12)
    )
    first, second, last = by_round(reports, 1), by_round(reports, 2), by_round(reports, 3)
    assert first[HUB]["rejected"] == [{"sender": 4, "reason": NO_WEIGHTS_BEFORE_DEADLINE}]
    assert len({rep["model_hash"] for rep in first.values()}) == 1  # leaf 4 still got the global model
    assert [(q.round, q.requester, q.dropped) for q in transport.requests if q.dropped] == [(1, HUB, [4])] * 2
    # Round 2: the aggregator summed all three leaves; leaf 4 never got the global model back.
    assert second[HUB]["rejected"] == [] and second[4]["rejected"] == [
        {"sender": HUB, "reason": NO_WEIGHTS_BEFORE_DEADLINE}
    ]
    assert len({second[i]["model_hash"] for i in (1, 2, 3)}) == 1 and second[4]["model_hash"] != second[1]["model_hash"]
    assert len({rep["model_hash"] for rep in last.values()}) == 1
    assert all(rep["rejected"] == [] for rep in last.values())
    assert min(rep["accuracy"] for rep in last.values()) > 0.8


def test_fedadam_with_secure_aggregation_learns_as_without():
    params = {"server_lr": 0.1}
    reports, peers, _ = asyncio.run(
        run_federation(N, ROUNDS, graph="star", rule="fedadam", rule_params=params, secure_aggregation=True)
    )
    for r in range(1, ROUNDS + 1):
        assert len({rep["model_hash"] for rep in by_round(reports, r).values()}) == 1
    accuracies = {r: [rep["accuracy"] for rep in by_round(reports, r).values()] for r in (1, ROUNDS)}
    assert min(accuracies[ROUNDS]) > 0.8 and sum(accuracies[ROUNDS]) > sum(accuracies[1])
    _, plain_peers, _ = asyncio.run(run_federation(N, ROUNDS, graph="star", rule="fedadam", rule_params=params))
    secure, plain = flat(peers[HUB].final_model), flat(plain_peers[HUB].final_model)
    assert np.linalg.norm(secure - plain) <= 1e-4 * np.linalg.norm(plain)


def star_plans(secure):
    members = [(i, NodeKey.generate().public_key_hex) for i in (10, 11, 12, 13)]
    plans = round_plans(
        job_id=1,
        round=1,
        total_rounds=2,
        members=members,
        rows=build("star", 4),
        config=replace(BASE_CONFIG, rule="fedavg", secure_aggregation=secure),
        deadline=2e9,
        max_payload_bytes=1 << 20,
        sign=lambda b: b"s" * 64,
    )
    return members, plans


def test_a_leafs_plan_names_the_aggregators_neighbourhood_only_with_secure_aggregation():
    members, plans = star_plans(True)
    leaves = {str(i): key for i, key in members[1:]}
    for plan in plans[1:]:
        [hub] = plan.neighbours
        assert (hub.node_id, hub.neighbourhood) == (10, leaves)  # what _send_masked masks against
    assert [n.node_id for n in plans[0].neighbours] == [11, 12, 13]
    _, plain = star_plans(False)
    for plan in plain:
        assert all(n.neighbourhood == {} for n in plan.neighbours)


# The job form

STAR = {**GOSSIP_FORM, "topology": "star", "rule": "fedavg"}  # the gossip form's job, on the star


@pytest.mark.parametrize("rule", ["fedavg", "fedprox", "fedadam"])
def test_the_form_accepts_secure_aggregation_on_a_star_of_four(rule):
    from jobs.forms import JobForm

    form = JobForm({**STAR, "rule": rule})
    assert form.is_valid(), form.errors
    config = form.instance.config()
    assert config.secure_aggregation and config.rule == rule


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"num_peers": 3}, "at least 3 leaves"),
        ({"compression": "int8"}, "uncompressed masked models"),
    ],
)
def test_the_form_refuses_secure_aggregation_on_a_star_where_it_cannot_work(changes, says):
    from jobs.forms import JobForm

    form = JobForm({**STAR, **changes})
    assert not form.is_valid()
    assert says in str(form.errors["secure_aggregation"]), form.errors


def test_the_form_still_refuses_differential_privacy_with_a_server_rule():
    from jobs.forms import JobForm

    form = JobForm({**STAR, "dp_noise": 1.0, "dp_clip": 1.0})
    assert not form.is_valid()
    assert "without differential privacy" in str(form.errors["dp_noise"])


@pytest.mark.django_db
def test_the_form_refuses_secure_aggregation_on_a_star_with_a_validator():
    from jobs.forms import JobForm
    from tests.factories import make_node, make_user

    user = make_user()
    form = JobForm({**STAR, "validator": make_node(user).pk}, user=user)
    assert not form.is_valid()
    assert "validator scores" in str(form.errors["secure_aggregation"])
