"""Message vocabulary shared by the platform and the peers.

Every message is a plain dataclass; on the wire it is a dict of its fields plus a
``"type"`` string (the Django Channels convention), packed with msgpack. Decoding is
strict: unknown types, missing or unexpected fields and wrongly typed values raise
``ProtocolError``. Only the standard library and msgpack are imported here.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, NamedTuple

import msgpack

NAME_RE = re.compile(r"^[a-zA-Z0-9_\-.]{1,99}$")

# The reason a report gives for a neighbour whose weights never arrived; the platform cuts such
# links from dynamic topologies.
NO_WEIGHTS_BEFORE_DEADLINE = "no weights before the deadline"

# The centralized baselines on the star (peers.centralized, live in peers.star): a JobConfig
# with one of these rules has one aggregator (RoundPlan.aggregator) instead of gossip mixing.
# Their parameters: fedprox's "mu" (proximal weight, >= 0), fedadam's "server_lr" (> 0).
SERVER_RULES = ("fedavg", "fedprox", "fedadam")
SERVER_RULE_PARAMS = {"fedavg": (), "fedprox": ("mu",), "fedadam": ("server_lr",)}


class ProtocolError(ValueError):
    """A message that does not match the protocol."""


class ModelInfo(NamedTuple):
    """One model of the zoo, as the platform offers and checks it (the peers build it:
    ``peers.models.build_model``). Plain data, so the platform needs no torch to know the zoo."""

    label: str
    description: str
    inputs: str  # "features": any flat vector; "image": needs (channels, height, width) from the dataset
    batch_norm: bool = False  # BatchNorm has no per-sample gradient: no DP-SGD (Opacus) with such a model


# The model zoo by name (``JobConfig.model``). Every image model normalises with GroupNorm: BatchNorm's
# running statistics do not average across peers, and DP-SGD cannot train it.
MODEL_ZOO: dict[str, ModelInfo] = {
    "logreg": ModelInfo("Logistic regression", "one linear layer; any data", "features"),
    "mlp": ModelInfo("MLP", "one hidden layer of ReLU units; any data", "features"),
    "cnn": ModelInfo("Small CNN", "two 3x3 conv blocks and a linear head, about 30k parameters; images", "image"),
    "resnet": ModelInfo(
        "Small ResNet", "three stages of two residual blocks, 16 to 64 wide, about 0.2M parameters; images", "image"
    ),
    "resnet18": ModelInfo(
        "ResNet-18",
        "the 18-layer residual network (He et al.) with GroupNorm and a small-image stem, untrained: "
        "11M parameters, 45 MB a model on the wire; images",
        "image",
    ),
    "mobilenet_v3_small": ModelInfo(
        "MobileNetV3-Small",
        "the small mobile network (Howard et al.) with GroupNorm and a small-image stem, untrained: "
        "1.5M parameters; images",
        "image",
    ),
}


def since(date: str, default: Any) -> Any:
    """A field added on ``date``: it may be missing from messages of older peers and platforms
    (``from_message`` then uses ``default``)."""
    return field(default=default, metadata={"since": date})


@dataclass(frozen=True)
class JobConfig:
    """How every peer of a job trains and mixes: built once by the platform (``Job.config()``),
    carried in each round plan, and used as-is by the simulator, the benchmarks and the tests.
    Names (model, rule, schedule, compression) are checked by the peer before it trains, where
    the implementations live; numbers are checked here."""

    dataset: str = "digits"
    model: str = "mlp"
    hidden: int = 64
    lr: float = 0.1
    lr_schedule: str = "cosine"  # peers.training.LR_SCHEDULES
    local_steps: int = 20
    batch_size: int = 32
    seed: int = 0
    num_features: int = 64
    num_classes: int = 10
    rule: str = "mean"  # peers.rules
    rule_params: dict[str, float] = field(default_factory=dict)
    compression: str = "none"  # peers.wire.compression
    # Differential privacy (peers.privacy): off while dp_noise is 0.
    dp_clip: float = since("2026-11-26", 0.0)  # L2 bound of a round's update (or of a sample's gradient)
    dp_noise: float = since("2026-11-26", 0.0)  # noise multiplier: Gaussian noise of std dp_noise * dp_clip
    dp_epsilon: float = since("2026-11-26", 0.0)  # budget: a peer trains no round past it (0: none)
    dp_delta: float = since("2026-11-26", 1e-5)
    dp_level: str = since("2026-11-26", "client")  # "client": noise on each round's update; "sample": DP-SGD
    # Secure aggregation of gossip neighbourhoods (peers.secagg.gossip): neighbours send masked
    # models, a peer learns only their sum and mixes with equal weights (rule "mean"; or a
    # server rule, where the star's aggregator learns only the sum of the leaves' models).
    secure_aggregation: bool = since("2026-11-26", False)
    # With secure aggregation on the star: 0, the leaves mask for the centre; g >= 3, an aggregation
    # tree of groups of about g (peers.topology.tree_layout, peers.star_tree): members mask for
    # their group's aggregator, the aggregators their groups' sums for the root, the star's centre.
    secagg_tree_group: int = since("2026-11-26", 0)
    # With secure aggregation: the fraction of a recipient's senders that may vanish after their
    # masked models arrived (strictly fewer than it) with the sum still unmasked; a sender's
    # self-mask seed needs shares from all but that many of the others (gossip.share_threshold).
    # Lower: more holders must collude to unmask one sender, fewer dropouts tolerated. (0, 1/2].
    secagg_dropout: float = since("2026-11-26", 0.5)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ProtocolError(f"config.lr must be a positive finite number, got {self.lr}")
        for name in ("dp_clip", "dp_noise", "dp_epsilon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ProtocolError(f"config.{name} must be a finite number >= 0, got {value}")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise ProtocolError("config.dp_noise needs config.dp_clip > 0 (the noise is calibrated to it)")
        if self.dp_level not in ("client", "sample"):
            raise ProtocolError(f"config.dp_level must be 'client' or 'sample', got {self.dp_level!r}")
        if not 0 < self.dp_delta < 1:
            raise ProtocolError(f"config.dp_delta must be between 0 and 1, got {self.dp_delta}")
        if self.secure_aggregation and (self.rule not in ("mean", *SERVER_RULES) or self.compression != "none"):
            raise ProtocolError(
                f"config.secure_aggregation needs rule 'mean' or one of {list(SERVER_RULES)} (the star's "
                "aggregator sums the leaves' masked models) and compression 'none'"
            )
        if not (math.isfinite(self.secagg_dropout) and 0 < self.secagg_dropout <= 0.5):
            raise ProtocolError(f"config.secagg_dropout must be in (0, 1/2], got {self.secagg_dropout}")
        if self.rule in SERVER_RULES:
            self._check_server_rule()
        if self.secagg_tree_group and (
            self.secagg_tree_group < 3 or not self.secure_aggregation or self.rule not in SERVER_RULES
        ):
            raise ProtocolError(
                f"config.secagg_tree_group must be 0 or at least 3 (a group of 2 hands its other member's model "
                f"to the aggregator), with secure aggregation and one of {list(SERVER_RULES)}, "
                f"got {self.secagg_tree_group}"
            )
        for name, low in (
            ("hidden", 1),
            ("local_steps", 0),
            ("batch_size", 1),
            ("num_features", 1),
            ("num_classes", 2),
        ):
            if getattr(self, name) < low:
                raise ProtocolError(f"config.{name} must be at least {low}, got {getattr(self, name)}")

    def _check_server_rule(self) -> None:
        """A centralized baseline: only its own parameters, in range, and no DP (the aggregator's
        own model would reach the leaves un-noised inside the global one)."""
        allowed = SERVER_RULE_PARAMS[self.rule]
        if set(self.rule_params) - set(allowed):
            raise ProtocolError(f"config.rule {self.rule!r} takes only {list(allowed) or 'no'} parameters")
        mu, server_lr = self.rule_params.get("mu", 0.0), self.rule_params.get("server_lr", 1.0)
        if not (math.isfinite(mu) and mu >= 0):
            raise ProtocolError(f"config.rule_params.mu must be a finite number >= 0, got {mu}")
        if not (math.isfinite(server_lr) and server_lr > 0):
            raise ProtocolError(f"config.rule_params.server_lr must be a positive finite number, got {server_lr}")
        if self.dp_noise > 0:
            raise ProtocolError(f"config.rule {self.rule!r} runs without differential privacy")


@dataclass
class ConsentGrant:
    """The platform's word that this node consented to train on its data for this job until
    ``expires_at`` (nested inside a signed ``RoundPlan``, so the plan's signature covers it)."""

    job_id: int
    node_id: int
    dataset: str
    expires_at: float  # unix seconds


@dataclass
class Neighbour:
    """A peer to average with (nested inside ``RoundPlan``, not a message)."""

    node_id: int
    channel: str
    weight: float
    public_key: str  # hex of the raw 32-byte Ed25519 public key
    # With secure aggregation: this neighbour's own neighbours (node id as str -> Ed25519 public
    # key hex), the senders this peer masks against when it sends to it.
    neighbourhood: dict[str, str] = field(default_factory=dict, metadata={"since": "2026-11-26"})


@dataclass
class RoundPlan:
    TYPE = "round.plan"
    job_id: int
    round: int
    total_rounds: int
    node_id: int
    deadline: float  # unix seconds
    config: JobConfig
    neighbours: list[Neighbour]
    self_weight: float
    max_payload_bytes: int
    consent: ConsentGrant
    signature: bytes = b""  # Ed25519 by the platform's key over plan_bytes(plan)
    # The job's validator: each member sends it the model it sends its neighbours, to be scored.
    validators: list[Neighbour] = field(default_factory=list, metadata={"since": "2026-11-26"})
    # "train" (a member) or "validate" (the validator: score the neighbours' models, train nothing).
    role: str = since("2026-11-26", "train")
    # With a centralized rule (config.rule in SERVER_RULES): the node id of the round's aggregator,
    # the star's centre, which averages the members' models and sends back the global one (0: none).
    aggregator: int = since("2026-11-27", 0)

    def __post_init__(self) -> None:
        if self.role not in ("train", "validate"):
            raise ProtocolError(f"plan.role must be 'train' or 'validate', got {self.role!r}")
        if self.aggregator and (self.config.rule not in SERVER_RULES or self.role != "train"):
            raise ProtocolError("plan.aggregator comes with a centralized rule in a member's plan only")


@dataclass
class ScoreReport:
    """The validator's scores of a round, as the evidence they are computed from
    (peers.evidence.score_from_evidence): the platform recomputes them before it pays on them."""

    TYPE = "validator.scores"
    job_id: int
    round: int
    node_id: int  # the validator
    evidence: dict
    consensus_hash: str  # sha256 hex of the round's consensus model (pack_state)


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
    diverged: bool = False  # the peer's model or losses are not finite: the numbers above mean nothing
    epsilon: float = since("2026-11-26", 0.0)  # privacy spent so far in the job (0 without DP)
    # The job's privacy budget allows this peer no further round: it stops here (the platform ends
    # the job after this round when every peer says so, instead of failing it on empty rounds).
    budget_spent: bool = since("2026-11-26", False)
    # How far mixing moved the peer's trained model (L2 norm of mixed - local): the page's
    # consensus distance. And the dense (uncompressed) size of the weights it sent this round, over
    # all its sends: model_bytes / bytes_sent is the round's compression ratio.
    consensus_distance: float = since("2026-11-26", 0.0)
    model_bytes: int = since("2026-11-26", 0)


@dataclass
class ModelRequest:
    """A peer that joins late (or rejoins) asks a neighbour for its current model; the
    neighbour answers with a weights transfer of seq 0 to the requester's own channel."""

    TYPE = "model.request"
    job_id: int
    round: int
    requester: int
    signature: bytes  # Ed25519 over request_bytes(...) with the requester's node key


# One sealed share forwarded in a SecAggRecover: the sender's node id (u64), then its Shamir share
# of its self-mask seed sealed for the holder (AES-GCM nonce, ciphertext, tag): peers.secagg.gossip.
SECAGG_SHARE_RECORD_BYTES = 102
SECAGG_MAX_NEIGHBOURHOOD = 4096


@dataclass
class SecAggRecover:
    """With secure aggregation, every round: the recipient of masked models asks each sender
    whose model arrived (``alive``) to help unmask their sum: its Shamir shares of the ``alive``
    senders' self-mask seeds (``shares``: the ones they sealed for it, forwarded) and, when some
    senders sent nothing (``dropped``), the pairwise masks it added for them. Answered with a
    weights transfer of seq ``peers.worker.RECOVERY_SEQ`` (``peers.secagg.gossip.pack_answer``).
    ``alive`` and ``dropped`` must partition the recipient's neighbourhood; the signature covers
    both and the shares."""

    TYPE = "secagg.recover"
    job_id: int
    round: int
    requester: int
    dropped: list[int]
    signature: bytes  # Ed25519 over recover_bytes(...) with the requester's node key
    # The senders whose masked models arrived (absent from the pairwise-only requests of older
    # peers, which holders refuse), and the shares sealed for the addressee by those senders:
    # SECAGG_SHARE_RECORD_BYTES each.
    alive: list[int] = field(default_factory=list, metadata={"since": "2026-11-26"})
    shares: bytes = since("2026-11-26", b"")

    def __post_init__(self) -> None:
        named = [*self.alive, *self.dropped]
        if len(named) > SECAGG_MAX_NEIGHBOURHOOD or any(i < 0 for i in named):
            raise ProtocolError(f"alive and dropped name more than {SECAGG_MAX_NEIGHBOURHOOD} senders or a negative id")
        if len(set(self.alive)) != len(self.alive) or len(set(self.dropped)) != len(self.dropped):
            raise ProtocolError("alive and dropped each name a sender once")
        if len(self.shares) % SECAGG_SHARE_RECORD_BYTES or len(self.shares) // SECAGG_SHARE_RECORD_BYTES > len(
            self.alive
        ):
            raise ProtocolError(
                f"shares: {len(self.shares)} bytes, not whole {SECAGG_SHARE_RECORD_BYTES}-byte records, one per alive sender at most"
            )


