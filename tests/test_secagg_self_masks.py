"""Self masks in live secure aggregation (peers.secagg.gossip, peers.worker): a recipient that
claims a live sender dropped must not learn that sender's model. Real Peers in memory."""

import asyncio
import math

import numpy as np
import pytest

from peers import protocol
from peers.data import load_local_data
from peers.protocol import ProtocolError, SecAggRecover, from_message, recover_bytes
from peers.secagg import decode, encode, gossip, shamir, tree
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey
from peers.worker import RECOVERY_SEQ, SECAGG_NO_RECOVERY, MaskedSend, Peer
from tests.federation import run_federation

VICTIM = 2  # node 1, the recipient, claims node 2 dropped after its masked model arrived


def flat(model):
    return np.concatenate([t.detach().double().reshape(-1).numpy() for t in model.values()])


def rel_err(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


class Eavesdropper(Peer):
    """Takes every masked model in, then asks the other senders to remove the victim's masks as
    if it had dropped, and keeps what that leaves of the victim's masked model."""

    stolen: dict[int, np.ndarray] = {}
    corrections: dict[int, int] = {}  # round -> how many senders removed the victim's masks

    async def _secure_neighbours(self, plan, state, local, received, rejected, give_up=None):
        if VICTIM in received:
            self.uploads = received
            self.stolen[plan.round] = await self.steal(plan, state, received[VICTIM])
        return []  # keeps its own model

    async def steal(self, plan, state, payload):
        """Claims the victim dropped to every other sender, forwarding their sealed shares as an
        honest request would: they remove the victim's pairwise masks (and unmask each other)."""
        length = sum(math.prod(shape) for shape, _ in state.spec.values())
        ids = {n.node_id for n in plan.neighbours}
        y, _ = gossip.unpack_upload(payload, length, ids - {VICTIM})
        others = sorted(ids - {VICTIM})
        sealed = {j: gossip.unpack_upload(self.uploads[j], length, ids - {j})[1] for j in others}
        await self._ask_to_unmask(plan, others, [VICTIM], sealed)
        threshold = gossip.share_threshold(len(ids))
        answers = await self._unmask_answers(plan, state, others, [VICTIM], length, threshold, None)
        self.corrections[plan.round] = len(answers)
        for _, correction in answers.values():
            y = y + correction  # what the others added for the victim, with the opposite sign to its own
        return decode(y)


@pytest.fixture
def released(monkeypatch):
    """Every model a peer releases, by (node, round): what its neighbours must never see."""
    seen: dict[tuple[int, int], np.ndarray] = {}
    release = Peer._release

    def recording(self, plan, state, local):
        out = release(self, plan, state, local)
        if out is not None:
            seen[(self.node_id, plan.round)] = flat(out)
        return out

    monkeypatch.setattr(Peer, "_release", recording)
    return seen


def with_eavesdropper(monkeypatch):
    def make(node_id, key, data, transport, reporter, *, attack="none", **kw):
        return (Eavesdropper if node_id == 1 else Peer)(node_id, key, data, transport, reporter, **kw)

    monkeypatch.setattr("tests.federation.make_peer", make)
    Eavesdropper.stolen, Eavesdropper.corrections = {}, {}


def test_a_recipient_that_claims_a_live_sender_dropped_does_not_learn_its_model(monkeypatch, released):
    with_eavesdropper(monkeypatch)
    asyncio.run(run_federation(4, 2, graph="complete", secure_aggregation=True, deadline_s=10))
    assert sorted(Eavesdropper.stolen) == [1, 2]
    assert Eavesdropper.corrections == {1: 3 - 1, 2: 3 - 1}  # both others took the claim and answered
    for r, stolen in Eavesdropper.stolen.items():
        assert rel_err(stolen, released[(VICTIM, r)]) > 1, r


# Drop after send, and too few helpers


class Silencing(MemoryTransport):
    """Loses node 1's round-1 unmask requests to the nodes in ``silent`` (they vanished after their
    masked models reached node 1)."""

    def __init__(self, silent):
        super().__init__()
        self.silent = {f"dfl.node.{i}" for i in silent}

    async def send(self, channel, message):
        request = message.get("type") == "secagg.recover"
        if request and (message["round"], message["requester"]) == (1, 1) and channel in self.silent:
            return
        await super().send(channel, message)


@pytest.fixture
def sums(monkeypatch):
    """Each peer's unmasked neighbour mean, by (node, round)."""
    seen: dict[tuple[int, int], np.ndarray] = {}
    secure = Peer._secure_neighbours

    async def recording(self, plan, state, local, received, rejected, give_up=None):
        out = await secure(self, plan, state, local, received, rejected, give_up)
        if out:
            seen[(self.node_id, plan.round)] = flat(out[0][1])
        return out

    monkeypatch.setattr(Peer, "_secure_neighbours", recording)
    return seen


def test_a_sender_that_vanishes_after_its_upload_arrived_is_unmasked_from_the_others_shares(
    monkeypatch, released, sums
):
    transport = Silencing({4})
    monkeypatch.setattr("tests.federation.MemoryTransport", lambda: transport)
    reports, _, _ = asyncio.run(run_federation(4, 1, graph="complete", secure_aggregation=True, deadline_s=10))
    assert all(not r["rejected"] for r in reports)
    want = sum(released[(j, 1)] for j in (2, 3, 4)) / 3
    assert rel_err(sums[(1, 1)], want) < 1e-6  # node 4's model is in, its seed rebuilt from 2's or 3's share


def test_too_few_helpers_leave_the_masks_on_and_the_recipient_keeps_its_model(monkeypatch, sums):
    # t = 1 share of 2 per seed: with nodes 3 and 4 silent, node 2's seed has no share.
    transport = Silencing({3, 4})
    monkeypatch.setattr("tests.federation.MemoryTransport", lambda: transport)
    reports, _, _ = asyncio.run(run_federation(4, 1, graph="complete", secure_aggregation=True, deadline_s=6))
    first = {r["node_id"]: r for r in reports}
    assert first[1]["rejected"] == [{"sender": j, "reason": SECAGG_NO_RECOVERY} for j in (2, 3, 4)]
    assert first[1]["consensus_distance"] == 0  # kept its own model
    assert (1, 1) not in sums and all((j, 1) in sums for j in (2, 3, 4))


# What a holder refuses to answer


def holder_and_request(forward=None, **changes):
    """Node 3, a holder of recipient 1's neighbourhood {2, 3, 4} (t = 1), with the masked model
    it sent 1 remembered, and a request from 1 that it answers unless ``changes`` spoil it;
    ``forward``: whose shares sealed for node 3 it carries (default: the alive senders')."""
    keys = {i: NodeKey.generate() for i in (1, 2, 3, 4)}
    private = {i: gossip.x25519_private(k.seed()) for i, k in keys.items()}
    public = {i: gossip.x25519_public(k.public_key_hex) for i, k in keys.items()}
    where = {"job": 7, "round": 2, "recipient": 1}
    # the shares nodes 2 and 4 sealed for node 3 with their uploads to node 1
    sealed = {
        j: gossip.seal_shares(
            bytes([j]) * 32, j, private[j], {k: public[k] for k in (2, 3, 4) if k != j}, threshold=1, **where
        )[3]
        for j in (2, 4)
    }
    transport = Recording()
    holder = Peer(3, keys[3], load_local_data("digits:0/4"), transport, None, platform_key=keys[1].public_key_hex)
    remembered = MaskedSend({2: public[2], 4: public[4]}, 5, keys[1].public_key_hex, "dfl.node.1", 1)
    holder._masked_sends[(7, 2, 1)] = remembered
    fields = {"alive": [2, 3, 4], "dropped": [], "key": keys[1], **changes}
    if forward is None:
        forward = [j for j in fields["alive"] if j in sealed]
    shares = gossip.pack_sealed({j: sealed[j] for j in forward})
    signer = fields.pop("key")
    signature = signer.sign(recover_bytes(7, 2, 1, fields["dropped"], alive=fields["alive"], shares=shares))
    request = SecAggRecover(job_id=7, round=2, requester=1, signature=signature, shares=shares, **fields)
    return holder, request, transport, private, public


class Recording(MemoryTransport):
    def __init__(self):
        super().__init__()
        self.sent = []

    async def send(self, channel, message):
        self.sent.append((channel, message))
        await super().send(channel, message)


def answer_of(transport):
    chunks = sorted((from_message(m) for _, m in transport.sent), key=lambda c: c.index)
    assert {c.seq for c in chunks} == {RECOVERY_SEQ}
    return b"".join(c.data for c in chunks)


def test_a_holder_answers_one_valid_request_with_its_shares_of_the_alive_senders_seeds():
    holder, request, transport, _, _ = holder_and_request()
    asyncio.run(holder._answer_recovery(request))
    shares, correction = gossip.unpack_answer(answer_of(transport), 5, {2, 4}, False)
    assert correction is None
    for j in (2, 4):  # t = 1: one share is the seed
        assert gossip.rebuild_seed({3: shares[j]}, 1) == bytes([j]) * 32
    transport.sent.clear()
    asyncio.run(holder._answer_recovery(request))  # once per (job, round, recipient)
    assert transport.sent == []


def test_a_holder_answers_a_dropout_with_its_correction_and_no_share_of_the_dropped():
    holder, request, transport, private, public = holder_and_request(alive=[2, 3], dropped=[4])
    asyncio.run(holder._answer_recovery(request))
    shares, correction = gossip.unpack_answer(answer_of(transport), 5, {2}, True)
    assert set(shares) == {2}
    want = gossip.correction(3, private[3], {4: public[4]}, job=7, round=2, recipient=1, length=5)
    assert np.array_equal(correction, want)
    # a request naming node 4 dropped that also forwards node 4's share: refused outright
    holder, request, transport, _, _ = holder_and_request(alive=[2, 3], dropped=[4], forward=[2, 4])
    asyncio.run(holder._answer_recovery(request))
    assert transport.sent == []


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"key": NodeKey.generate()}, "bad signature"),
        ({"alive": [2, 3, 4], "dropped": [4]}, "both alive and dropped"),
        ({"alive": [2, 3], "dropped": []}, "not the recipient's neighbourhood"),
        ({"alive": [2, 3, 4], "dropped": [5]}, "not the recipient's neighbourhood"),
        ({"alive": [2, 4], "dropped": [3]}, "not among the alive senders"),
        ({"alive": [3], "dropped": [2, 4]}, "too few alive"),
    ],
)
def test_a_holder_refuses_a_request_that_is_unsigned_or_does_not_partition_the_neighbourhood(changes, says, caplog):
    holder, request, transport, _, _ = holder_and_request(**changes)
    asyncio.run(holder._answer_recovery(request))
    assert transport.sent == []
    assert says in caplog.text
    assert not holder._masked_sends[(7, 2, 1)].answered


