"""Secure aggregation over an aggregation tree, live (peers.star_tree, the job option
``secagg_tree_group``): members mask for their group's aggregator, aggregators mask their groups'
sums for the root, every member ends each round on the same global model as the unmasked star's,
and dropped members and aggregators are handled. Real Peers over the in-memory transport, plans
built as the platform builds them; then the platform's form and plans."""

import asyncio
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from peers import star_tree
from peers.plans import links, round_plans
from peers.protocol import NO_WEIGHTS_BEFORE_DEADLINE, JobConfig, ProtocolError, WeightsChunk, from_message, to_message
from peers.secagg import encode
from peers.topology import build
from peers.transport.memory import MemoryTransport
from peers.wire.codec import WeightsDecoder
from peers.wire.format import WeightsRejected, describe, pack_state, sha256_hex
from peers.wire.signing import NodeKey
from tests.federation import BASE_CONFIG, run_federation
from tests.test_star_secagg import STAR, by_round, flat

N, G, ROUNDS = 9, 3, 3  # groups (1, 2, 3), (4, 5, 6), (7, 8, 9): root 1, aggregators 4 and 7
ROOT, AGGREGATORS = 1, (4, 7)


class Recording(MemoryTransport):
    """Keeps every weights chunk (with the inbox it went to) and every recovery request."""

    def __init__(self):
        super().__init__()
        self.chunks: list[tuple[str, WeightsChunk]] = []
        self.requests: list[tuple[str, tuple]] = []

    async def send(self, channel, message):
        if message.get("type") == "weights.chunk":
            self.chunks.append((channel, from_message(message)))
        if message.get("type") == "secagg.recover":
            q = from_message(message)
            self.requests.append((channel, (q.round, q.requester, q.dropped)))
        await super().send(channel, message)

    def into(self, node):
        return [c for channel, c in self.chunks if channel == f"dfl.node.{node}"]


def masked_vector(upload: bytes, length: int) -> np.ndarray:
    """The masked vector of an upload (its last ``length`` values; sealed self-mask shares before it)."""
    assert len(upload) > 8 * length  # the shares come first
    return np.frombuffer(upload[-8 * length :], dtype="<u8")


def payload(chunks, sender, round, seq=1):
    mine = sorted((c for c in chunks if (c.sender, c.round, c.seq) == (sender, round, seq)), key=lambda c: c.index)
    return b"".join(c.data for c in mine)


def spying(monkeypatch):
    """Keeps each member's trained model and each exchange's outcome, by (node, round)."""
    trained, outcome = {}, {}
    real = star_tree.exchange

    async def exchange(peer, plan, state, local):
        trained[peer.node_id, plan.round] = {k: v.clone() for k, v in local.items()}
        done = await real(peer, plan, state, local)
        outcome[peer.node_id, plan.round] = done
        return done

    monkeypatch.setattr(star_tree, "exchange", exchange)
    return trained, outcome


def run_with(transport, n, rounds, **config):
    mp = pytest.MonkeyPatch()
    mp.setattr("tests.federation.MemoryTransport", lambda: transport)
    try:
        return asyncio.run(run_federation(n, rounds, graph="star", secure_aggregation=True, **config))
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def tree_and_plain():
    transport = Recording()
    mp = pytest.MonkeyPatch()
    trained, outcome = spying(mp)
    try:
        tree = run_with(transport, N, ROUNDS, rule="fedavg", secagg_tree_group=G)
    finally:
        mp.undo()
    plain = asyncio.run(run_federation(N, ROUNDS, graph="star", rule="fedavg"))
    return tree, plain, transport, trained, outcome


def test_every_member_ends_each_round_on_the_unmasked_stars_global_model(tree_and_plain):
    (reports, peers, _), (_, plain_peers, _), _, trained, outcome = tree_and_plain
    for r in range(1, ROUNDS + 1):
        got = by_round(reports, r)
        assert set(got) == set(range(1, N + 1))
        assert len({rep["model_hash"] for rep in got.values()}) == 1, r
        assert all(rep["rejected"] == [] for rep in got.values())
        # the root's global model is the equal-weight mean of all nine trained models
        mean = np.mean([flat(trained[i, r]) for i in range(1, N + 1)], axis=0)
        assert np.linalg.norm(flat(outcome[ROOT, r].model) - mean) <= 1e-6 * np.linalg.norm(mean)
    assert len({sha256_hex(pack_state(peers[i].final_model)) for i in range(1, N + 1)}) == 1
    tree, plain = flat(peers[ROOT].final_model), flat(plain_peers[ROOT].final_model)
    assert np.linalg.norm(tree - plain) <= 1e-5 * np.linalg.norm(plain)
    assert min(rep["accuracy"] for rep in by_round(reports, ROUNDS).values()) > 0.8


