"""Message vocabulary shared by the platform and the peers.

Every message is a plain dataclass; on the wire it is a dict of its fields plus a
``"type"`` string (the Django Channels convention), packed with msgpack. Decoding is
strict: unknown types, missing or unexpected fields and wrongly typed values raise
``ProtocolError``. Only the standard library and msgpack are imported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack

NAME_RE = re.compile(r"^[a-zA-Z0-9_\-.]{1,99}$")

# The reason a report gives for a neighbour whose weights never arrived; the platform cuts such
# links from dynamic topologies.
NO_WEIGHTS_BEFORE_DEADLINE = "no weights before the deadline"


class ProtocolError(ValueError):
    """A message that does not match the protocol."""


@dataclass
class Neighbour:
    """A peer to average with (nested inside ``RoundPlan``, not a message)."""

    node_id: int
    channel: str
    weight: float
    public_key: str  # hex of the raw 32-byte Ed25519 public key


@dataclass
class RoundPlan:
    TYPE = "round.plan"
    job_id: int
    round: int
    total_rounds: int
    node_id: int
    deadline: float  # unix seconds
    config: dict
    neighbours: list[Neighbour]
    self_weight: float
    max_payload_bytes: int


@dataclass
class WeightsChunk:
    TYPE = "weights.chunk"
    job_id: int
    round: int
    sender: int
    seq: int
    index: int
    count: int
    size: int  # total payload bytes
    sha256: str  # hex digest of the whole payload, in the last chunk only ("" in the others)
    signature: bytes  # Ed25519 over header_bytes(chunk) (so the last chunk signs the digest)
    data: bytes


@dataclass
class PeerReport:
    TYPE = "peer.report"
    job_id: int
    round: int
    node_id: int
    train_loss: float
    eval_loss: float
    accuracy: float
    samples: int
    eval_samples: int
    model_hash: str
    bytes_sent: int
    bytes_received: int
    duration_s: float
    rejected: list[dict] = field(default_factory=list)  # [{"sender": int, "reason": str}]


@dataclass
class ModelRequest:
    """A peer that joins late (or rejoins) asks a neighbour for its current model; the
    neighbour answers with a weights transfer of seq 0 to the requester's own channel."""

    TYPE = "model.request"
    job_id: int
    round: int
    requester: int
    signature: bytes  # Ed25519 over request_bytes(...) with the requester's node key


@dataclass
class Heartbeat:
    TYPE = "peer.heartbeat"
    node_id: int
    ts: float
    status: str


@dataclass
class JobEvent:
    TYPE = "job.event"
    job_id: int
    event: str
    detail: dict = field(default_factory=dict)


MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls for cls in (RoundPlan, WeightsChunk, PeerReport, ModelRequest, Heartbeat, JobEvent)
}

# Field kinds per class, checked by _coerce. Annotations are strings under
# ``from __future__ import annotations``, so the schema is spelled out here.
_SCHEMAS: dict[type, dict[str, str]] = {
    Neighbour: {"node_id": "int", "channel": "str", "weight": "float", "public_key": "str"},
    RoundPlan: {
        "job_id": "int", "round": "int", "total_rounds": "int", "node_id": "int",
        "deadline": "float", "config": "dict", "neighbours": "neighbours",
        "self_weight": "float", "max_payload_bytes": "int",
    },
    WeightsChunk: {
        "job_id": "int", "round": "int", "sender": "int", "seq": "int", "index": "int",
        "count": "int", "size": "int", "sha256": "str", "signature": "bytes", "data": "bytes",
    },
    PeerReport: {
        "job_id": "int", "round": "int", "node_id": "int", "train_loss": "float",
        "eval_loss": "float", "accuracy": "float", "samples": "int", "eval_samples": "int",
        "model_hash": "str", "bytes_sent": "int", "bytes_received": "int",
        "duration_s": "float", "rejected": "rejected",
    },
    ModelRequest: {"job_id": "int", "round": "int", "requester": "int", "signature": "bytes"},
    Heartbeat: {"node_id": "int", "ts": "float", "status": "str"},
    JobEvent: {"job_id": "int", "event": "str", "detail": "dict"},
}