# The pieces: threshold, sealed shares, payloads, the request's fields


def test_the_threshold_leaves_unmasking_to_fewer_than_half_dropping():
    assert [gossip.share_threshold(n) for n in (2, 3, 4, 5, 6, 8)] == [1, 1, 2, 2, 3, 4]
    for n in range(2, 40):
        assert gossip.share_threshold(n) == tree.threshold(n, 0.5) - 1
    assert protocol.SECAGG_SHARE_RECORD_BYTES == gossip.RECORD_BYTES


def seal_for_3(**where):
    key2, key3 = NodeKey.generate(), NodeKey.generate()
    p2, p3 = (gossip.x25519_private(k.seed()) for k in (key2, key3))
    pub = {2: gossip.x25519_public(key2.public_key_hex), 3: gossip.x25519_public(key3.public_key_hex)}
    at = {"job": 1, "round": 5, "recipient": 9, **where}
    sealed = gossip.seal_shares(b"s" * 32, 2, p2, {3: pub[3], 4: pub[3]}, threshold=2, **at)
    return sealed, p3, pub


def test_a_sealed_share_opens_only_for_its_holder_sender_job_round_and_recipient():
    sealed, p3, pub = seal_for_3()
    at = {"job": 1, "round": 5, "recipient": 9, "sender": 2}
    value = gossip.open_share(sealed[3], 3, p3, pub[2], **at)
    assert 0 < value < shamir.PRIME
    for wrong in ({"job": 2}, {"round": 6}, {"recipient": 8}, {"sender": 4}):
        with pytest.raises(ValueError, match="does not open"):
            gossip.open_share(sealed[3], 3, p3, pub[2], **{**at, **wrong})
    with pytest.raises(ValueError, match="does not open"):  # another holder's share, same keys
        gossip.open_share(sealed[4], 3, p3, pub[2], **at)
    with pytest.raises(ValueError, match="does not open"):
        gossip.open_share(sealed[3][:-1] + bytes([sealed[3][-1] ^ 1]), 3, p3, pub[2], **at)


