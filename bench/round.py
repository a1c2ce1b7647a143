"""Per-round coordination overhead: 16 peers, ring, no local training, real Redis.

    python -m bench round [--quick] [--device cpu|cuda] [--rounds N] [--url REDIS_URL]

16 ``peers.worker.Peer`` objects run in this process (one asyncio loop), each with its own
``RedisChannelTransport`` (its own connection pool, as separate peer processes would have).
A driver plays the platform: for every round it sends the 16 ``RoundPlan``s (ring topology,
Metropolis-Hastings weights, tiny MLP, ``local_steps=0``) over Redis and waits until all 16
``PeerReport``s arrived (collected in memory, as the platform's report endpoint would).
Each peer still packs, signs, chunks and sends its weights to its two neighbours, waits for
theirs, validates, mixes, evaluates and reports: everything except training.

``value``: median milliseconds from the first plan sent to the 16th report, over ``--rounds``
rounds after 2 warm-up rounds (target < 50 ms). ``baseline``: the same federation on
``MemoryTransport`` (in-process queues), so the Redis cost is the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import uuid

import torch

from peers import topology
from peers.data import load_local_data
from peers.federation import InMemoryPlatform
from peers.protocol import JobConfig
from peers.transport.base import Transport
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey
from peers.worker import Peer

N = 16
WARMUP = 2
CONFIG = JobConfig(
    model="mlp",
    hidden=16,
    lr=0.1,
    lr_schedule="constant",
    local_steps=0,
    batch_size=32,
    seed=3,
    num_features=64,
    num_classes=10,
)


async def federation(kind: str, rounds: int, url: str, datasets, keys) -> dict:
    from peers.transport.redis import RedisChannelTransport

    prefix = f"bench-round-{uuid.uuid4().hex[:8]}:"
    transports: list[Transport]
    driver: Transport
    if kind == "memory":
        shared = MemoryTransport()
        transports = [shared] * N
        driver = shared
    else:
        transports = [RedisChannelTransport(url, prefix=prefix) for _ in range(N)]
        driver = RedisChannelTransport(url, prefix=prefix)
    total = WARMUP + rounds
    platform = InMemoryPlatform(CONFIG, total, round_timeout_s=60, max_payload_bytes=10_000_000)
    peers = {
        n: Peer(n, keys[n], datasets[n - 1], transports[n - 1], platform, platform_key=platform.public_key_hex)
        for n in range(1, N + 1)
    }
    try:
        results = (await platform.run(peers, driver, lambda r, cut: topology.build("ring", N)))[WARMUP:]
    finally:
        if kind != "memory":
            for t in {id(t): t for t in [*transports, driver]}.values():
                await t.close()
            import redis

            client = redis.Redis.from_url(url)
            keys_left = list(client.scan_iter(match=prefix + "*"))
            if keys_left:
                client.delete(*keys_left)
            client.close()
    times = [result.seconds for result in results]
    reports = [rep for result in results for rep in result.reports]
    rejected = sum(len(rep["rejected"]) for rep in reports)
    sent = statistics.median(rep["bytes_sent"] for rep in reports)
    return {
        "median_ms": statistics.median(times) * 1000,
        "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))] * 1000,
        "min_ms": min(times) * 1000,
        "max_ms": max(times) * 1000,
        "peer_round_median_ms": statistics.median(rep["duration_s"] for rep in reports) * 1000,
        "rejected": rejected,
        "bytes_sent_per_peer": sent,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench round", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 timed rounds instead of 20 (one run each)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="recorded only: the peers run on CPU")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per run after 2 warm-up rounds")
    ap.add_argument("--runs", type=int, default=None, help="alternating (memory, redis) runs (default 3, quick 1)")
    ap.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args(argv)
    rounds = args.rounds or (8 if args.quick else 20)
    runs = args.runs or (1 if args.quick else 3)
    if rounds < 3:
        ap.error("--rounds must be >= 3")
    datasets = [load_local_data(f"digits:{i}/{N}") for i in range(N)]
    keys = {n: NodeKey.generate() for n in range(1, N + 1)}

    results: dict[str, list[dict]] = {"memory": [], "redis": []}
    for _ in range(runs):
        for kind in ("memory", "redis"):
            results[kind].append(asyncio.run(federation(kind, rounds, args.url, datasets, keys)))
    med = {k: statistics.median(r["median_ms"] for r in v) for k, v in results.items()}

    print(
        f"round: {N} peers, ring, tiny MLP ({CONFIG.hidden} hidden), local_steps=0, one process; "
        f"{runs} run(s) x {rounds} timed rounds after {WARMUP} warm-up rounds, median per run"
    )
    print(f"torch threads {torch.get_num_threads()}; plans from a driver, reports collected in memory")
    print()
    print(
        f"{'transport':<10} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'max ms':>8} {'peer round ms':>14} {'rejected':>9}"
    )
    for kind, rows in results.items():
        for r in rows:
            print(
                f"{kind:<10} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} {r['min_ms']:>8.1f} {r['max_ms']:>8.1f} "
                f"{r['peer_round_median_ms']:>14.1f} {r['rejected']:>9}"
            )
    print()
    print(
        "round = first plan sent .. 16th report in; peer round = a peer's own run_round duration "
        "(PeerReport.duration_s)"
    )
    result = {
        "bench": "round",
        "metric": "ms per round (median)",
        "value": round(med["redis"], 2),
        "baseline": round(med["memory"], 2),
        "ratio": round(med["redis"] / med["memory"], 4),
        "target": "value < 50 ms",
        "device": args.device,
        "quick": bool(args.quick),
        "peers": N,
        "rounds": rounds,
        "runs": runs,
        "redis_runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in results["redis"]],
        "memory_runs": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in results["memory"]
        ],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
