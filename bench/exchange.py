"""Weights exchange over real Redis: the project's path vs raw redis-py SET + GET.

    python -m bench exchange [--quick] [--device cpu|cuda] [--repeats N] [--url REDIS_URL]
                             [--params N ...] [--chunk-kib K] [--shared-receiver] [--no-acl] [--relay]

One model (a state dict of float32 tensors: 1M, 25M and 100M parameters; ``--quick``: 1M
and 25M) moves from peer A (this process) to peer B (a separate, freshly spawned receiver
process) through the project's own code:

    pack_state -> send_payload over RedisChannelTransport -> Reassembler -> unpack_state
    (validation on: names, shapes, dtypes, finiteness; signature and sha256 checked)

The clock starts in the sender before ``pack_state`` and stops in the receiver after
``unpack_state`` returned (both read CLOCK_MONOTONIC, which is system-wide on Linux), so
the time includes serialisation, hashing, signing, chunking, Redis, reassembly and
validation; sender and receiver run concurrently. They connect as peers do on the peers'
exchange: each as a node's own ACL user with exactly the rights ``peers.acl`` grants (created on
the Redis at ``--url`` for the run and deleted after it; ``--no-acl``: as the admin user).
``--relay``: through the platform's websocket relay instead (``peers.transport.relay`` on both
sides, an embedded platform in its own daphne process, ``bench/_platform.py``), the figure for
operators behind a firewall; target >= 0.3x. The baseline stays raw SET + GET on ``--url``.

Baseline: raw redis-py (sync) ``SET`` of the same payload bytes by the sender plus ``GET``
by a second receiver process (started and warmed like ours), timed separately and added. It
is **bytes only**: no pack_state, no unpack_state, no hashing, no flow control. The GET has
a process of its own because a read's cost depends on how much freed memory the process has
to reuse (fresh pages cost a page fault each): sharing one process, each side's speed
depended on the other's allocations (``--shared-receiver`` measures that way).
``value``/``baseline`` are MB/s (1 MB = 1e6 B of safetensors payload) for the largest size;
the target is ratio >= 0.8 at every size.

Memory: the receiver (torch initialised, as in a running peer) resets its peak RSS
(``/proc/self/clear_refs``) before each transfer and reports VmHWM minus VmRSS at the start;
the largest over all transfers, the warm-up included; target <= 3x the payload size.

Timings: one warm-up then ``--repeats`` interleaved (baseline, ours) repeats; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import statistics
import time
import uuid

import torch

SIZES_FULL = (1_000_000, 25_000_000, 100_000_000)
SIZES_QUICK = (1_000_000, 25_000_000)
JOB, ROUND, SENDER, RECEIVER = 1, 1, 1, 2


# -- helpers ----------------------------------------------------------------------------------


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (Linux)."""
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return {"VmRSS": 0, "VmHWM": 0}
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(key + r":\s+(\d+)\s+kB", text)
        out[key] = int(m.group(1)) * 1024 if m else 0
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_state(params: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A layer-shaped float32 state dict with exactly ``params`` parameters."""
    cols = 1024
    rows1 = (params // 2) // cols
    rows2 = (params // 4) // cols
    shapes = {
        "layer1.weight": (rows1, cols),
        "layer1.bias": (rows1,),
        "layer2.weight": (rows2, cols),
        "layer2.bias": (rows2,),
    }
    used = sum(torch.Size(s).numel() for s in shapes.values())
    shapes["head.weight"] = (params - used,)
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def fingerprint(state: dict[str, torch.Tensor]) -> list[float]:
    return [round(float(v.reshape(-1)[:4096].double().sum()), 6) for _, v in sorted(state.items())]


# -- receiver process -------------------------------------------------------------------------


def _receiver_main(
    conn, url: str, prefix: str, channel: str, public_key: str, spec: dict, max_bytes: int, user: tuple | None
) -> None:
    asyncio.run(_receiver(conn, url, prefix, channel, public_key, spec, max_bytes, user))


def _transport(url: str, prefix: str, user: tuple | None, **options):
    """The peers' transport, as a node's ACL user when ``user`` is (username, password), or
    through the platform's websocket relay when it is ("relay", base URL, node token)."""
    from peers.transport.redis import NodeCredentials, RedisChannelTransport
    from peers.transport.relay import RelayTransport, relay_url

    if user is not None and user[0] == "relay":
        return RelayTransport(relay_url(user[1]), user[2])
    credentials = None if user is None else NodeCredentials(*user)
    return RedisChannelTransport(url, prefix=prefix, credentials=credentials, **options)


async def _receiver(conn, url, prefix, channel, public_key, spec, max_bytes, user) -> None:
    import redis

    from peers.wire.exchange import Completed, Reassembler, Rejected
    from peers.wire.format import all_finite, unpack_state

    transport = _transport(url, prefix, user, block_s=5)
    raw = redis.Redis.from_url(url)
    # A running peer has used torch before a model arrives (it trained; mixing checks sums for
    # finiteness). The first sum and isfinite of a process allocate ~3 MB once (thread pool,
    # kernel set-up): not the transfer's memory, so they happen here, outside the window.
    all_finite(torch.ones(1 << 20))
    reassembler = Reassembler({SENDER: public_key}, job_id=JOB, max_bytes=max_bytes)
    try:
        while True:
            cmd = await asyncio.to_thread(conn.recv)
            if cmd[0] == "stop":
                return
            reset = _reset_peak()
            rss0 = _proc_status()["VmRSS"]
            if cmd[0] == "get":  # baseline: bytes only
                t0 = time.perf_counter()
                data = raw.get(cmd[1])
                t_get = time.perf_counter() - t0
                peak = _proc_status()["VmHWM"] - rss0 if reset else 0
                ok = data is not None and len(data) == cmd[2]
                del data
                conn.send(("done", t_get, peak, ok, ""))
                continue
            # ours
            seq = cmd[1]
            conn.send(("ready",))
            t_complete = None
            while True:
                result = reassembler.feed(await transport.receive(channel))
                if isinstance(result, Rejected):
                    conn.send(("done", 0.0, 0, False, f"rejected: {result.reason}"))
                    break
                if isinstance(result, Completed) and result.seq == seq:
                    t_complete = time.perf_counter()
                    state = unpack_state(result.payload, spec, max_bytes)
                    t_end = time.perf_counter()
                    del result
                    peak = _proc_status()["VmHWM"] - rss0 if reset else 0
                    fp = fingerprint(state)
                    del state
                    conn.send(("done", (t_complete, t_end), peak, True, fp))
                    break
    finally:
        raw.close()
        await transport.close()


# -- sender side ------------------------------------------------------------------------------


def _reply(conn, proc, timeout: float = 300.0):
    """The receiver's next message; raises if it died or went silent."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.05):
        if not proc.is_alive():
            raise RuntimeError(f"receiver process exited with code {proc.exitcode}")
        if time.monotonic() > deadline:
            raise RuntimeError("receiver did not answer in time")
    return conn.recv()


async def _ours_once(transport, conn, proc, channel: str, state: dict, key, seq: int, chunk_bytes):
    from peers.wire.exchange import send_payload
    from peers.wire.format import pack_state

    conn.send(("ours", seq))
    assert _reply(conn, proc)[0] == "ready"
    t0 = time.perf_counter()
    payload = pack_state(state)
    t_packed = time.perf_counter()
    kw = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    await send_payload(
        transport, channel, job_id=JOB, round=ROUND, sender=SENDER, seq=seq, payload=payload, key=key, **kw
    )
    t_sent = time.perf_counter()
    size = len(payload)
    del payload
    _, times, peak, ok, fp = await asyncio.to_thread(_reply, conn, proc)
    if not ok:
        raise RuntimeError(f"transfer failed: {fp}")
    t_complete, t_end = times
    return {
        "total": t_end - t0,
        "pack": t_packed - t0,
        "send": t_sent - t_packed,
        "complete": t_complete - t0,
        "unpack": t_end - t_complete,
        "peak": peak,
        "fingerprint": fp,
        "size": size,
    }


def _baseline_once(raw, conn, proc, key: str, payload: bytes):
    t0 = time.perf_counter()
    raw.set(key, payload)
    t_set = time.perf_counter() - t0
    conn.send(("get", key, len(payload)))
    _, t_get, peak, ok, _ = _reply(conn, proc)
    raw.delete(key)
    if not ok:
        raise RuntimeError("baseline GET returned the wrong bytes")
    return {"total": t_set + t_get, "set": t_set, "get": t_get, "peak": peak}


async def run_size(params: int, args, url: str) -> dict:
    import secrets

    import redis

    from peers import acl
    from peers.protocol import node_channel
    from peers.wire.format import describe, pack_state
    from peers.wire.signing import NodeKey

    state = make_state(params)
    expected_fp = fingerprint(state)
    payload = pack_state(state)  # the baseline's bytes (same as ours)
    size = len(payload)
    key = NodeKey.generate()
    raw = redis.Redis.from_url(url)
    users: dict[str, tuple | None] = {"sender": None, "receiver": None}
    if args.relay_platform is not None:
        # Through an embedded platform's websocket relay: its fresh database made nodes 1 and 2.
        (sender_id, sender_token), (receiver_id, receiver_token) = args.relay_platform[1]
        assert (sender_id, receiver_id) == (SENDER, RECEIVER)
        users = {"sender": ("relay", args.relay_platform[0], sender_token)}
        users["receiver"] = ("relay", args.relay_platform[0], receiver_token)
        prefix, channel = "", node_channel(RECEIVER)
        baseline_key = f"bench-exchange-{uuid.uuid4().hex[:8]}:baseline"
        cleanup = [baseline_key]
    elif args.acl:
        # As peers run: each side a node's ACL user (peers.acl), the inbox at its real key name;
        # node ids drawn so as not to meet a real node's on a shared Redis.
        sender_id, receiver_id = (900_000_000 + secrets.randbelow(10**8) for _ in range(2))
        prefix, channel = acl.KEY_PREFIX, node_channel(receiver_id)
        # The exchange is database 0; on another (a test suite's throw-away one) SELECT is needed too.
        select = ["+select"] if raw.connection_pool.connection_kwargs.get("db", 0) else []
        for role, node_id, sends_to in (("sender", sender_id, [receiver_id]), ("receiver", receiver_id, [])):
            password = secrets.token_urlsafe(16)
            rules = [*acl.user_rules(node_id, password, sends_to), *select]
            raw.execute_command("ACL", "SETUSER", acl.username(node_id), *rules)
            users[role] = (acl.username(node_id), password)
        baseline_key = f"bench-exchange-{uuid.uuid4().hex[:8]}:baseline"
        cleanup = [prefix + channel, baseline_key]
    else:
        prefix = f"bench-exchange-{uuid.uuid4().hex[:8]}:"
        channel = node_channel(RECEIVER)
        baseline_key = prefix + "baseline"
        cleanup = [prefix + channel, baseline_key]
    ctx = mp.get_context("spawn")

    def receiver():
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_receiver_main,
            daemon=True,
            args=(
                child,
                url,
                prefix,
                channel,
                key.public_key_hex,
                describe(state),
                size + (1 << 20),
                users["receiver"],
            ),
        )
        proc.start()
        return parent, proc

    # Each side gets its own receiver process, so neither's allocations decide how many fresh
    # pages (page faults) the other's reads touch (--shared-receiver: one process for both).
    parent, proc = receiver()
    base_parent, base_proc = (parent, proc) if args.shared_receiver else receiver()
    receivers = [(parent, proc)] + ([] if args.shared_receiver else [(base_parent, base_proc)])
    transport = _transport(url, prefix, users["sender"])
    ours, base, first_peak = [], [], 0
    try:
        for rep in range(args.repeats + 1):  # rep 0 is the warm-up
            b = _baseline_once(raw, base_parent, base_proc, baseline_key, payload)
            o = await _ours_once(transport, parent, proc, channel, state, key, seq=rep, chunk_bytes=args.chunk_bytes)
            if o["fingerprint"] != expected_fp or o["size"] != size:
                raise RuntimeError("received state differs from the sent one")
            if rep:
                ours.append(o)
                base.append(b)
            else:
                first_peak = o["peak"]
        for conn, p in receivers:
            conn.send(("stop",))
            p.join(30)
    finally:
        for _, p in receivers:
            if p.is_alive():
                p.terminate()
        await transport.close()
        raw.delete(*cleanup)
        for user in users.values():
            if user is not None:
                raw.execute_command("ACL", "DELUSER", user[0])
        raw.close()
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    mb = size / 1e6
    row = {
        "params": params,
        "bytes": size,
        "ours_mb_s": mb / med(ours, "total"),
        "baseline_mb_s": mb / med(base, "total"),
        "ours_s": med(ours, "total"),
        "baseline_s": med(base, "total"),
        "pack_s": med(ours, "pack"),
        "send_s": med(ours, "send"),
        "complete_s": med(ours, "complete"),
        "unpack_s": med(ours, "unpack"),
        "set_s": med(base, "set"),
        "get_s": med(base, "get"),
        "peak_rss_bytes": max([first_peak] + [r["peak"] for r in ours]),
        "baseline_peak_rss_bytes": max(r["peak"] for r in base),
    }
    row["ratio"] = row["ours_mb_s"] / row["baseline_mb_s"]
    row["peak_x_model"] = row["peak_rss_bytes"] / size
    # transport alone: bytes in, verified bytes out (no pack/unpack), vs the same baseline
    row["transport_s"] = row["complete_s"] - row["pack_s"]
    row["transport_ratio"] = row["baseline_s"] / row["transport_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench exchange", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1M and 25M parameters only, 3 repeats")
    ap.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="recorded only: pack_state/unpack_state work on CPU tensors",
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats after one warm-up (default 7, quick 3)")
    ap.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument(
        "--no-acl",
        dest="acl",
        action="store_false",
        help="send and receive as the admin user, not as two nodes' ACL users (peers.acl)",
    )
    ap.add_argument(
        "--relay",
        action="store_true",
        help="through the platform's websocket relay (an embedded platform in a daphne process) instead of Redis",
    )
    ap.add_argument("--chunk-kib", type=int, default=None, help="chunk size (default: send_payload's)")
    ap.add_argument(
        "--shared-receiver",
        action="store_true",
        help="the baseline's GET runs in our receiver's process (the earlier method)",
    )
    ap.add_argument(
        "--params",
        type=int,
        action="append",
        default=None,
        help="model size to run (repeatable; default 1M, 25M and 100M, quick: 1M and 25M)",
    )
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    if args.repeats < 3:
        ap.error("--repeats must be >= 3")
    args.chunk_bytes = args.chunk_kib * 1024 if args.chunk_kib else None
    sizes = args.params or (SIZES_QUICK if args.quick else SIZES_FULL)

    args.relay_platform = None
    if args.relay:
        from bench._platform import embedded_platform

        with embedded_platform() as platform:
            args.relay_platform = platform
            rows = [asyncio.run(run_size(p, args, args.url)) for p in sizes]
    else:
        rows = [asyncio.run(run_size(p, args, args.url)) for p in sizes]

    path = (
        "through an embedded platform's websocket relay (daphne)"
        if args.relay
        else f"over real Redis ({args.url.rsplit('@', 1)[-1]}), as two nodes' ACL users"
        if args.acl
        else f"over real Redis ({args.url.rsplit('@', 1)[-1]}), as its admin user"
    )
    transport_name = "RelayTransport" if args.relay else "RedisChannelTransport"
    print(
        f"exchange: one state dict A -> B {path}, "
        f"receiver in its own process; median of {args.repeats} repeats after 1 warm-up"
    )
    print(f"ours = pack_state + send_payload/{transport_name} + Reassembler + unpack_state (validated);")
    print("baseline = redis-py SET + GET of the same payload bytes (bytes only, no (un)packing)")
    print()
    hdr = (
        f"{'params':>11} {'MB':>7} {'ours MB/s':>10} {'base MB/s':>10} {'ratio':>6} | {'pack':>6} "
        f"{'xfer':>6} {'unpack':>6} {'SET':>6} {'GET':>6} | {'xfer ratio':>10} | {'peak RSS':>9} {'x model':>7}"
    )
    print(hdr)
    for r in rows:
        print(
            f"{r['params']:>11,} {r['bytes'] / 1e6:>7.1f} {r['ours_mb_s']:>10.1f} {r['baseline_mb_s']:>10.1f} "
            f"{r['ratio']:>6.2f} | {r['pack_s']:>6.3f} {r['transport_s']:>6.3f} {r['unpack_s']:>6.3f} "
            f"{r['set_s']:>6.3f} {r['get_s']:>6.3f} | {r['transport_ratio']:>10.2f} | "
            f"{r['peak_rss_bytes'] / 1e6:>7.0f}MB {r['peak_x_model']:>7.2f}"
        )
    print()
    print("times in s; xfer = first chunk sent .. payload reassembled and sha256-checked in the receiver;")
    print("xfer ratio = baseline time / xfer time (transport alone vs SET+GET); peak RSS = receiver's")
    print("VmHWM above its RSS before the transfer (target <= 3x model)")
    last = rows[-1]
    result = {
        "bench": "exchange",
        "metric": "MB/s",
        "value": round(last["ours_mb_s"], 2),
        "baseline": round(last["baseline_mb_s"], 2),
        "ratio": round(last["ratio"], 4),
        "target": (">= 0.3" if args.relay else ">= 0.8") + " at every size; peak RSS <= 3x model",
        "device": args.device,
        "quick": bool(args.quick),
        "repeats": args.repeats,
        "min_ratio": round(min(r["ratio"] for r in rows), 4),
        "max_peak_x_model": round(max(r["peak_x_model"] for r in rows), 3),
        "chunk_bytes": args.chunk_bytes,
        "shared_receiver": bool(args.shared_receiver),
        "as_node_acl_users": bool(args.acl) and not args.relay,
        "path": "websocket relay (embedded platform)" if args.relay else "peers' Redis",
        "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