@dataclass
class Heartbeat:
    TYPE = "peer.heartbeat"
    node_id: int
    ts: float
    status: str


@dataclass
class JobEvent:
    """Something that happened to a job. Sent to its peers (``event="ended"``: the job ended
    before its last planned round, cancelled or out of privacy budget) signed by the platform's
    key over ``event_bytes``; peers ignore unsigned ones (a neighbour may write to their inbox)."""

    TYPE = "job.event"
    job_id: int
    event: str
    detail: dict = field(default_factory=dict)
    signature: bytes = since("2026-11-26", b"")


MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (RoundPlan, WeightsChunk, PeerReport, ScoreReport, ModelRequest, SecAggRecover, Heartbeat, JobEvent)
}

# Field kinds, derived from the dataclasses' annotations (strings under ``from __future__ import
# annotations``) and checked by _coerce.
_KINDS = {
    "int": "int",
    "float": "float",
    "str": "str",
    "bytes": "bytes",
    "dict": "dict",
    "bool": "bool",
    "dict[str, float]": "dict",
    "dict[str, str]": "strings",
    "list[int]": "ints",
    "list[Neighbour]": "neighbours",
    "list[dict]": "rejected",
    "JobConfig": "config",
    "ConsentGrant": "consent",
}
_SCHEMAS: dict[type, dict[str, str]] = {
    cls: {f.name: _KINDS[str(f.type)] for f in fields(cls)}
    for cls in (JobConfig, ConsentGrant, Neighbour, *MESSAGE_TYPES.values())
}
# Fields added after peers and platforms were deployed (``since(...)``) may be absent from the
# wire, and take their default then: a report without ``epsilon``, a plan's config without the
# DP settings. Every other field must be there. A plan's signature covers the values either way.
_OPTIONAL: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls) if "since" in f.metadata) for cls in _SCHEMAS
}


