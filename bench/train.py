"""Local training speed: ``peers.training.LocalTrainer.train`` vs a bare PyTorch loop.

    python -m bench train [--quick] [--device cpu|cuda] [--repeats N]

Same model (``peers.models.build_model``, same seed), same synthetic data (float32 features,
int64 labels, on the device), same batch size, same optimiser (plain SGD), same device. Both
sides draw minibatches the same way: a fresh ``torch.randperm`` per epoch and an index gather
(``X[idx]``), as a shuffled DataLoader would, so the difference is LocalTrainer's own overhead
(batch bookkeeping, autocast context, loss accumulation, result).

Cases:
- ``mlp-small``: the peers' default MLP (64 -> 64 -> 10), batch 32: per-step overhead dominates;
- ``mlp-wide``: 1024 -> 2048 -> 10 (2.1M params), batch 256: compute dominates;
- ``mlp-xl`` (CUDA only): 4096 -> 4096 -> 10 (16.8M params), batch 1024: big enough for
  LocalTrainer's bf16 autocast (``peers.training.AUTOCAST_MIN_PARAMS``), against the bare loop's
  float32, so its ratio is what mixed precision buys.

Timings: one warm-up of each, then ``--repeats`` interleaved repeats (ours, baseline); median
samples/s. ``value``/``baseline`` are for the last case; the target is ratio >= 0.95 for each case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch.nn import functional as F

from peers.data import LocalData
from peers.models import build_model
from peers.training import LocalTrainer

CASES = {
    # name: (features, hidden, classes, batch, samples, steps full, steps quick)
    "mlp-small": (64, 64, 10, 32, 4096, 2000, 400),
    "mlp-wide": (1024, 2048, 10, 256, 8192, 150, 30),
}
# CUDA only (too slow for a CPU run): big enough for LocalTrainer's bf16 autocast
# (peers.training.AUTOCAST_MIN_PARAMS), which the bare float32 loop does not use.
CUDA_CASES = {"mlp-xl": (4096, 4096, 10, 1024, 16384, 100, 20)}
LR = 0.05


def make_data(features: int, classes: int, samples: int, seed: int = 0) -> LocalData:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((samples, features), dtype=np.float32)
    y = rng.integers(0, classes, samples).astype(np.int64)
    return LocalData(X, y, X[:256], y[:256], num_features=features, num_classes=classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class BareLoop:
    """What a person would write: the same model and data, randperm + gather per epoch."""

    def __init__(self, model, data: LocalData, batch: int, device: torch.device, seed: int):
        self.model = model.to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.X = torch.from_numpy(data.X_train).to(device)
        self.y = torch.from_numpy(data.y_train).to(device)
        self.n, self.batch, self.device = len(self.y), batch, device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.perm, self.pos = torch.empty(0, dtype=torch.long, device=device), self.n

    def train(self, steps: int) -> float:
        self.model.train()
        loss = torch.zeros(())
        for _ in range(steps):
            if self.pos + self.batch > self.n:
                self.perm = torch.randperm(self.n, generator=self.gen, device=self.device)
                self.pos = 0
            idx = self.perm[self.pos : self.pos + self.batch]
            self.pos += self.batch
            loss = F.cross_entropy(self.model(self.X[idx]), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return float(loss.detach())


def timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_case(name: str, device: torch.device, quick: bool, repeats: int) -> dict:
    features, hidden, classes, batch, samples, steps_full, steps_quick = {**CASES, **CUDA_CASES}[name]
    steps = steps_quick if quick else steps_full
    data = make_data(features, classes, samples)
    ours = LocalTrainer(
        build_model("mlp", features, classes, hidden=hidden, seed=1),
        data,
        lr=LR,
        batch_size=batch,
        device=device,
        seed=2,
    )
    base = BareLoop(build_model("mlp", features, classes, hidden=hidden, seed=1), data, batch, device, seed=2)
    t_ours, t_base = [], []
    for rep in range(repeats + 1):  # rep 0 is the warm-up
        a = timed(lambda: ours.train(steps), device)
        b = timed(lambda: base.train(steps), device)
        if rep:
            t_ours.append(a)
            t_base.append(b)
    params = sum(p.numel() for p in ours.model.parameters())
    o, b = statistics.median(t_ours), statistics.median(t_base)
    return {
        "case": name,
        "params": params,
        "batch": batch,
        "steps": steps,
        "ours_samples_s": steps * batch / o,
        "baseline_samples_s": steps * batch / b,
        "ratio": b / o,
        "ours_s": o,
        "baseline_s": b,
        "ours_min_max": [min(t_ours), max(t_ours)],
        "baseline_min_max": [min(t_base), max(t_base)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench train", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps per repeat")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats after one warm-up (default 7, quick 3)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    if repeats < 3:
        ap.error("--repeats must be >= 3")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    device_name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} torch threads)"
    )

    names = [*CASES, *(CUDA_CASES if device.type == "cuda" else ())]
    rows = [run_case(name, device, args.quick, repeats) for name in names]

    print(
        f"train: LocalTrainer.train vs a bare PyTorch loop, device {device_name}; "
        f"median of {repeats} interleaved repeats after 1 warm-up"
    )
    print()
    print(f"{'case':<10} {'params':>10} {'batch':>6} {'steps':>6} {'ours smp/s':>11} {'bare smp/s':>11} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['case']:<10} {r['params']:>10,} {r['batch']:>6} {r['steps']:>6} {r['ours_samples_s']:>11,.0f} "
            f"{r['baseline_samples_s']:>11,.0f} {r['ratio']:>6.3f}"
        )
    print()
    main_row = rows[-1]
    result = {
        "bench": "train",
        "metric": "samples/s",
        "value": round(main_row["ours_samples_s"], 1),
        "baseline": round(main_row["baseline_samples_s"], 1),
        "ratio": round(main_row["ratio"], 4),
        "target": ">= 0.95 for every case",
        "device": args.device,
        "device_name": device_name,
        "quick": bool(args.quick),
        "repeats": repeats,
        "min_ratio": round(min(r["ratio"] for r in rows), 4),
        "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