def test_garbled_or_oversized_uploads_and_answers_are_refused_with_a_reason():
    sealed, _, _ = seal_for_3()
    upload = gossip.pack_upload(np.arange(5, dtype=np.uint64), sealed)
    masked, got = gossip.unpack_upload(upload, 5, {3, 4})
    assert masked.tolist() == list(range(5)) and got == sealed
    bad = {
        "no header": upload[:3],
        "not a masked upload": b"XXXX" + upload[4:],
        "expected": upload + b"\0" * 8,  # one value too many
        "sealed shares for": gossip.pack_upload(np.zeros(5, dtype=np.uint64), {3: sealed[3], 5: sealed[4]}),
        "more than a neighbourhood": b"SMU1" + (10**6).to_bytes(4, "big") + upload[8:],
    }
    for says, payload in bad.items():
        with pytest.raises(ValueError, match=says):
            gossip.unpack_upload(payload, 5, {3, 4})
    with pytest.raises(ValueError, match="sealed shares, expected 3"):
        gossip.unpack_upload(upload, 5, {3, 4, 6})
    answer = gossip.pack_answer({2: 12345}, np.ones(5, dtype=np.uint64))
    assert gossip.unpack_answer(answer, 5, {2}, True)[0] == {2: 12345}
    for args, says in (
        ((5, {2}, False), "expected"),
        ((5, {7}, True), "not one asked for"),
        ((4, {2}, True), "expected"),
    ):
        with pytest.raises(ValueError, match=says):
            gossip.unpack_answer(answer, *args)
    with pytest.raises(ValueError, match="whole number"):
        gossip.unpack_sealed(b"\0" * (gossip.RECORD_BYTES + 1))


