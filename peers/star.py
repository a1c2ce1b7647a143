"""Live centralized baselines on the star: FedAvg, FedProx and FedAdam in a real job.

A job whose rule is one of ``peers.protocol.SERVER_RULES`` runs on the star, and its signed
plans name the round's aggregator (``RoundPlan.aggregator``, the star's centre: the first
member planned). Every member trains (FedProx: with the proximal term towards the model the
round began from, the last global one; ``peers.centralized.proximal``). Then:

* a leaf sends its model to the aggregator (and to the job's validator, as in gossip), waits
  for the aggregator's global model of the round and adopts it; when none arrives intact before
  its deadline it keeps its own model and its report says why (``rejected``);
* the aggregator waits for the leaves' models until a cut-off that leaves time to answer before
  the deadline, averages its own and the ones that arrived with the platform-signed weights of
  its plan (the star's row: equal weights; never the samples peers say they hold), renormalised
  over those that arrived, applies the server rule (FedAdam: a server Adam step on the averaged
  delta, its moments kept across rounds) and sends the global model to every leaf.

The global model travels as a signed snapshot (full weights, seq ``GLOBAL_SEQ`` of the round)
over the same chunk transport and decoders as every other transfer.

With secure aggregation (``config.secure_aggregation``) the aggregator is the one recipient of
gossip SecAgg (``peers.secagg.gossip``) and the leaves its neighbourhood: a leaf sends it its
model masked with masks shared among the leaves (``Peer._send_masked``; its plan names the
aggregator's neighbourhood), the aggregator learns only their sum (``Peer._secure_neighbours``:
every round one unmask round trip to the leaves whose models arrived, for the shares of their
self-mask seeds and a dropped leaf's pairwise masks) and takes the equal-weight mean
``(x_hub + sum) / (1 + arrived)`` before the server rule. Nothing goes to a validator (the form
refuses one), and the global model goes back as without masks: every leaf receives it. With
``config.secagg_tree_group`` the leaves mask in groups instead (``peers.star_tree``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from peers.centralized import FedAdam, proximal
from peers.protocol import NO_WEIGHTS_BEFORE_DEADLINE, RoundPlan
from peers.rules import get_rule
from peers.wire.codec import WeightsDecoder
from peers.wire.exchange import send_payload_to_each
from peers.wire.format import WeightsRejected, all_finite

log = logging.getLogger("peers.star")
# Below, ``peer: Any`` is a peers.worker.Peer and ``state: Any`` its JobState: the worker imports
# this module, so their types are not imported back (no cycle).

GLOBAL_SEQ = 4  # the aggregator's global model of a round: after the uploads (1), catch-up (2), recovery (3)
HUB_CUTOFF_MARGINS = 3  # the aggregator stops waiting this many deadline margins before the deadline
DEFAULT_MU = 0.01  # as the simulator's defaults (peers.simulate.run_fedavg)
DEFAULT_SERVER_LR = 0.01


@dataclass
class StarState:
    """What a member keeps about a star job between rounds."""

    start: dict[str, torch.Tensor] | None = None  # the model this round began from (the last global one)
    server: FedAdam | None = None  # as the aggregator with FedAdam: its moments, across rounds
    globals: dict[int, dict[int, bytes | bytearray]] = field(default_factory=dict)  # round -> sender -> payload


@dataclass
class Exchanged:
    """A star round's outcome, for the member's report."""

    model: dict[str, torch.Tensor]  # the model it ends the round with
    bytes_sent: int
    bytes_received: int
    rejected: dict[int, str]  # sender -> why its model was not used
    used: int  # the neighbours' models it used: the leaves' averaged (the aggregator), 1 when a leaf adopted the global


def is_star(plan: RoundPlan) -> bool:
    return bool(plan.aggregator)


@contextlib.contextmanager
def local_training(plan: RoundPlan, state: Any) -> Iterator[None]:
    """Around a member's local training: remember the model the round begins from and, with
    FedProx, pull the training towards it (mu/2 * ||w - w_start||^2)."""
    star = state.star
    star.start = state.trainer.state()
    cfg = plan.config
    mu = float(cfg.rule_params.get("mu", DEFAULT_MU)) if cfg.rule == "fedprox" else 0.0
    with proximal(state.trainer.model, star.start, mu) if mu else contextlib.nullcontext():
        yield


async def exchange(peer: Any, plan: RoundPlan, state: Any, local: dict) -> Exchanged:
    """The round's exchange after training: as the aggregator or as a leaf."""
    if plan.aggregator == peer.node_id:
        return await _aggregate(peer, plan, state, local)
    return await _leaf(peer, plan, state, local)


async def _leaf(peer: Any, plan: RoundPlan, state: Any, local: dict) -> Exchanged:
    hub = plan.aggregator
    if not any(n.node_id == hub for n in plan.neighbours):
        log.warning("node %s: its plan does not link it to the aggregator %s; it keeps its model", peer.node_id, hub)
        return Exchanged(local, 0, 0, {}, 0)
    if plan.config.secure_aggregation:  # masked for the aggregator's sum over the leaves
        bytes_sent = await peer._send_masked(plan, state, local)
    else:  # the aggregator only (and the validator)
        bytes_sent = await peer._send_to_neighbours(plan, local)
    return await adopt_global(peer, plan, state, local, bytes_sent)


