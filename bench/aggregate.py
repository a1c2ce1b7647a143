"""Aggregation speed: ``peers.rules`` mean and median vs one-pass torch baselines.

    python -m bench aggregate [--quick] [--device cpu|cuda] [--repeats N]

16 models of 25M float32 parameters (``--quick``: 2M), each model a state dict of a few
layer-shaped tensors. The same memory backs both sides: every model is one flat vector
``flat[i]`` and its state dict holds views into it, so the baseline gets its ``[P]`` vectors
for free (flattening is *not* charged to it) while our rules take the state dicts.

Baselines: ``torch.stack(flat).mean(0)`` and ``torch.stack(flat).median(0)``. Note that for
an even number of models ``torch.median`` returns the lower middle value while our median
averages the middle pair (as numpy); that is checked on a sample of coordinates.

Timings: one warm-up of each, then ``--repeats`` (default 5) interleaved repeats; the median
is reported. On CUDA the device is synchronised before each clock read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from peers.rules import get_rule

MODELS = 16
FULL_PARAMS = 25_000_000
QUICK_PARAMS = 2_000_000


def layout(total: int) -> list[tuple[str, tuple[int, ...]]]:
    """Layer-like shapes summing exactly to ``total``: two weight matrices with biases and a
    flat remainder (``head``)."""
    cols = 4096 if total >= 10_000_000 else 1024
    r1 = (total * 2 // 3) // cols
    r2 = max(1, (total - r1 * (cols + 1)) * 9 // 10 // (cols + 1))
    shapes = [
        ("layer1.weight", (r1, cols)),
        ("layer1.bias", (r1,)),
        ("layer2.weight", (r2, cols)),
        ("layer2.bias", (r2,)),
    ]
    used = sum(int(np.prod(s)) for _, s in shapes)
    shapes.append(("head.weight", (total - used,)))
    assert all(int(np.prod(s)) > 0 for _, s in shapes) and sum(int(np.prod(s)) for _, s in shapes) == total
    return shapes


def make_inputs(models: int, params: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = layout(params)
    flat, states = [], []
    for _ in range(models):
        v = torch.randn(params, generator=gen).to(device)
        state, off = {}, 0
        for name, shape in shapes:
            n = int(np.prod(shape))
            state[name] = v[off : off + n].view(shape)
            off += n
        flat.append(v)
        states.append(state)
    return flat, states


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    dt = time.perf_counter() - t0
    del out
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench aggregate", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PARAMS:,} params per model instead of {FULL_PARAMS:,}"
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (median reported)")
    args = ap.parse_args(argv)
    if args.repeats < 3:
        ap.error("--repeats must be >= 3")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    device = args.device
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} torch threads)"
    params = QUICK_PARAMS if args.quick else FULL_PARAMS

    t0 = time.perf_counter()
    flat, states = make_inputs(MODELS, params, device)
    setup_s = time.perf_counter() - t0

    mean_rule, median_rule = get_rule("mean"), get_rule("median")
    cases = {
        "mean": (lambda: mean_rule(states), lambda: torch.stack(flat).mean(0)),
        "median": (lambda: median_rule(states), lambda: torch.stack(flat).median(0).values),
    }

    # correctness on the same inputs (not timed)
    ours_mean = torch.cat([t.reshape(-1) for t in mean_rule(states).values()])
    mean_err = float((ours_mean - torch.stack(flat).mean(0)).abs().max())
    del ours_mean
    ours_med = torch.cat([t.reshape(-1) for t in median_rule(states).values()])
    cols = torch.randperm(params, generator=torch.Generator().manual_seed(1))[:100_000].to(device)
    sample = torch.stack([v[cols] for v in flat]).cpu().numpy()
    median_err = float(np.abs(ours_med[cols].cpu().numpy() - np.median(sample, axis=0)).max())
    del ours_med, sample

    times: dict[str, dict[str, list[float]]] = {k: {"ours": [], "baseline": []} for k in cases}
    for rep in range(args.repeats + 1):  # repetition 0 is the warm-up
        for name, (ours, base) in cases.items():
            a, b = timed(ours, device), timed(base, device)
            if rep:
                times[name]["ours"].append(a)
                times[name]["baseline"].append(b)
    med = {k: {side: statistics.median(v) for side, v in d.items()} for k, d in times.items()}

    gb = MODELS * params * 4 / 1e9
    print(f"aggregate: {MODELS} models x {params:,} float32 params ({gb:.2f} GB), device {device_name}")
    print(f"median of {args.repeats} repeats after 1 warm-up; inputs built in {setup_s:.1f} s")
    print(
        f"checks: mean max|ours - baseline| = {mean_err:.2e}; median vs numpy.median on 100k coords = {median_err:.2e}"
    )
    print()
    print(f"{'rule':<8} {'ours [s]':>10} {'baseline [s]':>13} {'ratio':>7}  {'min..max ours':>17}  baseline")
    for name, base_desc in (("mean", "torch.stack(flat).mean(0)"), ("median", "torch.stack(flat).median(0)")):
        o, b = med[name]["ours"], med[name]["baseline"]
        lo, hi = min(times[name]["ours"]), max(times[name]["ours"])
        print(f"{name:<8} {o:>10.3f} {b:>13.3f} {o / b:>7.2f}  {lo:>7.3f}..{hi:<7.3f}  {base_desc}")
    print()
    result = {
        "bench": "aggregate",
        "metric": "time ratio (mean / baseline)",
        "value": round(med["mean"]["ours"], 6),
        "baseline": round(med["mean"]["baseline"], 6),
        "ratio": round(med["mean"]["ours"] / med["mean"]["baseline"], 4),
        "target": "<= 1.5",
        "device": device,
        "device_name": device_name,
        "quick": bool(args.quick),
        "median_value": round(med["median"]["ours"], 6),
        "median_baseline": round(med["median"]["baseline"], 6),
        "median_ratio": round(med["median"]["ours"] / med["median"]["baseline"], 4),
        "params": params,
        "models": MODELS,
        "repeats": args.repeats,
        "mean_max_abs_err": mean_err,
        "median_max_abs_err": median_err,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