def test_an_unmask_request_names_each_sender_once_and_carries_whole_share_records():
    key = NodeKey.generate()
    base = {"type": "secagg.recover", "job_id": 1, "round": 2, "requester": 3, "signature": key.sign(b"x")}
    ok = from_message({**base, "alive": [4, 5], "dropped": [6], "shares": bytes(gossip.RECORD_BYTES)})
    assert ok.alive == [4, 5]
    old = from_message({**base, "dropped": [6]})  # a pairwise-only peer's request: parses, holders refuse it
    assert old.alive == [] and old.shares == b""
    for bad in (
        {"alive": [4, 4], "dropped": []},
        {"alive": [4], "dropped": [6, 6]},
        {"alive": [4], "dropped": [], "shares": bytes(gossip.RECORD_BYTES + 1)},
        {"alive": [4], "dropped": [], "shares": bytes(2 * gossip.RECORD_BYTES)},
        {"alive": [-1], "dropped": []},
    ):
        with pytest.raises(ProtocolError):
            from_message({**base, **bad})


def test_a_recipient_that_splits_the_holders_into_camps_learns_a_sum_of_two_never_one_model():
    # Node 1's senders 2, 3, 4 (t = 1). It tells holder 3 "4 alive, 2 dropped" and holder 4
    # "2 alive, 3 dropped": 3 gives its correction for 2 and its share of 4's seed, 4 gives its
    # correction for 3 and its share of 2's seed. What is left: x2 + m24 and x4 - m24.
    rng = np.random.default_rng(3)
    x = {j: rng.normal(0, 1, 2000) for j in (2, 3, 4)}
    keys = {j: NodeKey.generate() for j in (2, 3, 4)}
    private = {j: gossip.x25519_private(k.seed()) for j, k in keys.items()}
    public = {j: gossip.x25519_public(k.public_key_hex) for j, k in keys.items()}
    at = {"job": 1, "round": 1, "recipient": 1}
    seeds = {j: bytes([j]) * 32 for j in x}
    y = {
        j: gossip.mask(
            encode(x[j], summands=3), j, private[j], {k: public[k] for k in x if k != j}, self_seed=seeds[j], **at
        )
        for j in x
    }
    own = {j: gossip.self_mask(seeds[j], length=2000, **at) for j in x}  # rebuilt from one share each (t = 1)
    c3 = gossip.correction(3, private[3], {2: public[2]}, length=2000, **at)
    c4 = gossip.correction(4, private[4], {3: public[3]}, length=2000, **at)
    # 3's correction for 2 cancels the pair mask of 2 and 3 in y2 (opposite signs); 4's correction
    # for 3 is the pair mask 4 added in y4 itself. The pair mask of 2 and 4 stays in both.
    left2, left4 = y[2] - own[2] + c3, y[4] - own[4] - c4
    assert rel_err(decode(left2), x[2]) > 1 and rel_err(decode(left4), x[4]) > 1
    assert rel_err(decode(left2 + left4), x[2] + x[4]) < 1e-6