def _coerce(where: str, kind: str, value: Any) -> Any:
    """Return ``value`` checked against ``kind`` (floats accept ints; bool is never a number)."""
    bad = ProtocolError(f"{where}: expected {kind}, got {type(value).__name__}")
    if kind == "int":
        if type(value) is not int:
            raise bad
        return value
    if kind == "bool":
        if type(value) is not bool:
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
    if kind == "strings":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ProtocolError(f"{where}: expected dict of str to str")
        return value
    if kind == "ints":
        if not isinstance(value, list) or not all(type(v) is int for v in value):
            raise ProtocolError(f"{where}: expected list of int")
        return value
    if kind == "config":
        return value if isinstance(value, JobConfig) else _build(JobConfig, value, where)
    if kind == "consent":
        return value if isinstance(value, ConsentGrant) else _build(ConsentGrant, value, where)
    if kind == "neighbours":
        if not isinstance(value, list):
            raise bad
        return [n if isinstance(n, Neighbour) else _build(Neighbour, n, f"{where}[{i}]") for i, n in enumerate(value)]
    if kind == "rejected":
        if not isinstance(value, list):
            raise bad
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or set(item) != {"sender", "reason"}:
                raise ProtocolError(f"{where}[{i}]: expected {{'sender', 'reason'}}")
            out.append(
                {
                    "sender": _coerce(f"{where}[{i}].sender", "int", item["sender"]),
                    "reason": _coerce(f"{where}[{i}].reason", "str", item["reason"]),
                }
            )
        return out
    raise AssertionError(kind)


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ProtocolError(f"{where}: expected a dict, got {type(d).__name__}")
    schema = _SCHEMAS[cls]
    missing = [k for k in schema if k not in d and k not in _OPTIONAL[cls]]
    if missing:
        raise ProtocolError(f"{where}: missing field(s) {', '.join(missing)}")
    extra = sorted(str(k) for k in d if k not in schema and k != "type")
    if extra:
        raise ProtocolError(f"{where}: unexpected field(s) {', '.join(extra)}")
    values = {k: _coerce(f"{where}.{k}", kind, d[k]) for k, kind in schema.items() if k in d}
    try:
        return cls(**values)
    except ProtocolError as exc:
        raise ProtocolError(f"{where}: {exc}") from None


