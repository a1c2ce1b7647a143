"""A whole federation in one process, without the platform: `python -m peers simulate`.

Decentralized runs (every topology with a gossip rule) use the real :class:`peers.worker.Peer`
over :class:`peers.transport.memory.MemoryTransport`, driven by
:class:`peers.federation.InMemoryPlatform` (the platform's part: plans built as
``platform/jobs/orchestration.py`` builds them, position i is node i + 1, reports collected in
memory).

``--rule fedavg`` (with ``--topology star``) is centralized FedAvg, run as a separate, plain loop
(:func:`run_fedavg`; leaves upload, the aggregator at position 0 averages sample-weighted, the
average is sent back), quicker than the live two hops of :mod:`peers.star`, which a platform
job runs (and which average with the plan's equal weights instead). Each peer trains the same number of local steps on the same shard with
the same trainer as in the decentralized runs; the bytes counted are what the two hops would
carry. Gossip over the star with Metropolis-Hastings weights (``--topology star --rule mean``)
is a different, much slower thing, and also available.

Accuracy is reported two ways per round: ``accuracy``, the mean over peers of each peer's model
on its own eval split (what the peers report to the platform), and ``global_accuracy``, the
mean over peers of each peer's model on the union of all peers' eval splits (the fair figure to
compare with centralized training under a label-skewed partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from peers import topology
from peers.centralized import SERVER_RULES, FedAdam, proximal
from peers.data import LocalData, load_local_data
from peers.federation import InMemoryPlatform, RoundResult
from peers.models import build_model
from peers.protocol import JobConfig
from peers.secagg.fedavg import secure_weighted_mean, tree_weighted_mean
from peers.training import LocalTrainer, check_lr_schedule, mix, scheduled_lr, select_device
from peers.transport.memory import MemoryTransport
from peers.wire.format import pack_state
from peers.wire.signing import NodeKey

FEDAVG = "fedavg"


@dataclass
class SimConfig:
    peers: int = 16
    topology: str = "ring"
    rounds: int = 30
    partition: str = "dirichlet:0.5"
    local_steps: int = 20
    lr: float = 0.1
    lr_schedule: str = "cosine"  # or "constant" (peers.training.scheduled_lr); cosine as new platform jobs
    model: str = "mlp"
    hidden: int = 64
    batch_size: int = 32
    rule: str = "mean"  # any of peers.rules (mean, median, trimmed_mean, krum, ...) or "fedavg"
    rule_params: dict = field(default_factory=dict)  # e.g. {"f": 1} for krum
    seed: int = 0
    device: str = "auto"
    degree: int | None = None  # random_regular / dynamic
    every_k: int = 5  # dynamic: redraw every k rounds
    dynamic_base: str = "random_regular"
    round_timeout_s: float = 120.0
    secagg: bool = False  # star rules only: the aggregator sums masked uploads (peers.secagg.fedavg)
    # with secagg: 0 = the star; g >= 2 = an aggregation tree of groups of g (peers.secagg.tree)
    secagg_tree_group: int = 0
    attack: str = "none"  # what the attackers do (peers.attacks.ATTACK_MODES); gossip rules only
    dp_clip: float = 0.0  # client-level DP (peers.privacy), gossip rules: the update's L2 bound
    dp_noise: float = 0.0  # noise multiplier (0: DP off)
    dp_epsilon: float = 0.0  # budget: the run stops at the last round within it (0: none)
    dp_level: str = "client"  # or "sample": DP-SGD (peers.privacy.dp_sgd)
    attackers: int = 0  # how many peers attack, spread evenly over the node ids

    def attacker_ids(self) -> set[int]:
        """Node ids (1..peers) of the attackers: evenly spread, so no neighbourhood gets them all."""
        return {1 + (k * self.peers) // self.attackers for k in range(self.attackers)} if self.attackers else set()

    def job_config(self, data: LocalData) -> JobConfig:
        """What the platform's Job.config() would send for this run."""
        return JobConfig(
            model=self.model,
            hidden=self.hidden,
            lr=self.lr,
            lr_schedule=self.lr_schedule,
            local_steps=self.local_steps,
            batch_size=self.batch_size,
            seed=self.seed,
            num_features=data.num_features,
            num_classes=data.num_classes,
            rule=self.rule,
            rule_params=dict(self.rule_params),
            dp_clip=self.dp_clip,
            dp_noise=self.dp_noise,
            dp_epsilon=self.dp_epsilon,
            dp_level=self.dp_level,
        )

    def topology_params(self, round: int, cut_links=frozenset()) -> dict:
        if self.topology in ("random_regular", "expander"):
            return {"d": self.degree, "seed": self.seed}
        if self.topology == "dynamic":
            return {
                "base": self.dynamic_base,
                "round": round,
                "every_k": self.every_k,
                "seed": self.seed,
                "cut_links": cut_links,
                "d": self.degree,
            }
        return {}