async def adopt_global(
    peer: Any,
    plan: RoundPlan,
    state: Any,
    local: dict,
    bytes_sent: int,
    rejected: dict[int, str] | None = None,
    bytes_received: int = 0,
) -> Exchanged:
    """Wait for the aggregator's global model of the round and adopt it; keep ``local`` when
    none arrives intact before the deadline (``rejected`` says why, with what the caller adds)."""
    hub = plan.aggregator
    star = state.star
    await _wait(
        peer,
        plan,
        state,
        lambda: hub in star.globals.get(plan.round, {}) or hub in state.rejected.get(plan.round, {}),
        plan.deadline - peer.deadline_margin_s,
    )
    payload = star.globals.pop(plan.round, {}).get(hub)
    rejected = {**(rejected or {}), **state.rejected.pop(plan.round, {})}
    state.payloads.pop(plan.round, None)  # nothing else is for this round any more
    if payload is None:
        rejected.setdefault(hub, NO_WEIGHTS_BEFORE_DEADLINE)
        return Exchanged(local, bytes_sent, bytes_received, rejected, 0)
    bytes_received += len(payload)
    try:
        model = WeightsDecoder(state.spec, state.max_payload_bytes).decode(payload)
    except WeightsRejected as exc:
        log.warning("node %s rejected the global model of round %s: %s", peer.node_id, plan.round, exc.reason)
        rejected[hub] = exc.reason
        return Exchanged(local, bytes_sent, bytes_received, rejected, 0)
    return Exchanged(model, bytes_sent, bytes_received, rejected, 1)


async def _aggregate(peer: Any, plan: RoundPlan, state: Any, local: dict) -> Exchanged:
    secure = plan.config.secure_aggregation
    bytes_sent = 0 if secure else await peer._send_to_neighbours(plan, local, targets=plan.validators)
    leaves = {n.node_id for n in plan.neighbours}
    # With secure aggregation, a margin more for the unmask round trip (every round: the self masks).
    cutoff = plan.deadline - (HUB_CUTOFF_MARGINS + (1 if secure else 0)) * peer.deadline_margin_s

    def heard_all() -> bool:
        return leaves <= set(state.payloads.get(plan.round, {})) | set(state.rejected.get(plan.round, {}))

    await _wait(peer, plan, state, heard_all, cutoff)
    received = state.payloads.pop(plan.round, {})
    rejected = state.rejected.pop(plan.round, {})
    finite = all(all_finite(t) for t in local.values())
    # With secure aggregation, equal weights: its own model and the leaves' mean, by count.
    weighted = [(1.0 if secure else plan.self_weight, local)] if finite else []
    own = len(weighted)
    if secure:  # the sum of the leaves' masked models, unmasked with the leaves' help
        give_up = plan.deadline - HUB_CUTOFF_MARGINS * peer.deadline_margin_s
        weighted += await peer._secure_neighbours(plan, state, local, received, rejected, give_up)
    else:
        weighted += peer._decode_neighbours(plan, state, received, rejected)
    used = int(sum(w for w, _ in weighted[own:])) if secure else len(weighted) - own
    for n in plan.neighbours:
        if n.node_id not in received:
            rejected.setdefault(n.node_id, NO_WEIGHTS_BEFORE_DEADLINE)
    bytes_received = sum(len(p) for p in received.values())
    if not weighted:
        return Exchanged(local, bytes_sent, bytes_received, rejected, 0)
    # Weights from the signed plan (or the counts), renormalised over the models that arrived.
    average = get_rule("mean")([s for _, s in weighted], [w for w, _ in weighted])
    return await finish(peer, plan, state, local, average, Exchanged(local, bytes_sent, bytes_received, rejected, used))


async def finish(peer: Any, plan: RoundPlan, state: Any, local: dict, average: dict, done: Exchanged) -> Exchanged:
    """As the aggregator: the server rule on the round's average (FedAdam: a server Adam step
    from the model the round began from) and the global model to every member linked to it."""
    star = state.star
    start = star.start if star.start is not None else local
    if plan.config.rule == "fedadam":
        if star.server is None:
            star.server = FedAdam(lr=float(plan.config.rule_params.get("server_lr", DEFAULT_SERVER_LR)))
        model = star.server.step(start, average)
    else:
        model = average
    done.model = model
    if not all(all_finite(t) for t in model.values()):
        log.warning("aggregator %s: the global model of round %s is not finite; not sent", peer.node_id, plan.round)
        return done
    done.bytes_sent += await _send_global(peer, plan, state, model)
    return done


async def _send_global(peer: Any, plan: RoundPlan, state: Any, model: dict) -> int:
    """The global model to every leaf, as a signed snapshot (no leaf's decoder base changes)."""
    payload = state.encoder.snapshot(model, plan.round)
    sent, failed = await send_payload_to_each(
        peer.transport,
        plan.neighbours,
        job_id=plan.job_id,
        round=plan.round,
        sender=peer.node_id,
        seq=GLOBAL_SEQ,
        payload=payload,
        key=peer.key,
    )
    for n, error in failed:
        log.warning("aggregator %s could not send the global model to %s: %s", peer.node_id, n.node_id, error)
    return sent


async def _wait(peer: Any, plan: RoundPlan, state: Any, done: Callable[[], bool], give_up: float) -> None:
    """Until ``done()``, ``give_up`` (unix seconds) or a later plan of the job."""
    while True:
        remaining = give_up - time.time()
        if done() or remaining <= 0 or peer._superseded(plan):
            return
        state.arrived.clear()
        try:
            await asyncio.wait_for(state.arrived.wait(), timeout=remaining)
        except TimeoutError:
            return