def to_message(obj: Any) -> dict:
    """Dataclass -> wire dict (fields + ``"type"``); nested neighbours become dicts."""
    cls = type(obj)
    if cls not in MESSAGE_TYPES.values():
        raise ProtocolError(f"not a protocol message: {cls.__name__}")
    msg: dict[str, Any] = {"type": cls.TYPE}
    for f in fields(obj):
        msg[f.name] = _plain(getattr(obj, f.name))
    _build(cls, msg, cls.TYPE)  # refuse to emit anything from_message would refuse
    return msg


def _plain(value: Any) -> Any:
    """Nested dataclasses (a plan's config and neighbours) as dicts; anything else as it is."""
    if isinstance(value, Neighbour):  # its since-fields only when set: plans (and their signed bytes) stay as before
        return {
            f.name: _plain(getattr(value, f.name))
            for f in fields(value)
            if "since" not in f.metadata or getattr(value, f.name) != _default(f)
        }
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


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


def plan_bytes(plan: RoundPlan) -> bytes:
    """Canonical signed content of a round plan: every field but the signature, in order; a field
    added later (``since``) only when it differs from its default, so plans signed before it
    existed still verify."""
    values = []
    for f in fields(plan):
        value = getattr(plan, f.name)
        if f.name == "signature" or ("since" in f.metadata and value == _default(f)):
            continue
        values.append(_plain(value))
    return msgpack.packb(["round.plan", *values], use_bin_type=True)


def _default(f) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def key_change_bytes(node_id: int, new_public_key: str) -> bytes:
    """What a node signs with its current key to move to a new one."""
    return msgpack.packb(["key.change", node_id, new_public_key], use_bin_type=True)


def event_bytes(job_id: int, event: str) -> bytes:
    """Canonical signed content of a job event sent to peers."""
    return msgpack.packb(["job.event", job_id, event], use_bin_type=True)


def request_bytes(job_id: int, round: int, requester: int) -> bytes:
    """Canonical signed content of a model request."""
    return msgpack.packb(["model.request", job_id, round, requester], use_bin_type=True)


def recover_bytes(
    job_id: int, round: int, requester: int, dropped: list[int], *, alive: list[int], shares: bytes
) -> bytes:
    """Canonical signed content of a secure-aggregation unmask request: the alive and dropped
    senders and the forwarded shares with it."""
    return msgpack.packb(
        ["secagg.recover/2", job_id, round, requester, sorted(dropped), sorted(alive), shares], use_bin_type=True
    )


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