def test_the_root_receives_masked_group_sums_that_look_uniform_and_decode_to_no_model(tree_and_plain):
    (_, peers, _), _, transport, trained, _ = tree_and_plain
    spec = peers[ROOT].final_model
    length = sum(math.prod(t.shape) for t in spec.values())
    into_root = transport.into(ROOT)
    assert {c.sender for c in into_root} == {2, 3, *AGGREGATORS}  # its group and the aggregators, nobody else
    assert {c.seq for c in into_root} == {1, 3}  # uploads and unmask answers: no catch-up
    assert transport.requests and all(dropped == [] for _, (_, _, dropped) in transport.requests)  # nobody dropped
    sums = []
    for r in range(1, ROUNDS + 1):
        for member in (2, 3):
            masked_vector(payload(into_root, member, r), length)
        for a in AGGREGATORS:
            got = payload(into_root, a, r)
            with pytest.raises(WeightsRejected):
                WeightsDecoder(describe(spec), 1 << 30).decode(got)
            sums.append(masked_vector(got, length + 1))  # the group's sum and its count
    assert stats.kstest(np.concatenate(sums) / 2.0**64, "uniform").pvalue > 1e-3
    # whereas a group's sum in the clear, as fixed point, is nothing like uniform
    group = sum(flat(trained[i, 1]) for i in (4, 5, 6))
    assert stats.kstest(encode(group, summands=N) / 2.0**64, "uniform").pvalue < 1e-6


def test_an_aggregator_never_receives_a_members_model_unmasked(tree_and_plain):
    (_, peers, _), _, transport, _, _ = tree_and_plain
    spec = peers[ROOT].final_model
    length = sum(math.prod(t.shape) for t in spec.values())
    for a, members in zip(AGGREGATORS, ((5, 6), (8, 9))):
        into = transport.into(a)
        # masked uploads, unmask answers; the global model
        assert {(c.sender, c.seq) for c in into} == {*((m, 1) for m in members), *((m, 3) for m in members), (ROOT, 4)}
        uploads = []
        for r in range(1, ROUNDS + 1):
            for m in members:
                got = payload(into, m, r)
                with pytest.raises(WeightsRejected):
                    WeightsDecoder(describe(spec), 1 << 30).decode(got)
                uploads.append(masked_vector(got, length))
        assert stats.kstest(np.concatenate(uploads) / 2.0**64, "uniform").pvalue > 1e-3
    # a member of an aggregator's group sends nothing to anyone else
    for m in (5, 6, 8, 9):
        assert {channel for channel, c in transport.chunks if c.sender == m} == {f"dfl.node.{3 * ((m - 1) // 3) + 1}"}


def test_fedadam_over_the_tree_learns_as_on_the_plain_star():
    params = {"server_lr": 0.1}
    reports, peers, _ = run_with(MemoryTransport(), N, 2, rule="fedadam", rule_params=params, secagg_tree_group=G)
    for r in (1, 2):
        assert len({rep["model_hash"] for rep in by_round(reports, r).values()}) == 1
    _, plain, _ = asyncio.run(run_federation(N, 2, graph="star", rule="fedadam", rule_params=params))
    tree, star = flat(peers[ROOT].final_model), flat(plain[ROOT].final_model)
    assert np.linalg.norm(tree - star) <= 1e-4 * np.linalg.norm(star)


def test_a_dropped_member_is_recovered_and_a_dropped_aggregator_takes_its_group_out(monkeypatch):
    # 16 peers in groups of 4: (1-4) root 1, (5-8), (9-12), (13-16). Member 8 and aggregator 13
    # never start: aggregator 5 asks 6 and 7 to remove 8's masks; the root asks 5 and 9 to remove
    # 13's; group 13's members sent their models to 13 only, so the round averages the 11 others,
    # and 14, 15, 16 still adopt the global model.
    transport = Recording()
    trained, outcome = spying(monkeypatch)
    reports, _, _ = run_with(transport, 16, 2, rule="fedavg", secagg_tree_group=4, late={8: 99, 13: 99})
    included = [i for i in range(1, 13) if i != 8]
    for r in (1, 2):
        got = by_round(reports, r)
        assert set(got) == set(range(1, 17)) - {8, 13}
        assert len({rep["model_hash"] for rep in got.values()}) == 1, r
        assert got[ROOT]["rejected"] == [{"sender": 13, "reason": NO_WEIGHTS_BEFORE_DEADLINE}]
        assert got[5]["rejected"] == [{"sender": 8, "reason": NO_WEIGHTS_BEFORE_DEADLINE}]
        assert all(rep["rejected"] == [] for i, rep in got.items() if i not in (ROOT, 5))
        mean = np.mean([flat(trained[i, r]) for i in included], axis=0)  # divided by 11: the count came through
        assert np.linalg.norm(flat(outcome[ROOT, r].model) - mean) <= 1e-6 * np.linalg.norm(mean)
    # Every round each recipient asks its surviving senders to unmask (self masks); 5 and the
    # root's upper level name the dropped 8 and 13.
    assert sorted(transport.requests) == sorted(
        (f"dfl.node.{to}", (r, requester, dropped))
        for r in (1, 2)
        for requester, dropped, survivors in (
            (5, [8], (6, 7)),
            (9, [], (10, 11, 12)),
            (ROOT, [], (2, 3, 4)),
            (ROOT, [13], (5, 9)),
        )
        for to in survivors
    )