@dataclass
class RoundStats:
    round: int
    accuracy: float  # mean over peers, own eval split
    min_accuracy: float
    max_accuracy: float
    global_accuracy: float  # mean over peers, union of eval splits
    train_loss: float
    bytes_sent: int
    seconds: float
    epsilon: float = 0.0  # client-level DP: the most any peer has spent so far


@dataclass
class SimResult:
    config: SimConfig
    device: str
    spectral_gap: float
    rounds: list[RoundStats] = field(default_factory=list)
    seconds: float = 0.0
    final_states: list[dict] = field(default_factory=list, repr=False)  # each peer's last model

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].accuracy if self.rounds else float("nan")

    @property
    def final_global_accuracy(self) -> float:
        return self.rounds[-1].global_accuracy if self.rounds else float("nan")

    def summary(self) -> dict:
        cfg = self.config
        return {
            "peers": cfg.peers,
            "topology": cfg.topology,
            "rule": cfg.rule,
            "partition": cfg.partition,
            "model": cfg.model,
            "local_steps": cfg.local_steps,
            "lr": cfg.lr,
            "seed": cfg.seed,
            "rounds": len(self.rounds),
            "accuracy": [round(s.accuracy, 4) for s in self.rounds],
            "global_accuracy": [round(s.global_accuracy, 4) for s in self.rounds],
            "final_accuracy": round(self.final_accuracy, 4),
            "final_global_accuracy": round(self.final_global_accuracy, 4),
            "spectral_gap": round(self.spectral_gap, 6),
            "bytes_sent": sum(s.bytes_sent for s in self.rounds),
            "epsilon": [round(s.epsilon, 4) for s in self.rounds] if cfg.dp_noise else None,
            "seconds": round(self.seconds, 3),
            "device": self.device,
        }


# -- data and evaluation ------------------------------------------------------------------------
def load_shards(cfg: SimConfig) -> list[LocalData]:
    """Peer i's data is exactly what `python -m peers join --data digits:i/N:PARTITION` loads."""
    return [load_local_data(f"digits:{i}/{cfg.peers}:{cfg.partition}", seed=cfg.seed) for i in range(cfg.peers)]


