"""Accuracy of decentralized training vs centralized training on the same data.

``python -m bench accuracy [--quick] [--device cpu|cuda]``

16 peers on label-skewed digits (Dirichlet(0.5) partition, each peer's own train/eval split as
``python -m peers join --data digits:I/16:dirichlet:0.5`` loads it) train the same MLP with
real ``peers.worker.Peer`` objects over the in-memory transport (``peers.simulate``):

* ring DPASGD (the project's default topology): the figure under test;
* complete-graph DPASGD (one gossip step is exact averaging);
* star FedAvg (centralized federated averaging through the star's aggregator);
* the baseline: centralized SGD of the same model (same initial weights, lr and batch size) on
  the union of the peers' training data, for the same number of epochs, i.e. as many
  sample-gradients as all peers together compute (peers x local steps x rounds minibatches).

Every figure is accuracy on the same evaluation set, the union of the peers' eval splits; for
the federations it is the mean over peers of each peer's own final model ("consensus" is the
accuracy of the average of the peers' models, a model nobody holds, shown to separate the
optimisation error from the disagreement between peers).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from peers.data import LocalData
from peers.models import build_model
from peers.simulate import Evaluator, SimConfig, load_shards, run_simulation, union_eval, union_train
from peers.training import LR_SCHEDULES, LocalTrainer, mix, scheduled_lr, select_device

FULL: dict[str, Any] = {"rounds": 300, "local_steps": 5, "lr": 1.0, "lr_schedule": "cosine"}
QUICK: dict[str, Any] = {"rounds": 60, "local_steps": 5, "lr": 1.0, "lr_schedule": "cosine"}
BASELINE_LRS = (0.1, 0.3, 0.5, 1.0)  # the centralized baseline is also shown at its best lr


def centralized(cfg: SimConfig, datas: list[LocalData], steps: int, device) -> tuple[float, float]:
    """(accuracy on the union eval set, seconds) of plain SGD on the union of the training data."""
    Xtr, ytr = union_train(datas)
    Xev, yev = union_eval(datas)
    data = LocalData(Xtr, ytr, Xev, yev, datas[0].num_features, datas[0].num_classes, input_shape=datas[0].input_shape)
    model = build_model(
        cfg.model, data.num_features, data.num_classes, hidden=cfg.hidden, seed=cfg.seed, input_shape=data.input_shape
    )
    trainer = LocalTrainer(model, data, lr=cfg.lr, batch_size=cfg.batch_size, device=device, seed=cfg.seed)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as the peers train (see peers.simulate)
        # the same schedule as the peers', per round-sized slice of the steps
        per_round = max(1, round(steps / cfg.rounds))
        for r, start in enumerate(range(0, steps, per_round), start=1):
            trainer.set_lr(scheduled_lr(cfg.lr, cfg.lr_schedule, r, cfg.rounds))
            trainer.train(min(per_round, steps - start))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return trainer.evaluate().accuracy, time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)


def consensus_accuracy(cfg: SimConfig, datas, states, device) -> float:
    model = build_model(
        cfg.model,
        datas[0].num_features,
        datas[0].num_classes,
        hidden=cfg.hidden,
        seed=cfg.seed,
        input_shape=datas[0].input_shape,
    )
    model.load_state_dict(mix([(1.0, s) for s in states]))
    return Evaluator(*union_eval(datas), device).accuracy(model.to(device))


LABELS = {
    "central": "centralized SGD (baseline)",
    "ring": "ring DPASGD",
    "complete": "complete-graph DPASGD",
    "fedavg": "star FedAvg",
}
PLAN = [("ring", "ring", "mean"), ("complete", "complete", "mean"), ("fedavg", "star", "fedavg")]


def run_seed(base: SimConfig, device, plan) -> dict[str, dict]:
    """Every row of the table for one seed (partition, split, initial model and SGD order)."""
    datas = load_shards(base)
    # Same sample-gradients as all peers together (a peer's batch is capped at its shard's size).
    seen = base.rounds * base.local_steps * sum(min(base.batch_size, d.samples) for d in datas)
    steps = round(seen / base.batch_size)
    acc, secs = centralized(base, datas, steps, device)
    rows: dict[str, dict[str, Any]] = {
        "central": {
            "accuracy": acc,
            "seconds": secs,
            "bytes": 0,
            "epochs": seen / sum(d.samples for d in datas),
            "eval_samples": sum(len(d.y_eval) for d in datas),
        }
    }
    rows["central"]["by_lr"] = {
        lr: acc if lr == base.lr else centralized(SimConfig(**{**base.__dict__, "lr": lr}), datas, steps, device)[0]
        for lr in BASELINE_LRS
    }
    print(f"  seed {base.seed}: centralized {acc:.4f} in {secs:.1f} s", flush=True)
    for key, topo, rule in plan:
        cfg = SimConfig(**{**base.__dict__, "topology": topo, "rule": rule})
        res = run_simulation(cfg, datas=datas)
        rows[key] = {
            "accuracy": res.final_global_accuracy,
            "consensus": consensus_accuracy(cfg, datas, res.final_states, device),
            "own_split": res.final_accuracy,
            "min_own_split": res.rounds[-1].min_accuracy,
            "gap": res.spectral_gap,
            "bytes": sum(s.bytes_sent for s in res.rounds),
            "seconds": res.seconds,
            "curve": [s.global_accuracy for s in res.rounds],
        }
        print(f"  seed {base.seed}: {LABELS[key]} {res.final_global_accuracy:.4f} in {res.seconds:.1f} s", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer rounds (under a minute on 2 cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--local-steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", help="comma-separated seeds, figures are their mean (full: 0,1,2; quick: 0)")
    parser.add_argument("--skip-others", action="store_true", help="only ring and centralized (for sweeps)")
    args = parser.parse_args(argv)

    hp: dict[str, Any] = dict(QUICK if args.quick else FULL)
    for key in hp:
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    seeds = [int(x) for x in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    device = select_device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    plan = PLAN[:1] if args.skip_others else PLAN
    print(
        f"accuracy: {args.peers} peers, digits {args.partition}, MLP, {hp['rounds']} rounds x "
        f"{hp['local_steps']} local steps, lr {hp['lr']} ({hp['lr_schedule']}), batch {args.batch_size}; seeds {seeds}; device {card}",
        flush=True,
    )

    started = time.perf_counter()
    per_seed = []
    for seed in seeds:
        base = SimConfig(
            peers=args.peers,
            partition=args.partition,
            seed=seed,
            device=str(device),
            model="mlp",
            batch_size=args.batch_size,
            **hp,
        )
        per_seed.append(run_seed(base, device, plan))

    def mean(key: str, field: str) -> float:
        return float(np.mean([rows[key][field] for rows in per_seed]))

    central = mean("central", "accuracy")
    epochs = mean("central", "epochs")
    print(
        f"\nmean of {len(seeds)} seed(s); {epochs:.0f} epochs over the union of the training data; eval on the "
        f"union of the peers' eval splits (~{mean('central', 'eval_samples'):.0f} samples)"
    )
    print(f"{'run':<28} {'accuracy':>9} {'consensus':>10} {'own split':>10} {'gap(W)':>8} {'MB sent':>9} {'s':>7}")
    print(
        f"{LABELS['central']:<28} {central:>9.4f} {'-':>10} {'-':>10} {'-':>8} {0:>9.1f} "
        f"{mean('central', 'seconds'):>7.1f}"
    )
    by_lr = {lr: float(np.mean([rows["central"]["by_lr"][lr] for rows in per_seed])) for lr in BASELINE_LRS}
    best_lr = max(by_lr, key=lambda lr: by_lr[lr])
    print(
        f"{'centralized SGD, best lr ' + str(best_lr):<28} {by_lr[best_lr]:>9.4f} {'-':>10} {'-':>10} {'-':>8} "
        f"{0:>9.1f} {'':>7}"
    )
    for key, _, _ in plan:
        print(
            f"{LABELS[key]:<28} {mean(key, 'accuracy'):>9.4f} {mean(key, 'consensus'):>10.4f} "
            f"{mean(key, 'own_split'):>10.4f} {mean(key, 'gap'):>8.4f} {mean(key, 'bytes') / 1e6:>9.1f} "
            f"{mean(key, 'seconds'):>7.1f}"
        )
    for seed, rows in zip(seeds, per_seed):
        print(
            f"seed {seed}: ring {rows['ring']['accuracy']:.4f} vs centralized {rows['central']['accuracy']:.4f} "
            f"({100 * (rows['central']['accuracy'] - rows['ring']['accuracy']):+.2f} points)"
        )
    curve = np.mean([rows["ring"]["curve"] for rows in per_seed], axis=0)
    marks = sorted({0, *range(0, len(curve), max(1, len(curve) // 10)), len(curve) - 1})
    print("ring accuracy by round: " + ", ".join(f"{i + 1}:{curve[i]:.3f}" for i in marks))
    print(
        "accuracy = mean over peers of each peer's final model on the union eval set; consensus = the average "
        "of the peers' models (held by nobody); own split = the peers' reported accuracy on their own eval split"
    )

    value = mean("ring", "accuracy")
    gap_points = 100 * (central - value)
    result = {
        "bench": "accuracy",
        "metric": "final accuracy",
        "value": round(value, 4),
        "baseline": round(central, 4),
        "ratio": round(value / central, 4),
        "target": "within 1.5 points of centralized",
        "gap_points": round(gap_points, 2),
        "met": bool(gap_points <= 1.5),
        "complete": round(mean("complete", "accuracy"), 4) if not args.skip_others else None,
        "fedavg": round(mean("fedavg", "accuracy"), 4) if not args.skip_others else None,
        "ring_consensus": round(mean("ring", "consensus"), 4),
        "ring_own_split": round(mean("ring", "own_split"), 4),
        "baseline_best_lr": best_lr,
        "baseline_at_best_lr": round(by_lr[best_lr], 4),
        "gap_points_vs_best_lr": round(100 * (by_lr[best_lr] - value), 2),
        "ring_per_seed": [round(rows["ring"]["accuracy"], 4) for rows in per_seed],
        "baseline_per_seed": [round(rows["central"]["accuracy"], 4) for rows in per_seed],
        "spectral_gap_ring": round(mean("ring", "gap"), 4),
        "device": card,
        "quick": args.quick,
        "rounds": hp["rounds"],
        "local_steps": hp["local_steps"],
        "lr": hp["lr"],
        "lr_schedule": hp["lr_schedule"],
        "batch_size": args.batch_size,
        "peers": args.peers,
        "partition": args.partition,
        "epochs": round(epochs, 1),
        "seeds": seeds,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0