def _coerce(where: str, kind: str, value: Any) -> Any:
    """Return ``value`` checked against ``kind`` (floats accept ints; bool is never a number)."""
    bad = ProtocolError(f"{where}: expected {kind}, got {type(value).__name__}")
    if kind == "int":
        if type(value) is not int:
            raise bad
        return value
    if kind == "float":
        if type(value) not in (int, float):
            raise bad
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray)):
            raise bad
        return bytes(value)
    if kind == "dict":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ProtocolError(f"{where}: expected dict with str keys")
        return value
    if kind == "neighbours":
        if not isinstance(value, list):
            raise bad
        return [
            n if isinstance(n, Neighbour) else _build(Neighbour, n, f"{where}[{i}]")
            for i, n in enumerate(value)
        ]
    if kind == "rejected":
        if not isinstance(value, list):
            raise bad
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or set(item) != {"sender", "reason"}:
                raise ProtocolError(f"{where}[{i}]: expected {{'sender', 'reason'}}")
            out.append({
                "sender": _coerce(f"{where}[{i}].sender", "int", item["sender"]),
                "reason": _coerce(f"{where}[{i}].reason", "str", item["reason"]),
            })
        return out
    raise AssertionError(kind)


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ProtocolError(f"{where}: expected a dict, got {type(d).__name__}")
    schema = _SCHEMAS[cls]
    missing = [k for k in schema if k not in d]
    if missing:
        raise ProtocolError(f"{where}: missing field(s) {', '.join(missing)}")
    extra = sorted(str(k) for k in d if k not in schema and k != "type")
    if extra:
        raise ProtocolError(f"{where}: unexpected field(s) {', '.join(extra)}")
    return cls(**{k: _coerce(f"{where}.{k}", kind, d[k]) for k, kind in schema.items()})


def to_message(obj: Any) -> dict:
    """Dataclass -> wire dict (fields + ``"type"``); nested neighbours become dicts."""
    cls = type(obj)
    if cls not in MESSAGE_TYPES.values():
        raise ProtocolError(f"not a protocol message: {cls.__name__}")
    msg: dict[str, Any] = {"type": cls.TYPE}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name == "neighbours":
            value = [
                {g.name: getattr(n, g.name) for g in fields(n)} if isinstance(n, Neighbour) else n
                for n in value
            ]
        msg[f.name] = value
    _build(cls, msg, cls.TYPE)  # refuse to emit anything from_message would refuse
    return msg


def from_message(d: Any) -> Any:
    """Wire dict -> dataclass, dispatching on ``"type"``; raises ``ProtocolError``."""
    if not isinstance(d, dict):
        raise ProtocolError(f"message must be a dict, got {type(d).__name__}")
    if "type" not in d:
        raise ProtocolError("message has no 'type'")
    cls = MESSAGE_TYPES.get(d["type"]) if isinstance(d["type"], str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {d['type']!r}")
    return _build(cls, d, d["type"])


def encode(obj: Any) -> bytes:
    """Dataclass -> msgpack bytes."""
    return msgpack.packb(to_message(obj), use_bin_type=True)


def decode(b: bytes) -> Any:
    """msgpack bytes -> dataclass; raises ``ProtocolError`` on anything malformed."""
    try:
        d = msgpack.unpackb(b, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(f"undecodable message: {exc}") from None
    return from_message(d)


def header_bytes(chunk: WeightsChunk) -> bytes:
    """Canonical signed header of a weights transfer (index and data are covered by the sha256,
    which only the last chunk carries)."""
    return msgpack.packb(
        [chunk.job_id, chunk.round, chunk.sender, chunk.seq, chunk.count, chunk.size, chunk.sha256],
        use_bin_type=True,
    )


def request_bytes(job_id: int, round: int, requester: int) -> bytes:
    """Canonical signed content of a model request."""
    return msgpack.packb(["model.request", job_id, round, requester], use_bin_type=True)


def _name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"invalid channel/group name {name!r}")
    return name


def node_channel(node_id: int) -> str:
    """Channel a node receives on: ``dfl.node.<id>``."""
    if type(node_id) is not int or node_id < 0:
        raise ValueError(f"invalid node id {node_id!r}")
    return _name(f"dfl.node.{node_id}")


def job_group(job_id: int) -> str:
    """Channels group of everyone following a job: ``job.<id>``."""
    if type(job_id) is not int or job_id < 0:
        raise ValueError(f"invalid job id {job_id!r}")
    return _name(f"job.{job_id}")
