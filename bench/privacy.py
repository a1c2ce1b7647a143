"""What privacy costs: secure aggregation, client-level DP and DP-SGD against the same job
without them, in the same run.

    python -m bench privacy [--quick] [--device cpu|cuda]

- SecAgg: star FedAvg over 16 peers (``--quick``: 8) on digits Dirichlet(0.5), the MLP and the
  small CNN, with and without ``--secagg`` (``peers.secagg.fedavg``: every upload masked, the
  aggregator unmasks the sum); round time (median) and final accuracy. Target: at most 1.5x
  the round time and 0.5 points. The same over the aggregation tree (``--secagg-tree 4``,
  ``peers.secagg.tree``: groups of 4, a second masked round among their aggregators), reported
  beside it (``secagg_tree_round_ratio``, ``secagg_tree_accuracy_drop_points``; no target yet).
- Live SecAgg: real ``Peer``s over the in-memory transport (``peers.federation``), gossip on the
  complete graph (``--quick``: 6 peers, else 10), the MLP, with and without the job option
  ``secure_aggregation`` (``peers.secagg.gossip``: self masks, sealed Shamir shares and the
  unmask round trip every round); median round seconds (``secagg_live_round_ratio``, the same
  1.5x target).
- DP-SGD: ``peers.privacy.dp_sgd.DPSGDTrainer`` against ``peers.training.LocalTrainer`` (same
  model, data, batch, steps; noise 1.0, clip 1.0), training time (median of interleaved repeats
  after a warm-up). Target: at most 3x (naive Opacus is 2.6-8x).
- Client-level DP: the ring with and without ``--dp-noise 0.3 --dp-clip 1`` (reported: the
  accuracy it costs and the epsilon the peers spent; no target).

Final JSON line: ``secagg_round_ratio`` and ``secagg_accuracy_drop_points`` (the worse of the
two models), ``dpsgd_train_ratio`` (the worse of the two models), ``epsilon`` (client DP run),
``value``/``baseline`` = DP-SGD's and plain SGD's training seconds on the CNN.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import replace

import torch

from peers import topology
from peers.data import load_local_data
from peers.federation import InMemoryPlatform
from peers.models import build_model
from peers.protocol import JobConfig
from peers.simulate import SimConfig, run_simulation
from peers.training import LocalTrainer, select_device
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey
from peers.worker import Peer

MODELS = ("mlp", "cnn")
TREE_GROUP = 4  # the aggregation tree's group size


def secagg_rows(peers: int, rounds: int, device: str) -> list[dict]:
    rows = []
    for model in MODELS:
        base = SimConfig(
            peers=peers,
            topology="star",
            rule="fedavg",
            rounds=rounds,
            local_steps=10,
            lr=0.1,
            lr_schedule="constant",
            model=model,
            hidden=64,
            device=device,
        )
        plain, masked = run_simulation(base), run_simulation(replace(base, secagg=True))
        tree = run_simulation(replace(base, secagg=True, secagg_tree_group=TREE_GROUP))
        t_plain = statistics.median(r.seconds for r in plain.rounds[1:])
        t_masked = statistics.median(r.seconds for r in masked.rounds[1:])
        t_tree = statistics.median(r.seconds for r in tree.rounds[1:])
        rows.append(
            {
                "model": model,
                "round_s": round(t_plain, 4),
                "round_s_secagg": round(t_masked, 4),
                "round_ratio": round(t_masked / t_plain, 3),
                "accuracy": round(plain.rounds[-1].global_accuracy, 4),
                "accuracy_secagg": round(masked.rounds[-1].global_accuracy, 4),
                "drop_points": round(100 * (plain.rounds[-1].global_accuracy - masked.rounds[-1].global_accuracy), 2),
                "round_s_tree": round(t_tree, 4),
                "round_ratio_tree": round(t_tree / t_plain, 3),
                "accuracy_tree": round(tree.rounds[-1].global_accuracy, 4),
                "drop_points_tree": round(
                    100 * (plain.rounds[-1].global_accuracy - tree.rounds[-1].global_accuracy), 2
                ),
            }
        )
    return rows


async def _live_round_seconds(n: int, rounds: int, secure: bool, device: str) -> list[float]:
    config = JobConfig(
        model="mlp",
        hidden=64,
        lr=0.3,
        lr_schedule="constant",
        local_steps=10,
        batch_size=32,
        seed=0,
        num_features=64,
        num_classes=10,
        secure_aggregation=secure,
    )
    platform = InMemoryPlatform(config, rounds, round_timeout_s=60)
    transport = MemoryTransport(capacity=max(100, 4 * n))
    peers = {
        i: Peer(
            i,
            NodeKey.generate(),
            load_local_data(f"digits:{i - 1}/{n}"),
            transport,
            platform,
            platform_key=platform.public_key_hex,
            device=device,
        )
        for i in range(1, n + 1)
    }
    results = await platform.run(peers, transport, lambda r, cut: topology.build("complete", n))
    assert all(not rep["rejected"] for result in results for rep in result.reports), "a live round lost a model"
    return [result.seconds for result in results]


def live_secagg_row(peers: int, rounds: int, device: str) -> dict:
    """Live gossip rounds with and without secure aggregation (median seconds, round 1 left out)."""
    plain = statistics.median(asyncio.run(_live_round_seconds(peers, rounds, False, device))[1:])
    masked = statistics.median(asyncio.run(_live_round_seconds(peers, rounds, True, device))[1:])
    return {
        "peers": peers,
        "rounds": rounds,
        "round_s": round(plain, 4),
        "round_s_secagg": round(masked, 4),
        "round_ratio": round(masked / plain, 3),
    }


def dpsgd_rows(steps: int, repeats: int, device: torch.device) -> list[dict]:
    from peers.privacy.dp_sgd import DPSGDTrainer

    data = load_local_data("digits:0/1", seed=0)
    rows = []
    for model in MODELS:

        def make(cls, model=model, **kw):
            m = build_model(model, 64, 10, hidden=64, seed=0, input_shape=data.input_shape)
            return cls(m, data, lr=0.1, batch_size=32, device=device, seed=0, **kw)

        plain, private = make(LocalTrainer), make(DPSGDTrainer, noise_multiplier=1.0, max_grad_norm=1.0)
        times: dict[str, list[float]] = {"plain": [], "dpsgd": []}
        for rep in range(repeats + 1):
            for name, trainer in (("plain", plain), ("dpsgd", private)):
                t0 = time.perf_counter()
                trainer.train(steps)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if rep:
                    times[name].append(time.perf_counter() - t0)
        t_plain, t_private = statistics.median(times["plain"]), statistics.median(times["dpsgd"])
        rows.append(
            {
                "model": model,
                "steps": steps,
                "plain_s": round(t_plain, 4),
                "dpsgd_s": round(t_private, 4),
                "ratio": round(t_private / t_plain, 3),
                "accuracy_plain": round(plain.evaluate().accuracy, 4),
                "accuracy_dpsgd": round(private.evaluate().accuracy, 4),
                "epsilon": round(private.epsilon(), 3),
            }
        )
    return rows


def client_dp_row(peers: int, rounds: int, device: str) -> dict:
    base = SimConfig(peers=peers, topology="ring", rule="mean", rounds=rounds, local_steps=10, lr=0.3, device=device)
    plain = run_simulation(base)
    private = run_simulation(replace(base, dp_noise=0.3, dp_clip=1.0))
    return {
        "accuracy": round(plain.rounds[-1].global_accuracy, 4),
        "accuracy_dp": round(private.rounds[-1].global_accuracy, 4),
        "drop_points": round(100 * (plain.rounds[-1].global_accuracy - private.rounds[-1].global_accuracy), 2),
        "epsilon": round(private.rounds[-1].epsilon, 3),
        "noise_multiplier": 0.3,
        "clip": 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench privacy", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 peers, fewer rounds and steps")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args(argv)
    device = select_device(args.device)
    peers, rounds = (8, 10) if args.quick else (16, 30)
    steps, repeats = (100, 3) if args.quick else (300, 5)
    started = time.perf_counter()
    secagg = secagg_rows(peers, rounds, args.device)
    live = live_secagg_row(6 if args.quick else 10, 5 if args.quick else 10, args.device)
    dpsgd = dpsgd_rows(steps, repeats, device)
    client = client_dp_row(peers, rounds, args.device)

    print(f"privacy: {peers} peers, {rounds} rounds, digits; device {device}; {time.perf_counter() - started:.0f} s")
    print()
    print(f"{'SecAgg (star)':<14} {'round s':>8} {'+SecAgg':>8} {'ratio':>6} {'acc':>7} {'+SecAgg':>8} {'drop pt':>8}")
    for r in secagg:
        print(
            f"{r['model']:<14} {r['round_s']:>8.4f} {r['round_s_secagg']:>8.4f} {r['round_ratio']:>6.2f} "
            f"{r['accuracy']:>7.4f} {r['accuracy_secagg']:>8.4f} {r['drop_points']:>8.2f}"
        )
    print(
        f"{f'SecAgg tree {TREE_GROUP}':<14} {'round s':>8} {'+tree':>8} {'ratio':>6} {'acc':>7} {'+tree':>8} {'drop pt':>8}"
    )
    for r in secagg:
        print(
            f"{r['model']:<14} {r['round_s']:>8.4f} {r['round_s_tree']:>8.4f} {r['round_ratio_tree']:>6.2f} "
            f"{r['accuracy']:>7.4f} {r['accuracy_tree']:>8.4f} {r['drop_points_tree']:>8.2f}"
        )
    print(
        f"live gossip SecAgg ({live['peers']} peers, complete): round {live['round_s']:.4f} s -> "
        f"{live['round_s_secagg']:.4f} s ({live['round_ratio']:.2f}x)"
    )
    print()
    print(
        f"{'DP-SGD':<14} {'steps':>6} {'plain s':>8} {'DP-SGD s':>9} {'ratio':>6} {'acc':>7} {'acc DP':>7} {'eps':>7}"
    )
    for r in dpsgd:
        print(
            f"{r['model']:<14} {r['steps']:>6} {r['plain_s']:>8.4f} {r['dpsgd_s']:>9.4f} {r['ratio']:>6.2f} "
            f"{r['accuracy_plain']:>7.4f} {r['accuracy_dpsgd']:>7.4f} {r['epsilon']:>7.2f}"
        )
    print()
    print(
        f"client DP (ring, noise {client['noise_multiplier']}, clip {client['clip']}): accuracy {client['accuracy']} -> "
        f"{client['accuracy_dp']} ({client['drop_points']} points), epsilon {client['epsilon']}"
    )
    print()
    cnn = next(r for r in dpsgd if r["model"] == "cnn")
    secagg_ratio = max(r["round_ratio"] for r in secagg)
    dpsgd_ratio = max(r["ratio"] for r in dpsgd)
    result = {
        "bench": "privacy",
        "metric": "DP-SGD training s (cnn) vs plain SGD",
        "value": cnn["dpsgd_s"],
        "baseline": cnn["plain_s"],
        "ratio": cnn["ratio"],
        "target": "secagg_round_ratio <= 1.5, secagg_live_round_ratio <= 1.5, secagg_accuracy_drop_points <= 0.5, "
        "dpsgd_train_ratio <= 3",
        "device": args.device,
        "quick": bool(args.quick),
        "secagg_round_ratio": secagg_ratio,
        "secagg_accuracy_drop_points": max(r["drop_points"] for r in secagg),
        "secagg_live_round_ratio": live["round_ratio"],
        "secagg_live": live,
        "secagg_tree_group": TREE_GROUP,
        "secagg_tree_round_ratio": max(r["round_ratio_tree"] for r in secagg),
        "secagg_tree_accuracy_drop_points": max(r["drop_points_tree"] for r in secagg),
        "dpsgd_train_ratio": dpsgd_ratio,
        "epsilon": client["epsilon"],
        "secagg": secagg,
        "dpsgd": dpsgd,
        "client_dp": client,
    }
    print(json.dumps(result))
    return 0
