"""Protocol vocabulary, strict decoding, channel names, node signing keys."""

import os
import stat
import subprocess
import sys

import msgpack
import pytest

from peers import protocol as p
from peers.wire.signing import NodeKey, verify
from tests.federation import sample_plan


def _plan():
    return sample_plan()


SAMPLES = [
    _plan(),
    p.WeightsChunk(
        job_id=3,
        round=2,
        sender=5,
        seq=1,
        index=0,
        count=2,
        size=10,
        sha256="00" * 32,
        signature=b"\x01" * 64,
        data=b"\x00\xff" * 3,
    ),
    p.PeerReport(
        job_id=3,
        round=2,
        node_id=5,
        train_loss=0.5,
        eval_loss=0.6,
        accuracy=0.9,
        samples=100,
        eval_samples=20,
        model_hash="cd" * 32,
        bytes_sent=10,
        bytes_received=20,
        duration_s=1.5,
        rejected=[{"sender": 6, "reason": "bad signature"}],
    ),
    p.Heartbeat(node_id=5, ts=1_700_000_000.0, status="training"),
    p.JobEvent(job_id=3, event="round.closed", detail={"round": 2, "nodes": [1, 2]}),
]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_round_trip(obj):
    msg = p.to_message(obj)
    assert msg["type"] == type(obj).TYPE
    assert p.from_message(msg) == obj
    assert p.decode(p.encode(obj)) == obj
    # also survives a raw msgpack trip, as through channels_redis
    assert p.from_message(msgpack.unpackb(msgpack.packb(msg))) == obj


def test_round_plan_neighbours_are_dicts_on_wire_and_dataclasses_after():
    msg = p.to_message(_plan())
    assert msg["neighbours"] == [{"node_id": 6, "channel": "dfl.node.6", "weight": 0.25, "public_key": "ab" * 32}]
    plan = p.from_message(msg)
    assert isinstance(plan.neighbours[0], p.Neighbour)


def test_ints_accepted_for_floats():
    msg = p.to_message(p.Heartbeat(node_id=1, ts=1.0, status="idle"))
    msg["ts"] = 5
    hb = p.from_message(msg)
    assert hb.ts == 5.0 and type(hb.ts) is float


def _err(msg, match):
    with pytest.raises(p.ProtocolError, match=match):
        p.from_message(msg)


def test_unknown_type_and_missing_type():
    _err({"type": "nope", "node_id": 1}, "unknown message type 'nope'")
    _err({"type": 7}, "unknown message type")
    _err({"node_id": 1}, "no 'type'")
    _err(["peer.heartbeat"], "must be a dict")


def test_missing_and_unexpected_field():
    msg = p.to_message(SAMPLES[3])
    del msg["status"]
    _err(msg, "missing field.*status")
    msg = p.to_message(SAMPLES[3])
    msg["extra"] = 1
    _err(msg, "unexpected field.*extra")


@pytest.mark.parametrize(
    "field,value",
    [
        ("node_id", True),  # bool is not an int
        ("node_id", 1.0),  # float is not an int
        ("node_id", "1"),
        ("ts", "now"),
        ("ts", False),
        ("status", b"idle"),  # bytes is not str
    ],
)
def test_wrong_field_type(field, value):
    msg = p.to_message(SAMPLES[3])
    msg[field] = value
    _err(msg, f"{field}: expected")


def test_wrong_nested_types():
    msg = p.to_message(_plan())
    msg["neighbours"][0]["weight"] = "heavy"
    _err(msg, r"neighbours\[0\]\.weight: expected float")
    msg = p.to_message(_plan())
    del msg["neighbours"][0]["public_key"]
    _err(msg, r"neighbours\[0\]: missing field")
    msg = p.to_message(SAMPLES[2])
    msg["rejected"] = [{"sender": "6", "reason": "x"}]
    _err(msg, r"rejected\[0\]\.sender: expected int")
    msg = p.to_message(SAMPLES[1])
    msg["data"] = "text"
    _err(msg, "data: expected bytes")
    msg = p.to_message(SAMPLES[4])
    msg["detail"] = [1]
    _err(msg, "detail: expected dict")


def test_to_message_refuses_invalid_objects():
    with pytest.raises(p.ProtocolError):
        p.to_message(p.Heartbeat(node_id="x", ts=1.0, status="idle"))
    with pytest.raises(p.ProtocolError):
        p.to_message(p.Neighbour(node_id=1, channel="c", weight=1.0, public_key=""))


def test_decode_garbage():
    with pytest.raises(p.ProtocolError, match="undecodable"):
        p.decode(b"\xc1\xc1\xc1")
    with pytest.raises(p.ProtocolError, match="must be a dict"):
        p.decode(msgpack.packb([1, 2]))