# The plans


def tree_plans(ids, g=3, rule="fedavg"):
    members = [(i, NodeKey.generate().public_key_hex) for i in ids]
    config = replace(BASE_CONFIG, rule=rule, secure_aggregation=True, secagg_tree_group=g)
    rows = build("star", len(ids))
    plans = round_plans(
        job_id=1,
        round=1,
        total_rounds=2,
        members=members,
        rows=rows,
        config=config,
        deadline=2e9,
        max_payload_bytes=1 << 20,
        sign=lambda b: b"s" * 64,
    )
    return dict(members), {p.node_id: p for p in plans}, rows


def test_the_plans_link_each_member_to_its_aggregator_and_name_what_it_masks_for():
    keys, plans, rows = tree_plans(range(10, 19))  # groups (10, 11, 12), (13, 14, 15), (16, 17, 18)
    assert {p.aggregator for p in plans.values()} == {10}
    assert {n.node_id for n in plans[10].neighbours} == set(range(11, 19))
    assert all(n.neighbourhood == {} for n in plans[10].neighbours)  # the root masks for nobody
    # a member of the root's group masks for the root among its group
    assert [(n.node_id, n.neighbourhood) for n in plans[11].neighbours] == [(10, {"11": keys[11], "12": keys[12]})]
    # a member of another group: linked to the root (the global model) and masks for its aggregator
    assert [(n.node_id, n.neighbourhood) for n in plans[14].neighbours] == [
        (10, {}),
        (13, {"14": keys[14], "15": keys[15]}),
    ]
    # an aggregator masks its group's sum for the root among the aggregators
    assert [(n.node_id, n.neighbourhood) for n in plans[16].neighbours] == [
        (10, {"13": keys[13], "16": keys[16]}),
        (17, {}),
        (18, {}),
    ]
    # every plan's links are the ones the exchange grants (peers.plans.links)
    assert links(list(range(10, 19)), rows, 3) == {i: {n.node_id for n in p.neighbours} for i, p in plans.items()}
    roles = {i: star_tree.role(p, i) for i, p in plans.items()}
    assert roles[10].up is None and [n.node_id for n in roles[10].down] == [11, 12]
    assert [n.node_id for n in roles[10].uppers] == [13, 16] and roles[10].sizes == {10: 3, 13: 3, 16: 3}
    assert (roles[16].up.node_id, [n.node_id for n in roles[16].down]) == (10, [17, 18])
    assert (roles[14].up.node_id, roles[14].down) == (13, [])


def test_a_plan_from_a_platform_without_the_option_means_the_plain_star():
    _, plans, _ = tree_plans(range(9))
    message = to_message(plans[0])
    del message["config"]["secagg_tree_group"]
    assert from_message(message).config.secagg_tree_group == 0


def test_the_trees_root_must_be_the_stars_centre():
    with pytest.raises(ValueError, match="root"):
        tree_plans([12, 10, 11, 13, 14, 15, 16, 17, 18])  # position 0 (the centre) is not the lowest id


@pytest.mark.parametrize(
    "fields",
    [{"secagg_tree_group": 2}, {"secagg_tree_group": 3, "secure_aggregation": False}, {"rule": "mean"}],
)
def test_the_config_refuses_a_tree_it_cannot_run(fields):
    with pytest.raises(ProtocolError, match="secagg_tree_group"):
        JobConfig(**{"rule": "fedavg", "secure_aggregation": True, "secagg_tree_group": 3, **fields})


# The job form

TREE = {**STAR, "num_peers": 9, "secagg_tree_group": 3}