def union_eval(datas: list[LocalData]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([d.X_eval for d in datas]), np.concatenate([d.y_eval for d in datas])


def union_train(datas: list[LocalData]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([d.X_train for d in datas]), np.concatenate([d.y_train for d in datas])


class Evaluator:
    """Accuracy of a model on a fixed eval set held on the device."""

    def __init__(self, X: np.ndarray, y: np.ndarray, device):
        self.X = torch.as_tensor(X, dtype=torch.float32, device=device)
        self.y = torch.as_tensor(y, dtype=torch.int64, device=device)

    @torch.no_grad()
    def accuracy(self, model: torch.nn.Module) -> float:
        was_training = model.training
        model.eval()
        correct = (model(self.X).float().argmax(dim=1) == self.y).sum().item()
        model.train(was_training)
        return correct / max(1, len(self.y))


def _stats(r: int, accs, globals_, losses, sent: int, seconds: float, epsilon: float = 0.0) -> RoundStats:
    return RoundStats(
        r,
        float(np.mean(accs)),
        float(np.min(accs)),
        float(np.max(accs)),
        float(np.mean(globals_)),
        float(np.nanmean(losses)) if losses else float("nan"),
        int(sent),
        seconds,
        epsilon,
    )


def _check(cfg: SimConfig, data: LocalData) -> None:
    """Refuse up front what would make a peer drop out of the job (it would never report)."""
    if cfg.rule in SERVER_RULES:
        if cfg.topology != "star":
            raise ValueError(f"rule {cfg.rule!r} is centralized: use it with --topology star")
        allowed = {"fedavg": set(), "fedprox": {"mu"}, "fedadam": {"server_lr"}}[cfg.rule]
        if set(cfg.rule_params) - allowed:
            raise ValueError(f"rule {cfg.rule!r} takes only {sorted(allowed) or 'no'} parameters")
    else:
        from peers.rules import get_rule

        get_rule(cfg.rule)
    from peers.attacks import ATTACK_MODES

    if cfg.attack not in ATTACK_MODES:
        raise ValueError(f"unknown attack {cfg.attack!r}; expected one of {', '.join(ATTACK_MODES)}")
    if not 0 <= cfg.attackers < cfg.peers or (cfg.attackers > 0) == (cfg.attack == "none"):
        raise ValueError("--attackers must be between 1 and peers - 1 with an --attack, and 0 without")
    if cfg.attackers and cfg.rule in SERVER_RULES:
        raise ValueError("attackers run with the gossip rules (the star's FedAvg trains in process)")
    if cfg.dp_noise and cfg.rule in SERVER_RULES:
        raise ValueError("client-level DP runs with the gossip rules (the star's FedAvg trains in process)")
    if cfg.secagg and cfg.rule not in SERVER_RULES:
        # Gossip neighbourhoods would need equal mixing weights and >= 3 neighbours: not built yet.
        raise ValueError("--secagg works with the star's rules (fedavg, fedprox, fedadam) only")
    if cfg.secagg_tree_group and not cfg.secagg:
        raise ValueError("--secagg-tree needs --secagg")
    if cfg.secagg_tree_group and (cfg.secagg_tree_group < 2 or cfg.peers < 2):
        raise ValueError("--secagg-tree needs a group size >= 2 and at least 2 peers")
    check_lr_schedule(cfg.lr_schedule)
    build_model(
        cfg.model, data.num_features, data.num_classes, hidden=cfg.hidden, seed=cfg.seed, input_shape=data.input_shape
    )


# -- decentralized: real peers over the in-memory transport --------------------------------------
async def _run_gossip(
    cfg: SimConfig, datas, evaluator: Evaluator, device, on_round: Callable[[RoundStats], None] | None
) -> tuple[list[RoundStats], float, list[dict]]:
    from peers.attacks import make_peer
    from peers.spectral import spectral_gap

    n = cfg.peers
    attackers = cfg.attacker_ids()
    platform = InMemoryPlatform(cfg.job_config(datas[0]), cfg.rounds, round_timeout_s=cfg.round_timeout_s)
    transport = MemoryTransport(capacity=max(100, 4 * n))
    peers = {
        i + 1: make_peer(
            i + 1,
            NodeKey.generate(),
            datas[i],
            transport,
            platform,
            platform_key=platform.public_key_hex,
            device=device,
            attack=cfg.attack if i + 1 in attackers else "none",
        )
        for i in range(n)
    }
    global_acc: dict[int, list[float]] = {}
    final_states: dict[int, dict] = {}

    def score(message: dict) -> None:
        """Each peer's freshly mixed model on the union eval set (it still holds the job's state)."""
        state = peers[message["node_id"]].jobs.get(message["job_id"])
        if state is not None and message["node_id"] not in attackers:  # the honest peers' figures
            global_acc.setdefault(message["round"], []).append(evaluator.accuracy(state.trainer.model))
            if message["round"] == cfg.rounds:
                final_states[message["node_id"]] = state.trainer.state()

    def stats_of(result: RoundResult) -> RoundStats:
        got = [rep for rep in result.reports if rep["node_id"] not in attackers]
        return _stats(
            result.round,
            [rep["accuracy"] for rep in got],
            global_acc.get(result.round, [float("nan")]),
            [rep["train_loss"] for rep in got],
            sum(rep["bytes_sent"] for rep in got),
            result.seconds,
            max((rep.get("epsilon", 0.0) for rep in got), default=0.0),
        )

    def graph(r: int, cut: frozenset) -> list[dict[int, float]]:
        # Links whose weights missed the deadline: the dynamic topology rewires around them.
        return topology.build(cfg.topology, n, **cfg.topology_params(r, cut))

    platform.on_report = score
    try:
        results = await platform.run(
            peers, transport, graph, on_round=(lambda result: on_round(stats_of(result))) if on_round else None
        )
    finally:
        await transport.close()
    finals = [final_states[node] for node in sorted(final_states)]
    return [stats_of(result) for result in results], float(spectral_gap(graph(1, frozenset()))), finals


# -- centralized FedAvg over the star -----------------------------------------------------------
def run_fedavg(
    cfg: SimConfig, datas, evaluator: Evaluator, device, on_round: Callable[[RoundStats], None] | None = None
) -> tuple[list[RoundStats], list[dict]]:
    """FedAvg: every round each peer starts from the global model, trains `local_steps` SGD steps
    on its shard, uploads to the aggregator (position 0, itself a peer with data), which averages
    the models weighted by training samples and sends the average back to every leaf.
    `fedprox` adds the proximal term (rule_params mu, default 0.01) to local training;
    `fedadam` steps the global model with server-side Adam (server_lr, default 0.01)."""
    mu = float(cfg.rule_params.get("mu", 0.01)) if cfg.rule == "fedprox" else 0.0
    server = FedAdam(lr=float(cfg.rule_params.get("server_lr", 0.01))) if cfg.rule == "fedadam" else None
    trainers = []
    for i, data in enumerate(datas):
        model = build_model(
            cfg.model,
            data.num_features,
            data.num_classes,
            hidden=cfg.hidden,
            seed=cfg.seed,
            input_shape=data.input_shape,
        )
        trainers.append(
            LocalTrainer(model, data, lr=cfg.lr, batch_size=cfg.batch_size, device=device, seed=cfg.seed + i + 1)
        )  # as the worker seeds node i + 1
    global_state = trainers[0].state()
    payload = len(pack_state(global_state))
    leaves = len(trainers) - 1
    stats = []
    for r in range(1, cfg.rounds + 1):
        started = time.perf_counter()
        uploads, losses = [], []
        lr = scheduled_lr(cfg.lr, cfg.lr_schedule, r, cfg.rounds)
        for t in trainers:
            t.set_lr(lr)
            t.load_state(global_state)
            with proximal(t.model, global_state, mu) if mu else contextlib.nullcontext():
                losses.append(t.train(cfg.local_steps).loss)
            uploads.append((float(t.data.samples), t.state()))
        # at the aggregator: sample-weighted mean (of masked uploads, with SecAgg)
        if cfg.secagg_tree_group:  # the weights are the shard sizes the simulator knows, not reported ones
            average = tree_weighted_mean(uploads, r, cfg.secagg_tree_group)
        elif cfg.secagg:
            average = secure_weighted_mean(uploads, r)
        else:
            average = mix(uploads)
        global_state = server.step(global_state, average) if server else average
        accs = []
        for t in trainers:
            t.load_state(global_state)
            accs.append(t.evaluate().accuracy)
        glob = evaluator.accuracy(trainers[0].model)  # every peer now holds the same model
        stat = _stats(r, accs, [glob], losses, 2 * leaves * payload, time.perf_counter() - started)
        stats.append(stat)
        if on_round:
            on_round(stat)
    return stats, [global_state] * len(trainers)


# -- entry points -------------------------------------------------------------------------------
def prepare(cfg: SimConfig, datas: list[LocalData] | None = None) -> list[LocalData]:
    """Check `cfg` (ValueError on anything a peer would refuse) and load the peers' shards."""
    if cfg.peers < 1 or cfg.rounds < 1 or cfg.local_steps < 1:
        raise ValueError("need peers >= 1, rounds >= 1 and local_steps >= 1")
    if not isinstance(cfg.rule_params, dict):
        raise ValueError(f"rule parameters must be a JSON object, got {cfg.rule_params!r}")
    topology.graph(cfg.topology, cfg.peers, **cfg.topology_params(1))  # fail early on a bad topology
    select_device(cfg.device)
    datas = datas if datas is not None else load_shards(cfg)
    if len(datas) != cfg.peers:
        raise ValueError(f"{len(datas)} shards for {cfg.peers} peers")
    _check(cfg, datas[0])
    return datas


def within_privacy_budget(cfg: SimConfig) -> SimConfig:
    """``cfg`` with no more rounds than its DP budget allows (ValueError: not even one)."""
    if not (cfg.dp_noise > 0 and cfg.dp_epsilon > 0):
        return cfg
    if cfg.dp_level != "client":
        raise ValueError("the simulator applies a budget to client-level DP only (DP-SGD peers stop on their own)")
    from peers.privacy import rounds_within_budget

    allowed = rounds_within_budget(cfg.dp_epsilon, cfg.dp_noise)
    if allowed == 0:
        raise ValueError(
            f"one round with noise multiplier {cfg.dp_noise} already costs more than epsilon {cfg.dp_epsilon}"
        )
    return replace(cfg, rounds=min(cfg.rounds, allowed))


def run_simulation(
    cfg: SimConfig, on_round: Callable[[RoundStats], None] | None = None, datas: list[LocalData] | None = None
) -> SimResult:
    """Run the federation described by `cfg`; `on_round` is called after every round. With a DP
    budget the run ends at the last round within it (``result.config.rounds``)."""
    cfg = within_privacy_budget(cfg)
    datas = prepare(cfg, datas)
    device = select_device(cfg.device)
    evaluator = Evaluator(*union_eval(datas), device)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # Peers train concurrently in threads; tiny models run best one thread each.
        torch.set_num_threads(1)
    try:
        if cfg.rule in SERVER_RULES:
            (stats, finals), gap = run_fedavg(cfg, datas, evaluator, device, on_round), 1.0  # W = 1 p^T
        else:
            stats, gap, finals = asyncio.run(_run_gossip(cfg, datas, evaluator, device, on_round))
    finally:
        torch.set_num_threads(threads)
    return SimResult(cfg, str(device), gap, stats, time.perf_counter() - started, finals)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def simulate_cli(cfg: SimConfig, *, as_json: bool = False) -> int:
    """Run with a rich progress bar and summary table; with `as_json` the display goes to stderr
    and stdout gets exactly one JSON summary line."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console(stderr=as_json)
    datas = prepare(cfg)
    title = (
        f"{cfg.peers} peers, {cfg.topology}, {cfg.rule}, {cfg.partition}, "
        f"{cfg.local_steps} local steps, lr {cfg.lr}"
        + (f" ({cfg.lr_schedule})" if cfg.lr_schedule != "constant" else "")
    )
    progress = Progress(
        TextColumn("[bold]round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn(
            "acc {task.fields[acc]} (min {task.fields[lo]}, max {task.fields[hi]}) "
            "global {task.fields[glob]}  {task.fields[sent]}"
        ),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    total_sent = 0

    with progress:
        task = progress.add_task(title, total=cfg.rounds, acc="-", lo="-", hi="-", glob="-", sent="-")

        def on_round(s: RoundStats) -> None:
            nonlocal total_sent
            total_sent += s.bytes_sent
            progress.update(
                task,
                advance=1,
                acc=f"{s.accuracy:.3f}",
                lo=f"{s.min_accuracy:.3f}",
                hi=f"{s.max_accuracy:.3f}",
                glob=f"{s.global_accuracy:.3f}",
                sent=_fmt_bytes(total_sent),
            )

        result = run_simulation(cfg, on_round, datas)

    table = Table(title=title)
    for col in ("round", "acc (own split)", "min", "max", "acc (all eval)", "train loss", "sent", "s"):
        table.add_column(col, justify="right")
    step = max(1, len(result.rounds) // 15)
    for s in result.rounds:
        if s.round == 1 or s.round % step == 0 or s.round == len(result.rounds):
            table.add_row(
                str(s.round),
                f"{s.accuracy:.4f}",
                f"{s.min_accuracy:.4f}",
                f"{s.max_accuracy:.4f}",
                f"{s.global_accuracy:.4f}",
                f"{s.train_loss:.4f}",
                _fmt_bytes(s.bytes_sent),
                f"{s.seconds:.2f}",
            )
    console.print(table)
    console.print(
        f"final accuracy {result.final_accuracy:.4f} (own split), "
        f"{result.final_global_accuracy:.4f} (all eval); spectral gap {result.spectral_gap:.4f}; "
        f"{result.seconds:.1f} s on {result.device}"
    )
    if as_json:
        print(json.dumps(result.summary()), flush=True)
    return 0


__all__ = [
    "Evaluator",
    "RoundStats",
    "SimConfig",
    "SimResult",
    "load_shards",
    "run_fedavg",
    "run_simulation",
    "simulate_cli",
    "union_eval",
    "union_train",
]