def test_header_bytes_excludes_index_and_data():
    a = SAMPLES[1]
    b = p.WeightsChunk(**{**vars(a), "index": 1, "data": b"other"})
    assert p.header_bytes(a) == p.header_bytes(b)
    assert msgpack.unpackb(p.header_bytes(a)) == [3, 2, 5, 1, 2, 10, "00" * 32]
    c = p.WeightsChunk(**{**vars(a), "seq": 2})
    assert p.header_bytes(a) != p.header_bytes(c)


def test_channel_names():
    assert p.node_channel(12) == "dfl.node.12"
    assert p.job_group(4) == "job.4"
    assert p.NAME_RE.match(p.node_channel(10**20))
    for bad in (-1, True, "1"):
        with pytest.raises(ValueError):
            p.node_channel(bad)
    with pytest.raises(ValueError):
        p.job_group(10**100)  # name would exceed 99 characters


def test_sign_and_verify():
    key, other = NodeKey.generate(), NodeKey.generate()
    sig = key.sign(b"hello")
    assert verify(key.public_key_hex, b"hello", sig)
    assert not verify(key.public_key_hex, b"hellO", sig)
    assert not verify(other.public_key_hex, b"hello", sig)
    assert not verify(key.public_key_hex, b"hello", sig[:-1] + bytes([sig[-1] ^ 1]))
    # malformed inputs never raise
    for pk, data, s in [
        ("zz", b"hello", sig),
        (key.public_key_hex[:-2], b"hello", sig),
        (key.public_key_hex, b"hello", b""),
        (None, b"hello", sig),
        (key.public_key_hex, "hello", sig),
        (key.public_key_hex, b"hello", "sig"),
    ]:
        assert verify(pk, data, s) is False


def test_load_or_create(tmp_path):
    path = tmp_path / "a" / "b" / "node.key"
    key = NodeKey.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = NodeKey.load_or_create(path)
    assert again.public_key_hex == key.public_key_hex
    assert verify(key.public_key_hex, b"x", again.sign(b"x"))

    raw_path = tmp_path / "raw.key"
    raw_path.write_bytes(bytes(range(32)))
    raw = NodeKey.load_or_create(raw_path)
    assert raw.public_key_hex == NodeKey.load_or_create(raw_path).public_key_hex
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"short")
    with pytest.raises(ValueError):
        NodeKey.load_or_create(bad)


def test_peers_never_import_django_or_channels():
    code = (
        "import sys, peers, peers.protocol, peers.wire.signing, peers.wire.format, peers.wire.exchange, peers.attacks, "
        "peers.transport, peers.transport.memory, peers.transport.redis\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'channels', 'channels_redis'))\n"
        "assert not bad, bad\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_job_config_travels_in_the_plan_and_is_checked():
    plan = _plan()
    wire = p.to_message(plan)
    assert wire["config"]["lr_schedule"] == "cosine"  # every field goes on the wire, defaults included
    assert p.decode(p.encode(plan)).config == plan.config
    for bad, message in [
        ({"lr": float("nan")}, "config.lr must be a positive finite number"),
        ({"lr": 0}, "config.lr must be a positive"),
        ({"batch_size": 0}, "config.batch_size"),
        ({"num_classes": 1}, "config.num_classes"),
        ({"hidden": True}, "expected int"),
    ]:
        with pytest.raises(p.ProtocolError, match=message):
            p.from_message({**wire, "config": {**wire["config"], **bad}})
    with pytest.raises(p.ProtocolError, match="missing field"):
        p.from_message({**wire, "config": {k: v for k, v in wire["config"].items() if k != "rule"}})
    with pytest.raises(p.ProtocolError, match="unexpected field"):
        p.from_message({**wire, "config": {**wire["config"], "evil": 1}})


def test_schemas_are_derived_from_the_dataclasses():
    from dataclasses import fields

    for cls in (p.JobConfig, p.Neighbour, *p.MESSAGE_TYPES.values()):
        assert list(p._SCHEMAS[cls]) == [f.name for f in fields(cls)]


def test_fields_added_later_may_be_missing_and_take_their_default():
    """A report from a peer that predates ``epsilon`` and a plan whose config predates the DP
    settings still parse; fields that were always there stay required."""
    report = p.to_message(next(m for m in SAMPLES if isinstance(m, p.PeerReport)))
    del report["epsilon"]
    assert p.from_message(report).epsilon == 0.0
    wire = p.to_message(_plan())
    old_config = {k: v for k, v in wire["config"].items() if not k.startswith("dp_")}
    assert p.from_message({**wire, "config": old_config}).config.dp_noise == 0.0
    with pytest.raises(p.ProtocolError, match="missing field"):
        p.from_message({k: v for k, v in report.items() if k != "accuracy"})