@pytest.mark.parametrize("fraction, recovers", [(0.5, True), (0.2, False)])
def test_the_jobs_dropout_fraction_decides_whether_a_vanished_holder_is_tolerated(monkeypatch, fraction, recovers):
    # Node 1's 5 senders all arrive, then node 4 vanishes before the unmask request. With 1/2, a
    # seed needs t = 2 shares of its 4 holders; with 1/5, t = 4: node 2's seed lacks node 4's.
    transport = Silencing({4})
    monkeypatch.setattr("tests.federation.MemoryTransport", lambda: transport)
    reports, _, _ = asyncio.run(
        run_federation(6, 1, graph="complete", secure_aggregation=True, secagg_dropout=fraction, deadline_s=6)
    )
    first = {r["node_id"]: r for r in reports}
    if recovers:
        assert first[1]["rejected"] == [] and first[1]["consensus_distance"] > 0
    else:
        assert first[1]["rejected"] == [{"sender": j, "reason": SECAGG_NO_RECOVERY} for j in (2, 3, 4, 5, 6)]
        assert first[1]["consensus_distance"] == 0  # kept its own model


def test_the_threshold_follows_the_jobs_dropout_fraction():
    assert gossip.share_threshold(6, 0.2) == 4 and gossip.share_threshold(6, 0.5) == 3
    for fraction in (0.2, 1 / 3, 0.5):
        for n in range(3, 30):
            assert gossip.share_threshold(n, fraction) == max(1, tree.threshold(n, fraction) - 1)
    for bad in (0, 0.51, float("nan")):
        with pytest.raises(ValueError):
            gossip.share_threshold(6, bad)
        with pytest.raises(ProtocolError):
            protocol.JobConfig(secure_aggregation=True, secagg_dropout=bad)