@pytest.mark.parametrize("rule", ["fedavg", "fedprox", "fedadam"])
def test_the_form_accepts_a_tree_of_three_groups_of_three(rule):
    from jobs.forms import JobForm

    form = JobForm({**TREE, "rule": rule})
    assert form.is_valid(), form.errors
    config = form.instance.config()
    assert (config.secagg_tree_group, config.secure_aggregation, config.rule) == (3, True, rule)
    assert JobForm({**TREE, "num_peers": 13, "secagg_tree_group": 4}).is_valid()  # groups of 4, 4 and 5


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"secagg_tree_group": 2}, "in a group of 2 the aggregator would learn"),
        ({"num_peers": 10, "secagg_tree_group": 4}, "make groups of 4, 4, 2"),
        ({"num_peers": 8}, "make groups of 3, 3, 2"),
        ({"num_peers": 7}, "make groups of 3, 4: the tree needs at least 3 groups"),
        ({"secure_aggregation": False}, "a layout of secure aggregation on the star"),
        ({"rule": "mean", "topology": "complete"}, "choose FedAvg, FedProx or FedAdam"),
    ],
)
def test_the_form_refuses_a_tree_that_would_leak_or_cannot_run(changes, says):
    from jobs.forms import JobForm

    form = JobForm({**TREE, **changes})
    assert not form.is_valid()
    assert says in str(form.errors["secagg_tree_group"]), form.errors


@pytest.mark.django_db
def test_the_platform_plans_the_tree_by_node_id_and_grants_its_links():
    from datetime import timedelta

    from django.utils import timezone

    from jobs.models import Job, Round
    from jobs.orchestration import round_neighbours, signed_plans
    from tests.factories import make_running_job, make_user

    owner = make_user()
    job, rnd, nodes = make_running_job(
        owner, cohort_size=9, topology="star", rule="fedavg", secure_aggregation=True, secagg_tree_group=3
    )
    # positions in reverse: the lowest id is the last position, and still the tree's root and the centre
    for position, node in enumerate(reversed(nodes)):
        job.cohort.filter(node=node).update(position=100 + position)  # positions are unique: two steps
    for position, node in enumerate(reversed(nodes)):
        job.cohort.filter(node=node).update(position=position)
    rnd.delete()
    rnd = Round.objects.create(job=job, number=1, deadline=timezone.now() + timedelta(minutes=5))
    assert Job.objects.get().secagg_tree_group == 3
    ids = sorted(n.id for n in nodes)
    plans = {p.node_id: p for p in signed_plans(rnd)}
    assert {p.aggregator for p in plans.values()} == {ids[0]}
    groups = [ids[0:3], ids[3:6], ids[6:9]]
    for group in groups:
        aggregator, *members = group
        for m in members:
            up = star_tree.role(plans[m], m).up
            assert up is not None and up.node_id == aggregator
            assert set(up.neighbourhood) == {str(i) for i in members}
    assert star_tree.role(plans[ids[3]], ids[3]).up.neighbourhood.keys() == {str(ids[3]), str(ids[6])}
    assert round_neighbours(rnd) == {i: {n.node_id for n in p.neighbours} for i, p in plans.items()}


@pytest.mark.django_db
def test_the_job_page_says_a_job_runs_an_aggregation_tree(client):
    from tests.factories import make_running_job, make_user

    owner = make_user()
    job, _, _ = make_running_job(
        owner, cohort_size=9, topology="star", rule="fedavg", secure_aggregation=True, secagg_tree_group=3
    )
    client.force_login(owner)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert (
        "on: models leave only masked; aggregation tree, groups of 3; unmasked while fewer than 50% of a peer" in page
    )


@pytest.mark.services
def test_the_tree_runs_over_the_peers_redis_transport(monkeypatch):
    """The production transport (real Redis, as the peers use it across machines): every member
    on one global model, the exact mean of the nine trained models."""
    import os
    import uuid

    import redis

    from peers.transport.redis import RedisChannelTransport

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"test-tree-{uuid.uuid4().hex[:8]}:"
    trained, outcome = spying(monkeypatch)
    monkeypatch.setattr(
        "tests.federation.MemoryTransport", lambda: RedisChannelTransport(url, prefix=prefix, capacity=200, block_s=1)
    )
    try:
        reports, _, _ = asyncio.run(
            run_federation(N, 1, graph="star", secure_aggregation=True, rule="fedavg", secagg_tree_group=G)
        )
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
    got = by_round(reports, 1)
    assert set(got) == set(range(1, N + 1)) and all(rep["rejected"] == [] for rep in got.values())
    assert len({rep["model_hash"] for rep in got.values()}) == 1
    mean = np.mean([flat(trained[i, 1]) for i in range(1, N + 1)], axis=0)
    assert np.linalg.norm(flat(outcome[ROOT, 1].model) - mean) <= 1e-6 * np.linalg.norm(mean)
