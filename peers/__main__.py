"""Command line of the peer: `python -m peers hw|join|shards|simulate`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path


def cmd_hw(args) -> int:
    from peers.hw import detect_hardware

    print(json.dumps(detect_hardware(), indent=2))
    return 0


def cmd_shards(args) -> int:
    from peers.data import write_npz_shards

    for path in write_npz_shards(args.out, args.peers, seed=args.seed, partition=args.partition):
        print(path)
    return 0


def pin_platform_key(path: Path, announced: str) -> str | None:
    """Trust on first use: remember the platform's signing key the first time this node joins
    and refuse a different one later (None, logged): round plans are checked against it."""
    log = logging.getLogger("peers")
    if path.exists():
        pinned = path.read_text().strip()
        if pinned != announced:
            log.error(
                "the platform's signing key changed since this node first joined (%s…, now %s…); "
                "if its operator rotated it, delete %s and join again",
                pinned[:12],
                announced[:12],
                path,
            )
            return None
        return pinned
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(announced + "\n")
    return announced


async def _join(args) -> int:
    from peers.attacks import make_peer
    from peers.client import PlatformClient, PlatformError
    from peers.data import load_local_data
    from peers.hw import detect_hardware
    from peers.stats import collect
    from peers.training import select_device
    from peers.transport.redis import NodeCredentials, RedisChannelTransport
    from peers.transport.relay import RelayTransport, relay_url
    from peers.wire.signing import NodeKey

    log = logging.getLogger("peers")
    data = load_local_data(args.data, seed=args.seed)
    device = select_device(args.device)
    token_id = args.token.split("_")[1] if args.token.count("_") >= 2 else "default"
    key_path = Path(args.key or Path.home() / ".dfl" / f"node-{token_id}.key")
    key = NodeKey.load_or_create(key_path)
    client = PlatformClient(args.server, args.token)
    try:
        hardware = detect_hardware()
        info = await asyncio.to_thread(client.hello, hardware, key.public_key_hex)
    except PlatformError as exc:
        log.error("%s", exc)
        return 2
    platform_key = pin_platform_key(key_path.with_suffix(".platform"), info["platform_key"])
    if platform_key is None:
        return 2

    def redis_transport(exchange: dict) -> RedisChannelTransport:
        async def renew_credentials() -> tuple[str, str]:  # the exchange restarted and forgot our user
            again = await asyncio.to_thread(client.hello, hardware, key.public_key_hex)
            return again["exchange"]["username"], again["exchange"]["password"]

        return RedisChannelTransport(
            args.redis or exchange["url"],
            prefix=exchange["prefix"],
            credentials=NodeCredentials(exchange["username"], exchange["password"], renew_credentials),
        )

    exchange = info.get("exchange")
    transport: RelayTransport | RedisChannelTransport
    if args.relay or not exchange:
        # Behind a firewall, or a platform without a peers' Redis (the embedded demo): the
        # exchange goes through the platform's own websocket.
        transport = RelayTransport(relay_url(args.server), args.token)
        log.info("exchanging weights through the platform's websocket relay (%s)", transport.url)
    else:
        transport = redis_transport(exchange)
    peer = make_peer(
        info["node_id"], key, data, transport, client, platform_key=platform_key, device=device, attack=args.attack
    )
    try:
        await peer.start_from(await asyncio.to_thread(client.current_plans))
    except PlatformError as exc:
        log.warning("could not fetch the current plans (%s); waiting for the next ones", exc)
    log.info(
        "node %s (%s) joined %s: %d training samples on %s, listening on %s",
        info["node_id"],
        info["name"],
        args.server,
        data.samples,
        device,
        info["channel"],
    )

    async def heartbeats():
        while True:
            await asyncio.sleep(info.get("heartbeat_s", 20))
            try:
                await client.heartbeat(collect(peer.activity))
            except PlatformError as exc:
                log.warning("heartbeat failed: %s", exc)

    beat = asyncio.create_task(heartbeats())
    try:
        await peer.run(max_jobs=args.max_jobs)
    finally:
        beat.cancel()
        await transport.close()
    return 0


def cmd_join(args) -> int:
    return asyncio.run(_join(args))


def cmd_simulate(args) -> int:
    from peers.simulate import SimConfig, simulate_cli

    if "LOG_LEVEL" not in os.environ:  # the progress display replaces the peers' per-round lines
        logging.getLogger("peers").setLevel(logging.WARNING)
    cfg = SimConfig(
        peers=args.peers,
        topology=args.topology,
        rounds=args.rounds,
        partition=args.partition,
        local_steps=args.local_steps,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        model=args.model,
        hidden=args.hidden,
        batch_size=args.batch_size,
        rule=args.rule,
        rule_params=args.rule_params,
        seed=args.seed,
        device=args.device,
        degree=args.degree,
        every_k=args.every_k,
        dynamic_base=args.dynamic_base,
        secagg=args.secagg,
        secagg_tree_group=args.secagg_tree,
        attack=args.attack,
        attackers=args.attackers,
        dp_clip=args.dp_clip,
        dp_noise=args.dp_noise,
        dp_epsilon=args.dp_epsilon,
        dp_level=args.dp_level,
    )
    try:
        return simulate_cli(cfg, as_json=args.json)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    # Idle OpenMP threads must not spin: a peer shares its cores with its own transport.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from peers.attacks import ATTACK_MODES

    parser = argparse.ArgumentParser(prog="python -m peers", description="Decentralized federated learning peer.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("hw", help="print this machine's hardware as JSON").set_defaults(func=cmd_hw)

    join = sub.add_parser("join", help="join the platform and train on local data")
    join.add_argument("--server", required=True, help="platform URL, e.g. https://dfl.example.org")
    join.add_argument("--token", default=os.environ.get("DFL_NODE_TOKEN"), help="node API token (or DFL_NODE_TOKEN)")
    join.add_argument("--data", required=True, help="local data: file.npz, file.csv, or digits:I/N")
    join.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    join.add_argument("--key", help="Ed25519 key file (created if missing; default ~/.dfl/node-<id>.key)")
    join.add_argument("--redis", help="the exchange's Redis address, if not the one the platform announces")
    join.add_argument(
        "--relay",
        action="store_true",
        help="exchange weights through the platform's websocket (its HTTPS port only) instead of its Redis",
    )
    join.add_argument("--max-jobs", type=int, default=None, help="exit after this many finished jobs")
    join.add_argument("--seed", type=int, default=0, help="seed of the local train/eval split")
    join.add_argument("--attack", choices=ATTACK_MODES, default="none", help="simulate a Byzantine peer")
    join.set_defaults(func=cmd_join)

    shards = sub.add_parser("shards", help="write digits shards as .npz files (demo data)")
    shards.add_argument("--out", required=True)
    shards.add_argument("--peers", type=int, required=True)
    shards.add_argument("--partition", default="iid", help="iid or dirichlet:ALPHA")
    shards.add_argument("--seed", type=int, default=0)
    shards.set_defaults(func=cmd_shards)

    sim = sub.add_parser("simulate", help="run a whole federation in this process (no platform)")
    sim.add_argument("--peers", type=int, default=16)
    sim.add_argument(
        "--topology", default="ring", help="ring, torus, random_regular (expander), complete, star or dynamic"
    )
    sim.add_argument("--rounds", type=int, default=30)
    sim.add_argument("--partition", default="dirichlet:0.5", help="iid, dirichlet:ALPHA, shards:K or quantity:SIGMA")
    sim.add_argument("--local-steps", type=int, default=20)
    sim.add_argument("--lr", type=float, default=0.1)
    sim.add_argument(
        "--lr-schedule",
        default="cosine",
        choices=("constant", "cosine"),
        help="cosine: decay from --lr to lr/rounds over the rounds",
    )
    sim.add_argument("--batch-size", type=int, default=32)
    sim.add_argument("--model", default="mlp", help="mlp, logreg, cnn or resnet")
    sim.add_argument("--hidden", type=int, default=64)
    sim.add_argument(
        "--rule",
        default="mean",
        help="aggregation rule of peers.rules (mean, median, krum, ...), or fedavg, fedprox, fedadam with --topology star",
    )
    sim.add_argument("--rule-params", type=json.loads, default={}, help="JSON object, e.g. '{\"f\": 1}' for krum")
    sim.add_argument("--degree", type=int, default=None, help="random_regular/dynamic degree (default 4)")
    sim.add_argument("--every-k", type=int, default=5, help="dynamic: redraw the graph every k rounds")
    sim.add_argument("--dynamic-base", default="random_regular", help="dynamic: random_regular, ring or torus")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sim.add_argument("--attack", choices=ATTACK_MODES, default="none", help="what the --attackers do")
    sim.add_argument("--attackers", type=int, default=0, help="peers that attack (accuracy is the honest peers')")
    sim.add_argument("--dp-clip", type=float, default=1.0, help="client-level DP: L2 bound of a round's update")
    sim.add_argument("--dp-noise", type=float, default=0.0, help="client-level DP noise multiplier (0: off)")
    sim.add_argument(
        "--dp-level", choices=("client", "sample"), default="client", help="client: noised updates; sample: DP-SGD"
    )
    sim.add_argument("--dp-epsilon", type=float, default=0.0, help="privacy budget: stop at the last round within it")
    sim.add_argument(
        "--secagg", action="store_true", help="secure aggregation of the uploads (star rules: fedavg, fedprox, fedadam)"
    )
    sim.add_argument(
        "--secagg-tree",
        type=int,
        default=0,
        metavar="GROUP_SIZE",
        help="with --secagg: aggregate over a tree of groups of GROUP_SIZE (each with an aggregator), 0: the star",
    )
    sim.add_argument("--json", action="store_true", help="print one JSON summary line at the end")
    sim.set_defaults(func=cmd_simulate)

    args = parser.parse_args(argv)
    if args.command == "join" and not args.token:
        parser.error("--token (or DFL_NODE_TOKEN) is required")
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
