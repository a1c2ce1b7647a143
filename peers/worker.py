"""A peer: receives round plans, trains on its own data, swaps weights with its neighbours,
mixes them (decentralized periodic averaging), evaluates and reports. Raw data never leaves.

The peer is transport-agnostic: `transport` is anything with async send/receive (the Redis
channel-layer client, the in-memory transport, or the platform's own channel layer in the
embedded demo) and `reporter` anything with `async report(message: dict)`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from peers import star, star_tree
from peers.data import LocalData
from peers.models import build_model
from peers.privacy import ClientDPAccountant, privatize
from peers.protocol import (
    NO_WEIGHTS_BEFORE_DEADLINE,
    SERVER_RULES,
    JobEvent,
    ModelRequest,
    Neighbour,
    PeerReport,
    ProtocolError,
    RoundPlan,
    ScoreReport,
    SecAggRecover,
    WeightsChunk,
    decode,
    event_bytes,
    from_message,
    node_channel,
    plan_bytes,
    recover_bytes,
    request_bytes,
    to_message,
)
from peers.rules import get_rule
from peers.secagg import gossip
from peers.secagg.fixedpoint import decode as decode_fixed
from peers.secagg.fixedpoint import encode as encode_fixed
from peers.stats import Activity
from peers.training import LocalTrainer, check_lr_schedule, scheduled_lr
from peers.transport.base import Transport
from peers.validator import Validator
from peers.wire.codec import WeightsDecoder, WeightsEncoder
from peers.wire.exchange import Completed, Reassembler, Rejected, send_payload, send_payload_to_each
from peers.wire.format import WeightsRejected, all_finite, describe, pack_state, payload_bound, sha256_hex
from peers.wire.signing import NodeKey, verify

log = logging.getLogger("peers.worker")

EARLY_CHUNKS_PER_JOB = 1000  # chunks kept for a job whose plan has not arrived yet
# Round updates are seq 1 of their round; a model.request is answered with seq 2 of the round
# before, which never collides with an update (and passes the replay check after one).
ROUND_SEQ = 1
CATCH_UP_SEQ = 2
# With secure aggregation, a neighbour's answer to a SecAggRecover: seq 3 of the round.
RECOVERY_SEQ = 3
SECAGG_NO_RECOVERY = "secure aggregation: the masks could not be removed (too few neighbours helped unmask the sum)"
CATCH_UP_WAIT_S = 15.0
UPLOAD_ATTEMPTS = 30  # the validator's final model, while the job's last round is closing


@dataclass
class JobState:
    """What a peer keeps about one job between rounds."""

    trainer: LocalTrainer
    reassembler: Reassembler
    spec: dict
    encoder: WeightsEncoder
    max_payload_bytes: int
    rule: str = "mean"
    rule_params: dict = field(default_factory=dict)
    last_round: int = 0  # last round this peer completed
    neighbours: dict[int, str] = field(default_factory=dict)  # node id -> public key, latest plan
    catch_up: dict[int, bytes | bytearray] = field(default_factory=dict)  # sender -> full model (CATCH_UP_SEQ)
    decoders: dict[int, WeightsDecoder] = field(default_factory=dict)  # sender -> its decoder
    payloads: dict[int, dict[int, bytes | bytearray]] = field(default_factory=dict)  # round -> sender -> bytes
    rejected: dict[int, dict[int, str]] = field(default_factory=dict)  # round -> sender -> reason
    recoveries: dict[int, dict[int, bytes | bytearray]] = field(default_factory=dict)  # round -> holder -> answer
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    privacy: ClientDPAccountant | None = None  # client-level DP on: what this peer has spent
    round_start: dict | None = None  # the model the round began from (what DP clips the update against)
    consensus: dict | None = None  # as the job's validator: the last round's consensus (the next reference)
    validator: Any = None  # as the job's validator: its peers.validator.Validator
    star: star.StarState = field(default_factory=star.StarState)  # centralized baselines (peers.star)
    # Secure aggregation or client-level DP: this peer's model leaves only masked or noised, so it
    # answers no catch-up request (the model it holds mid-round is the one it trained, in the clear).
    releases_protected_only: bool = False

    def decoder(self, sender: int) -> WeightsDecoder:
        if sender not in self.decoders:
            self.decoders[sender] = WeightsDecoder(self.spec, self.max_payload_bytes)
        return self.decoders[sender]


@dataclass
class MaskedSend:
    """What a peer remembers of a masked model it sent (secure aggregation), to answer the
    recipient's one unmask request for that round (the self-mask seed is not kept)."""

    others: dict[int, bytes]  # the recipient's other senders -> X25519 public key
    length: int
    recipient_key: str  # Ed25519 hex: the request must be signed with it
    channel: str
    threshold: int  # shares of a self-mask seed that unmask it (gossip.share_threshold)
    answered: bool = False


class Reporter(Protocol):
    """Where a peer posts its round reports: the platform's API client, or an in-memory driver."""

    async def report(self, message: dict) -> Any: ...


class Peer:
    def __init__(
        self,
        node_id: int,
        key: NodeKey,
        data: LocalData,
        transport: Transport,
        reporter: Reporter,
        *,
        platform_key: str,
        device: str | torch.device = "cpu",
        deadline_margin_s: float = 2.0,
    ):
        self.node_id = node_id
        self.platform_key = platform_key  # hex Ed25519 public key; every round plan must carry its signature
        self.key = key
        self.data = data
        self.transport = transport
        self.reporter = reporter
        self.device = device
        self.deadline_margin_s = deadline_margin_s
        self.channel = node_channel(node_id)
        self.jobs: dict[int, JobState] = {}
        self.early_chunks: dict[int, list[WeightsChunk]] = {}
        self.plans: asyncio.Queue[RoundPlan | None] = asyncio.Queue()  # None: wake up, a job ended
        self.newest_round: dict[int, int] = {}  # job id -> the latest round the platform planned
        self.first_open_round: dict[int, int] = {}  # job id -> rounds before it were closed (at start)
        self._plan_signatures: dict[tuple[int, int], bytes] = {}  # (job, round) -> the plan it accepted
        self._background: set[asyncio.Task] = set()  # running tasks nobody awaits (kept from GC)
        self.jobs_done = 0
        self.final_models: dict[int, bytes] = {}  # as a validator: job id -> the final consensus (safetensors)
        self.activity = Activity()  # what the heartbeat tells the operator's console (peers.stats)
        self._masked_sends: dict[tuple[int, int, int], MaskedSend] = {}  # (job, round, recipient) -> it
        self._x25519: tuple[NodeKey, gossip.Agreements] | None = None  # secure aggregation: see _agreements

    # -- main loops ---------------------------------------------------------------------------
    async def run(self, max_jobs: int | None = None) -> None:
        """Serve round plans until `max_jobs` jobs have finished (forever when None)."""
        receiver = asyncio.create_task(self._receive_loop())
        try:
            while max_jobs is None or self.jobs_done < max_jobs:
                plan_task = asyncio.create_task(self.plans.get())
                done, _ = await asyncio.wait({plan_task, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if receiver in done:
                    plan_task.cancel()
                    receiver.result()  # re-raise what stopped the receiver
                    return
                plan = plan_task.result()
                if plan is None:
                    continue  # a job ended without a plan (job.event): count it
                self.activity.begin(plan.job_id, plan.round, plan.role)
                try:
                    await self.run_round(plan)
                except Exception as exc:  # one bad round must not take the peer down
                    log.exception("node %s: round %s of job %s failed", self.node_id, plan.round, plan.job_id)
                    self.activity.failed(f"round {plan.round} of job {plan.job_id}: {exc}")
                finally:
                    self.activity.idle()
        finally:
            receiver.cancel()

    def _in_background(self, coroutine) -> None:
        """Run a coroutine nobody awaits, keeping a reference until it ends (the event loop keeps
        only weak ones, so an unreferenced task can be garbage-collected mid-run)."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _receive_loop(self) -> None:
        failures = 0
        while True:
            try:
                message = await self.transport.receive(self.channel)
                failures = 0
            except Exception as exc:
                # Redis restarting or a network blip: keep the peer alive and retry.
                failures += 1
                log.warning("node %s: receive failed (%s); retrying", self.node_id, exc)
                await asyncio.sleep(min(0.5 * failures, 5.0))
                continue
            try:
                msg = from_message(message)
            except ProtocolError as exc:
                log.warning("node %s dropped a malformed message: %s", self.node_id, exc)
                continue
            if isinstance(msg, RoundPlan):
                if self._plan_is_authentic(msg):
                    self.newest_round[msg.job_id] = max(msg.round, self.newest_round.get(msg.job_id, 0))
                    if msg.job_id in self.jobs:
                        self.jobs[msg.job_id].arrived.set()  # a round still waiting may be superseded
                    await self.plans.put(msg)
            elif isinstance(msg, WeightsChunk):
                self._on_chunk(msg)
            elif isinstance(msg, ModelRequest):
                self._in_background(self._answer_model_request(msg))
            elif isinstance(msg, SecAggRecover):
                self._in_background(self._answer_recovery(msg))
            elif isinstance(msg, JobEvent) and msg.event == "ended":
                await self._job_ended(msg)

    async def start_from(self, current: dict) -> None:
        """Take the platform's view at (re)start (``GET node/plans``): rounds before each job's
        current one are closed (a plan for them still in the inbox is skipped), and the
        current signed plans are queued like any received one."""
        for job_id, number in current.get("current_rounds", {}).items():
            self.first_open_round[int(job_id)] = int(number)
        for encoded in current.get("plans", []):
            try:
                plan = decode(base64.b64decode(encoded))
            except (ValueError, ProtocolError) as exc:
                log.warning("node %s: unreadable plan from the platform: %s", self.node_id, exc)
                continue
            if isinstance(plan, RoundPlan) and self._plan_is_authentic(plan):
                self.newest_round[plan.job_id] = max(plan.round, self.newest_round.get(plan.job_id, 0))
                await self.plans.put(plan)

    def _plan_is_authentic(self, plan: RoundPlan) -> bool:
        """Only the platform plans rounds: a plan must be for this node, signed by the key pinned
        at hello, and for a round this node has not been planned yet (else a replay)."""
        if plan.node_id != self.node_id:
            reason = f"it is for node {plan.node_id}"
        elif not verify(self.platform_key, plan_bytes(plan), plan.signature):
            reason = "its signature is not the platform's"
        elif plan.round <= self.newest_round.get(plan.job_id, 0):
            if self._plan_signatures.get((plan.job_id, plan.round)) == plan.signature:
                log.debug(
                    "node %s: plan for job %s round %s sent again; it has it", self.node_id, plan.job_id, plan.round
                )
                return False
            reason = f"round {plan.round} was planned already (replayed)"
        else:
            self._plan_signatures[(plan.job_id, plan.round)] = plan.signature
            return True
        log.warning(
            "node %s refused a round plan for job %s round %s: %s", self.node_id, plan.job_id, plan.round, reason
        )
        return False

    @staticmethod
    def _consent_problem(plan: RoundPlan, node_id: int) -> str | None:
        """Why this plan gives no consent to train on our data (None when it does)."""
        grant = plan.consent
        if (grant.job_id, grant.node_id) != (plan.job_id, node_id):
            return f"the consent grant is for job {grant.job_id} and node {grant.node_id}"
        if grant.dataset != plan.config.dataset:
            return f"the consent grant covers dataset {grant.dataset!r}, the job trains on {plan.config.dataset!r}"
        if grant.expires_at < time.time():
            return "the consent grant has expired"
        return None

    def _on_chunk(self, chunk: WeightsChunk) -> None:
        state = self.jobs.get(chunk.job_id)
        if state is None:
            early = self.early_chunks.setdefault(chunk.job_id, [])
            if len(early) < EARLY_CHUNKS_PER_JOB:
                early.append(chunk)
            return
        result = state.reassembler.feed(chunk)
        if isinstance(result, Completed) and result.seq == CATCH_UP_SEQ:
            state.catch_up[result.sender] = result.payload
            state.arrived.set()
        elif isinstance(result, Completed) and result.seq == star.GLOBAL_SEQ:
            state.star.globals.setdefault(result.round, {})[result.sender] = result.payload
            state.arrived.set()
        elif isinstance(result, Completed) and result.seq == RECOVERY_SEQ:
            state.recoveries.setdefault(result.round, {})[result.sender] = result.payload
            state.arrived.set()
        elif isinstance(result, Completed):
            state.payloads.setdefault(result.round, {})[result.sender] = result.payload
            state.arrived.set()
        elif isinstance(result, Rejected):
            log.warning(
                "node %s rejected weights from %s (round %s): %s",
                self.node_id,
                result.sender,
                result.round,
                result.reason,
            )
            state.rejected.setdefault(result.round, {})[result.sender] = result.reason
            state.arrived.set()

    # -- one round ----------------------------------------------------------------------------
    def _job_state(self, plan: RoundPlan) -> JobState:
        neighbour_keys = {n.node_id: n.public_key for n in plan.neighbours}
        state = self.jobs.get(plan.job_id)
        if state is None:
            cfg = plan.config
            if cfg.num_features != self.data.num_features:
                raise ValueError(
                    f"local data has {self.data.num_features} features, the job expects {cfg.num_features}"
                )
            if cfg.rule not in SERVER_RULES:  # those run on the star (peers.star)
                get_rule(cfg.rule)  # unknown rules and schedules fail here, before any training
            check_lr_schedule(cfg.lr_schedule)
            model = build_model(
                cfg.model,
                self.data.num_features,
                cfg.num_classes,
                hidden=cfg.hidden,
                seed=cfg.seed,
                input_shape=self.data.input_shape,
            )
            trainer = make_trainer(model, self.data, cfg, device=self.device, seed=cfg.seed + self.node_id)
            spec = describe(trainer.state())
            # Hold no more per transfer than this model could need, whatever the plan allows.
            max_bytes = min(plan.max_payload_bytes, payload_bound(spec))
            state = self.jobs[plan.job_id] = JobState(
                trainer,
                Reassembler(neighbour_keys, plan.job_id, max_bytes),
                spec,
                WeightsEncoder(cfg.compression),
                max_bytes,
                rule=cfg.rule,
                rule_params=dict(cfg.rule_params),
                privacy=ClientDPAccountant(cfg.dp_noise, cfg.dp_epsilon, cfg.dp_delta)
                if cfg.dp_noise > 0 and cfg.dp_level == "client"
                else None,
                releases_protected_only=cfg.secure_aggregation or (cfg.dp_noise > 0 and cfg.dp_level == "client"),
            )
        state.neighbours = neighbour_keys
        state.reassembler.trust(neighbour_keys)
        return state

    async def run_round(self, plan: RoundPlan) -> None:
        if plan.deadline <= time.time() or self._superseded(plan):
            # A plan that waited in our inbox while we were down: the platform has moved on.
            log.info(
                "node %s: round %s of job %s closed while this peer was away; skipping it",
                self.node_id,
                plan.round,
                plan.job_id,
            )
            if plan.round >= plan.total_rounds:
                self._finish(plan.job_id)
            return
        no_consent = self._consent_problem(plan, self.node_id)
        if no_consent is not None:  # checked before the data is touched
            log.warning(
                "node %s will not train for job %s round %s: %s", self.node_id, plan.job_id, plan.round, no_consent
            )
            return
        started = time.perf_counter()
        try:
            state = self._job_state(plan)
            for chunk in self.early_chunks.pop(plan.job_id, []):  # arrived before our plan did
                self._on_chunk(chunk)
        except Exception as exc:
            log.error("node %s cannot take part in job %s: %s", self.node_id, plan.job_id, exc)
            return
        if plan.role == "validate":
            await self._validate_round(plan, state)
            return
        if not self._within_privacy_budget(plan, state):
            # The data owner's guarantee, whatever the platform plans: no release past the budget.
            log.warning(
                "node %s: job %s's privacy budget (epsilon %s) is spent; it trains no more rounds",
                self.node_id,
                plan.job_id,
                plan.config.dp_epsilon,
            )
            self._finish(plan.job_id)
            return
        if state.last_round < plan.round - 1:
            await self._catch_up(plan, state)  # joined late or restarted: start from a neighbour's model
        state.reassembler.expire(plan.round - 1)
        cfg = plan.config

        steps = cfg.local_steps
        state.trainer.set_lr(scheduled_lr(cfg.lr, cfg.lr_schedule, plan.round, plan.total_rounds))
        # Training runs off the event loop so chunks keep flowing; zero steps need no thread hop.
        self._before_training(plan, state)
        training_started = time.perf_counter()
        with star.local_training(plan, state) if star.is_star(plan) else contextlib.nullcontext():
            trained = await asyncio.to_thread(state.trainer.train, steps) if steps else state.trainer.train(0)
        self.activity.trained(steps, time.perf_counter() - training_started)
        local = state.trainer.state()
        if star.is_star(plan):  # a centralized baseline: the aggregator's global model, not gossip
            exchange = star_tree.exchange if plan.config.secagg_tree_group else star.exchange
            done = await exchange(self, plan, state, local)
            mixed, rejected, bytes_sent = done.model, done.rejected, done.bytes_sent
            bytes_received, mixed_count = done.bytes_received, done.used
        else:
            mixed, rejected, bytes_sent, bytes_received, mixed_count = await self._gossip(plan, state, local)
        await self._close_round(
            plan, state, started, trained, local, mixed, rejected, bytes_sent, bytes_received, mixed_count
        )

    async def _gossip(
        self, plan: RoundPlan, state: JobState, local: dict
    ) -> tuple[dict, dict[int, str], int, int, int]:
        """Send this round's model to the neighbours and mix theirs: (mixed model, rejected
        senders, bytes sent, bytes received, models mixed)."""
        cfg = plan.config
        if cfg.secure_aggregation:
            bytes_sent = await self._send_masked(plan, state, local)
        else:
            bytes_sent = await self._send_to_neighbours(plan, local)

        await self._wait_for_neighbours(plan, state)
        received = state.payloads.pop(plan.round, {})
        rejected = state.rejected.pop(plan.round, {})
        if cfg.secure_aggregation:  # equal weights: own model and the neighbours' mean, by count
            weighted = [(1.0, local), *await self._secure_neighbours(plan, state, local, received, rejected)]
        else:
            weighted = [(plan.self_weight, local), *self._decode_neighbours(plan, state, received, rejected)]
        missing = [n.node_id for n in plan.neighbours if n.node_id not in received and n.node_id not in rejected]
        for sender in missing:
            rejected[sender] = NO_WEIGHTS_BEFORE_DEADLINE
        if not all(all_finite(t) for t in local.values()):
            weighted = weighted[1:]  # our own update blew up: take the neighbours' if any came
        mixed = self._aggregate(state, weighted) if weighted else local
        mixed_count = int(sum(w for w, _ in weighted[1:])) if cfg.secure_aggregation else len(weighted) - 1
        return mixed, rejected, bytes_sent, sum(len(p) for p in received.values()), mixed_count

    async def _close_round(
        self,
        plan: RoundPlan,
        state: JobState,
        started: float,
        trained: Any,
        local: dict,
        mixed: dict,
        rejected: dict[int, str],
        bytes_sent: int,
        bytes_received: int,
        mixed_count: int,
    ) -> None:
        """Adopt the round's model, evaluate it and report the round."""
        steps = plan.config.local_steps
        state.trainer.load_state(mixed)
        state.last_round = plan.round
        evaluation = await asyncio.to_thread(state.trainer.evaluate)
        diverged = not (
            all(all_finite(t) for t in mixed.values())
            and (steps == 0 or math.isfinite(trained.loss))  # no steps, no loss: NaN by design
            and (evaluation.samples == 0 or math.isfinite(evaluation.loss))
        )
        if diverged:
            log.warning(
                "node %s diverged in round %s of job %s (non-finite model or loss)",
                self.node_id,
                plan.round,
                plan.job_id,
            )

        report = PeerReport(
            job_id=plan.job_id,
            round=plan.round,
            node_id=self.node_id,
            # JSON carries no NaN: the numbers become 0.0 and `diverged` says they mean nothing.
            train_loss=_finite(trained.loss),
            eval_loss=_finite(evaluation.loss),
            accuracy=_finite(evaluation.accuracy),
            samples=self.data.samples,
            eval_samples=evaluation.samples,
            model_hash=sha256_hex(pack_state(mixed)),
            bytes_sent=bytes_sent,
            bytes_received=bytes_received,
            duration_s=time.perf_counter() - started,
            rejected=[{"sender": s, "reason": r} for s, r in sorted(rejected.items())],
            diverged=diverged,
            epsilon=privacy_spent(state),
            budget_spent=plan.round < plan.total_rounds and not self._within_privacy_budget(plan, state),
            consensus_distance=_finite(_distance(local, mixed)),
            model_bytes=_dense_bytes(local) * (len(plan.neighbours) + len(plan.validators)) if bytes_sent else 0,
        )
        self.activity.moved(report.bytes_sent, report.bytes_received)
        try:
            await self.reporter.report(to_message(report))
        except Exception as exc:
            if getattr(exc, "status", None) == 409:  # the round closed first (deadline, or we restarted)
                log.info(
                    "node %s: round %s of job %s closed before this report arrived (%s)",
                    self.node_id,
                    plan.round,
                    plan.job_id,
                    exc,
                )
            else:
                log.error("node %s could not report round %s of job %s: %s", self.node_id, plan.round, plan.job_id, exc)
                self.activity.failed(f"report of round {plan.round} of job {plan.job_id}: {exc}")
        log.info(
            "node %s job %s round %s/%s: accuracy %.3f, mixed %d of %d neighbours",
            self.node_id,
            plan.job_id,
            plan.round,
            plan.total_rounds,
            report.accuracy,
            mixed_count,
            len(plan.neighbours),
        )
        if plan.round >= plan.total_rounds or report.budget_spent:
            if report.budget_spent:
                log.info(
                    "node %s: job %s's privacy budget (epsilon %s) allows no round after %s; it stops here",
                    self.node_id,
                    plan.job_id,
                    plan.config.dp_epsilon,
                    plan.round,
                )
            self._finish(plan.job_id)

    def _decode_neighbours(
        self, plan: RoundPlan, state: JobState, received: dict, rejected: dict[int, str]
    ) -> list[tuple[float, dict]]:
        """The neighbours' models that arrived intact, each with its weight in the signed plan;
        one that fails to decode is noted in ``rejected`` with the reason."""
        weighted = []
        for n in plan.neighbours:
            if n.node_id not in received:
                continue
            try:
                weighted.append((n.weight, state.decoder(n.node_id).decode(received[n.node_id])))
            except WeightsRejected as exc:
                log.warning(
                    "node %s rejected weights from %s (round %s): %s", self.node_id, n.node_id, plan.round, exc.reason
                )
                rejected[n.node_id] = exc.reason
        return weighted

    @staticmethod
    def _aggregate(state: JobState, weighted: list[tuple[float, dict]]) -> dict:
        """The job's rule over the neighbourhood that made it (itself + accepted neighbours). With
        `mean` this is x_i <- sum_j W_ij x_j, the weights renormalised over the survivors."""
        weights = [w for w, _ in weighted]
        return get_rule(state.rule)([s for _, s in weighted], weights, **state.rule_params)

    @staticmethod
    def _within_privacy_budget(plan: RoundPlan, state: JobState) -> bool:
        """Whether this round's release keeps the job's epsilon within its budget (no DP or no
        budget: always)."""
        cfg = plan.config
        if cfg.dp_noise <= 0 or cfg.dp_epsilon <= 0:
            return True
        if state.trainer.is_dp_sgd:
            return state.trainer.epsilon(more_steps=cfg.local_steps) <= cfg.dp_epsilon  # type: ignore[attr-defined]
        return state.privacy is None or state.privacy.can_spend()

    def _before_training(self, plan: RoundPlan, state: JobState) -> None:
        """Called with the round's starting model in place: with DP on, keep it (the update is
        clipped against it). The Byzantine peers of peers/attacks.py keep it too."""
        state.round_start = state.trainer.state() if state.privacy is not None else None

    def _outgoing(self, plan: RoundPlan, state: JobState, local: dict) -> tuple[bytes, str] | None:
        """The payload this peer sends its neighbours this round and the sha256 it signs for it;
        None: nothing worth sending. With DP on, the update is clipped and noised first, and the
        release counted. peers/attacks.py overrides this, not the send path."""
        released = self._release(plan, state, local)
        if released is None:
            return None
        payload = state.encoder.encode(released, plan.round)
        return payload, sha256_hex(payload)

    def _release(self, plan: RoundPlan, state: JobState, local: dict) -> dict | None:
        """The model this peer releases this round (clipped and noised with DP on, the release
        counted); None when it is not finite."""
        if not all(all_finite(t) for t in local.values()):
            # Diverged: nothing worth sending (neighbours would reject it); the report says so.
            log.warning("node %s: its model is not finite after training; sending nothing this round", self.node_id)
            return None
        if state.privacy is not None and state.round_start is not None:
            cfg = plan.config
            local = privatize(state.round_start, local, clip=cfg.dp_clip, noise_multiplier=cfg.dp_noise)
            state.privacy.spend()
        return local

    # -- secure aggregation (peers.secagg.gossip) -----------------------------------------------
    async def _send_masked(self, plan: RoundPlan, state: JobState, local: dict) -> int:
        """Send each neighbour i this round's model masked for i's neighbourhood (the masks
        cancel in i's sum); nothing to the validator (the form refuses the combination)."""
        released = self._release(plan, state, local)
        if released is None:
            return 0
        flat = np.concatenate([released[name].detach().cpu().double().reshape(-1).numpy() for name in state.spec])
        key = self._agreements()
        old = [k for k in self._masked_sends if k[0] == plan.job_id and k[1] < plan.round - 2]
        for k in old:
            del self._masked_sends[k]
        sends, targets = [], []
        for n in plan.neighbours:
            try:
                upload, sent = self._masked_upload(plan, n, flat, key)
            except ValueError as exc:
                log.warning("node %s sends no masked model to %s: %s", self.node_id, n.node_id, exc)
                continue
            self._masked_sends[(plan.job_id, plan.round, n.node_id)] = sent
            targets.append(n)
            sends.append(
                send_payload(
                    self.transport,
                    n.channel,
                    job_id=plan.job_id,
                    round=plan.round,
                    sender=self.node_id,
                    seq=ROUND_SEQ,
                    payload=upload,
                    key=self.key,
                )
            )
        results = await asyncio.gather(*sends, return_exceptions=True)
        for n, result in zip(targets, results):
            if isinstance(result, Exception):
                log.warning("node %s could not send its masked model to %s: %s", self.node_id, n.node_id, result)
        return sum(r for r in results if isinstance(r, int))

    def _agreements(self) -> gossip.Agreements:
        """This node's X25519 key (from its node key) with the agreements it made so far."""
        if self._x25519 is None or self._x25519[0] is not self.key:
            self._x25519 = (self.key, gossip.Agreements(gossip.x25519_private(self.key.seed())))
        return self._x25519[1]

    def _masked_upload(
        self, plan: RoundPlan, n: Neighbour, flat: np.ndarray, key: gossip.Agreements
    ) -> tuple[bytes, MaskedSend]:
        """The upload for neighbour ``n`` (y_ji and the sealed shares of a fresh self-mask seed,
        ``gossip.pack_upload``) and what to remember to answer its unmask request."""
        if str(self.node_id) not in n.neighbourhood:
            raise ValueError("the plan does not list this peer among its neighbours")
        others = {int(k): gossip.x25519_public(v) for k, v in n.neighbourhood.items() if int(k) != self.node_id}
        where = {"job": plan.job_id, "round": plan.round, "recipient": n.node_id}
        threshold = gossip.share_threshold(len(others) + 1, plan.config.secagg_dropout)
        seed = secrets.token_bytes(32)
        encoded = encode_fixed(flat, summands=len(others) + 1)
        masked = gossip.mask(encoded, self.node_id, key, others, self_seed=seed, **where)
        sealed = gossip.seal_shares(seed, self.node_id, key, others, threshold=threshold, **where)
        return gossip.pack_upload(masked, sealed), MaskedSend(others, flat.size, n.public_key, n.channel, threshold)

    async def _secure_neighbours(
        self,
        plan: RoundPlan,
        state: JobState,
        local: dict,
        received: dict,
        rejected: dict[int, str],
        give_up: float | None = None,
    ) -> list[tuple[float, dict]]:
        """[(count, mean of the neighbours' models)] from their masked models: every round an
        unmask request to the senders whose models arrived (``_recover``); [] (this peer keeps its
        own model) when none arrived, too few did, or too few senders helped (``rejected`` says
        so). The request waits for the answers until ``give_up`` (default: a deadline margin
        before the deadline; the star's aggregator needs time after it to send the global model)."""
        length = sum(math.prod(shape) for shape, _ in state.spec.values())
        ids = {n.node_id for n in plan.neighbours}
        arrived, sealed = {}, {}
        for n in plan.neighbours:
            payload = received.get(n.node_id)
            if payload is None:
                continue
            try:
                arrived[n.node_id], sealed[n.node_id] = gossip.unpack_upload(payload, length, ids - {n.node_id})
            except ValueError as exc:
                rejected[n.node_id] = f"masked model: {exc}"
        if not arrived:
            return []
        alive, dropped = sorted(arrived), sorted(ids - arrived.keys())
        masks = await self._recover(plan, state, alive, dropped, sealed, length, give_up)
        if masks is None:
            for sender in arrived:
                rejected[sender] = SECAGG_NO_RECOVERY
            log.warning(
                "node %s: round %s of job %s keeps its own model (the masks of %s stay on, %s dropped)",
                self.node_id,
                plan.round,
                plan.job_id,
                alive,
                dropped,
            )
            return []
        total = np.zeros(length, dtype=np.uint64) - masks
        for masked in arrived.values():
            total += masked  # uint64: wraps mod 2^64, as it must
        mean = decode_fixed(total) / len(arrived)
        out, offset = {}, 0
        for name, (shape, _) in state.spec.items():
            size = math.prod(shape)
            out[name] = torch.from_numpy(mean[offset : offset + size].reshape(shape).copy()).to(local[name].dtype)
            offset += size
        return [(float(len(arrived)), out)]

    async def _recover(
        self,
        plan: RoundPlan,
        state: JobState,
        alive: list[int],
        dropped: list[int],
        sealed: dict[int, dict[int, bytes]],
        length: int,
        give_up: float | None = None,
    ) -> np.ndarray | None:
        """The masks left on the ``alive`` senders' sum: their self masks, rebuilt from the
        holders' shares, and the pairwise masks they added for the ``dropped``. ``sealed``: sender
        -> holder -> the share it sealed for it. None when too few are alive, or too few answer
        by ``give_up`` (unix seconds; default: a deadline margin before the deadline)."""
        threshold = gossip.share_threshold(len(plan.neighbours), plan.config.secagg_dropout)
        if len(alive) < max(gossip.MIN_SUM, threshold + 1):
            return None
        await self._ask_to_unmask(plan, alive, dropped, sealed)
        answers = await self._unmask_answers(plan, state, alive, dropped, length, threshold, give_up)
        shares: dict[int, dict[int, int]] = {j: {} for j in alive}
        corrections = []
        for k, (held, correction) in answers.items():
            for j, value in held.items():
                shares[j][k] = value
            if correction is not None:
                corrections.append(correction)
        if dropped and len(corrections) < len(alive):
            log.warning("node %s: not every sender in %s removed its masks for %s", self.node_id, alive, dropped)
            return None
        total = np.zeros(length, dtype=np.uint64)
        for c in corrections:
            total += c
        for j in alive:
            try:
                seed = gossip.rebuild_seed(shares[j], threshold)
            except ValueError as exc:
                log.warning("node %s: the self mask of %s stays on: %s", self.node_id, j, exc)
                return None
            total += gossip.self_mask(seed, job=plan.job_id, round=plan.round, recipient=self.node_id, length=length)
        return total

    async def _ask_to_unmask(
        self, plan: RoundPlan, alive: list[int], dropped: list[int], sealed: dict[int, dict[int, bytes]]
    ) -> None:
        """One signed request to each alive sender k: alive, dropped and the shares sealed for k."""
        channels = {n.node_id: n.channel for n in plan.neighbours}
        for k in alive:
            shares = gossip.pack_sealed({j: sealed[j][k] for j in alive if j != k})
            signed = recover_bytes(plan.job_id, plan.round, self.node_id, dropped, alive=alive, shares=shares)
            request = SecAggRecover(
                job_id=plan.job_id,
                round=plan.round,
                requester=self.node_id,
                dropped=dropped,
                signature=self.key.sign(signed),
                alive=alive,
                shares=shares,
            )
            try:
                await self.transport.send(channels[k], to_message(request))
            except Exception as exc:
                log.warning("node %s: unmask request to %s failed: %s", self.node_id, k, exc)

    async def _unmask_answers(
        self,
        plan: RoundPlan,
        state: JobState,
        alive: list[int],
        dropped: list[int],
        length: int,
        threshold: int,
        give_up: float | None,
    ) -> dict[int, tuple[dict[int, int], np.ndarray | None]]:
        """The holders' answers that parse, as they come, until they are enough (every alive
        sender's correction if some dropped, and ``threshold`` shares of each alive sender's
        seed), ``give_up`` or a later plan."""
        if give_up is None:
            give_up = plan.deadline - self.deadline_margin_s
        parsed: dict[int, tuple[dict[int, int], np.ndarray | None]] = {}
        while True:
            for k, payload in state.recoveries.get(plan.round, {}).items():
                if k in alive and k not in parsed:
                    try:
                        parsed[k] = gossip.unpack_answer(payload, length, set(alive) - {k}, bool(dropped))
                    except ValueError as exc:
                        log.warning("node %s: unusable unmask answer from %s: %s", self.node_id, k, exc)
                        parsed[k] = ({}, None)
            if _enough(parsed, alive, dropped, threshold) or time.time() >= give_up or self._superseded(plan):
                break
            state.arrived.clear()
            try:
                await asyncio.wait_for(state.arrived.wait(), timeout=max(0.01, give_up - time.time()))
            except TimeoutError:
                break
        state.recoveries.pop(plan.round, None)
        return {k: a for k, a in parsed.items() if a[0] or a[1] is not None}

    async def _answer_recovery(self, request: SecAggRecover) -> None:
        """Answer a recipient's unmask request, once per round and recipient, and only one that
        is signed by it and whose alive and dropped senders partition its neighbourhood with this
        peer alive and enough alive (``_unmask_refusal``): the shares of the alive senders' seeds
        sealed for this peer, and the masks it added for the dropped ones."""
        sent = self._masked_sends.get((request.job_id, request.round, request.requester))
        problem, sealed = _unmask_refusal(self.node_id, sent, request)
        if problem is not None or sent is None:
            log.warning(
                "node %s ignored an unmask request from %s (job %s round %s): %s",
                self.node_id,
                request.requester,
                request.job_id,
                request.round,
                problem,
            )
            return
        sent.answered = True
        key = self._agreements()
        where = {"job": request.job_id, "round": request.round, "recipient": request.requester}
        shares = {}
        for j, box in sealed.items():
            try:
                shares[j] = gossip.open_share(box, self.node_id, key, sent.others[j], sender=j, **where)
            except ValueError as exc:
                log.warning("node %s: no share of %s for %s: %s", self.node_id, j, request.requester, exc)
        correction = None
        if request.dropped:
            dropped = {d: sent.others[d] for d in request.dropped}
            correction = gossip.correction(self.node_id, key, dropped, length=sent.length, **where)
        try:
            await send_payload(
                self.transport,
                sent.channel,
                job_id=request.job_id,
                round=request.round,
                sender=self.node_id,
                seq=RECOVERY_SEQ,
                payload=gossip.pack_answer(shares, correction),
                key=self.key,
            )
        except Exception as exc:
            log.warning("node %s could not answer %s's unmask request: %s", self.node_id, request.requester, exc)

    async def _send_to_neighbours(self, plan: RoundPlan, local: dict, targets: list | None = None) -> int:
        """Send this round's model to the neighbours, and to the job's validator (which scores
        it), as the one signed payload (or to ``targets`` only)."""
        targets = [*plan.neighbours, *plan.validators] if targets is None else targets
        if not targets:
            return 0
        outgoing = self._outgoing(plan, self.jobs[plan.job_id], local)
        if outgoing is None:
            return 0
        payload, digest = outgoing
        sent, failed = await send_payload_to_each(
            self.transport,
            targets,
            job_id=plan.job_id,
            round=plan.round,
            sender=self.node_id,
            seq=ROUND_SEQ,
            payload=payload,
            key=self.key,
            sha256=digest,
        )
        for n, error in failed:
            log.warning("node %s could not send weights to %s: %s", self.node_id, n.node_id, error)
        return sent

    # -- the validator ------------------------------------------------------------------------
    async def _validate_round(self, plan: RoundPlan, state: JobState) -> None:
        """As the job's validator: wait for the members' models, score them on this node's own
        data (peers.scoring), report the evidence, and keep the consensus as the next round's
        reference. Trains nothing and sends nothing to anyone."""
        started = time.perf_counter()
        await self._wait_for_neighbours(plan, state)
        received = state.payloads.pop(plan.round, {})
        state.rejected.pop(plan.round, None)
        updates = {}
        for n in plan.neighbours:
            if n.node_id not in received:
                continue
            try:
                updates[n.node_id] = state.decoder(n.node_id).decode(received[n.node_id])
            except WeightsRejected as exc:
                log.warning("validator %s: model of node %s refused: %s", self.node_id, n.node_id, exc.reason)
        if state.validator is None:
            cfg = plan.config
            model = build_model(
                cfg.model,
                self.data.num_features,
                cfg.num_classes,
                hidden=cfg.hidden,
                seed=cfg.seed,
                input_shape=self.data.input_shape,
            )
            X = np.concatenate([self.data.X_train, self.data.X_eval])  # it trains nothing: all of it validates
            y = np.concatenate([self.data.y_train, self.data.y_eval])
            state.validator = Validator(model, X, y, device=self.device, seed=cfg.seed)
        reference = state.consensus if state.consensus is not None else state.trainer.state()
        scores = await asyncio.to_thread(state.validator.score, reference, updates)
        consensus = scores.consensus if scores.consensus is not None else reference
        state.consensus = consensus
        state.last_round = plan.round
        report = ScoreReport(
            job_id=plan.job_id,
            round=plan.round,
            node_id=self.node_id,
            evidence=scores.as_evidence(),
            consensus_hash=sha256_hex(pack_state(consensus)),
        )
        try:
            await self.reporter.report(to_message(report))
        except Exception as exc:
            log.error(
                "validator %s could not report round %s of job %s: %s", self.node_id, plan.round, plan.job_id, exc
            )
        log.info(
            "validator %s job %s round %s/%s: scored %d of %d models in %.2f s",
            self.node_id,
            plan.job_id,
            plan.round,
            plan.total_rounds,
            len(updates),
            len(plan.neighbours),
            time.perf_counter() - started,
        )
        if plan.round >= plan.total_rounds:
            self.final_models[plan.job_id] = pack_state(consensus)
            await self._upload_final_model(plan.job_id, self.final_models[plan.job_id])
            self._finish(plan.job_id)

    async def _job_ended(self, event: JobEvent) -> None:
        """The platform ended a job before its last planned round (cancelled, or the privacy
        budget spent): leave it; as its validator, upload the last consensus first. Only the
        platform's signature counts: neighbours may write to this inbox too."""
        if not verify(self.platform_key, event_bytes(event.job_id, event.event), event.signature):
            log.warning("node %s ignored an unsigned 'ended' event for job %s", self.node_id, event.job_id)
            return
        state = self.jobs.get(event.job_id)
        if state is None:
            return
        log.info("node %s: job %s ended (%s); leaving it", self.node_id, event.job_id, event.detail.get("reason", ""))
        if state.consensus is not None:
            self.final_models[event.job_id] = pack_state(state.consensus)
            await self._upload_final_model(event.job_id, self.final_models[event.job_id])
        self._finish(event.job_id)
        await self.plans.put(None)  # run() re-checks how many jobs are done

    async def _upload_final_model(self, job_id: int, blob: bytes) -> None:
        """As the validator, after the last round: upload the final consensus to the platform
        (the model registry), waiting while the job is not finished yet (its last round may close
        just after these scores arrive). Reporters without an upload (in-memory drivers) keep it."""
        upload = getattr(self.reporter, "upload_model", None)
        if upload is None:
            return
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                await asyncio.to_thread(upload, job_id, blob)
                log.info("validator %s uploaded job %s's final model (%d bytes)", self.node_id, job_id, len(blob))
                return
            except Exception as exc:
                if getattr(exc, "status", None) == 409 and "uploaded once it has finished" in str(exc):
                    await asyncio.sleep(min(1.0 + attempt, 5.0))
                    continue
                log.error("validator %s could not upload job %s's final model: %s", self.node_id, job_id, exc)
                return
        log.error("validator %s: job %s did not finish; its final model was not uploaded", self.node_id, job_id)

    # -- late join / rejoin -------------------------------------------------------------------
    async def _catch_up(self, plan: RoundPlan, state: JobState) -> None:
        """Ask every neighbour for its current model and start from the first one that arrives
        intact; without an answer the peer starts from the job's initial model."""
        if not plan.neighbours:
            return
        signature = self.key.sign(request_bytes(plan.job_id, plan.round, self.node_id))
        request = to_message(
            ModelRequest(job_id=plan.job_id, round=plan.round, requester=self.node_id, signature=signature)
        )
        for n in plan.neighbours:
            try:
                await self.transport.send(n.channel, request)
            except Exception as exc:
                log.warning("node %s: model request to %s failed: %s", self.node_id, n.node_id, exc)
        give_up = min(time.time() + CATCH_UP_WAIT_S, plan.deadline - self.deadline_margin_s)
        while time.time() < give_up:
            for sender, payload in list(state.catch_up.items()):
                try:
                    model = WeightsDecoder(state.spec, plan.max_payload_bytes).decode(payload)
                except WeightsRejected as exc:
                    log.warning("node %s: catch-up model from %s rejected: %s", self.node_id, sender, exc.reason)
                    del state.catch_up[sender]
                    continue
                state.trainer.load_state(model)
                state.catch_up.clear()
                log.info("node %s caught up on job %s from node %s", self.node_id, plan.job_id, sender)
                return
            state.arrived.clear()
            try:
                await asyncio.wait_for(state.arrived.wait(), timeout=max(0.01, give_up - time.time()))
            except TimeoutError:
                break
        log.warning(
            "node %s: no neighbour sent the current model of job %s; starting from the initial one",
            self.node_id,
            plan.job_id,
        )

    async def _answer_model_request(self, request: ModelRequest) -> None:
        """Send our current model to a neighbour that asked for it (signed requests only)."""
        state = self.jobs.get(request.job_id)
        key = state.neighbours.get(request.requester) if state else None
        if (
            state is None
            or key is None
            or not verify(key, request_bytes(request.job_id, request.round, request.requester), request.signature)
        ):
            log.warning(
                "node %s ignored a model request from %s for job %s", self.node_id, request.requester, request.job_id
            )
            return
        if state.releases_protected_only:
            log.warning(
                "node %s: in job %s its model leaves only masked or noised; no catch-up for %s",
                self.node_id,
                request.job_id,
                request.requester,
            )
            return
        payload = state.encoder.snapshot(state.trainer.state(), request.round - 1)
        try:
            # Labelled with the round the model comes from, so it never collides with round updates.
            await send_payload(
                self.transport,
                node_channel(request.requester),
                job_id=request.job_id,
                round=request.round - 1,
                sender=self.node_id,
                seq=CATCH_UP_SEQ,
                payload=payload,
                key=self.key,
            )
        except Exception as exc:
            log.warning("node %s could not send its model to %s: %s", self.node_id, request.requester, exc)

    def _finish(self, job_id: int) -> None:
        """The job's last round is behind this peer: release its state."""
        self.jobs.pop(job_id, None)
        self._plan_signatures = {key: sig for key, sig in self._plan_signatures.items() if key[0] != job_id}
        self.jobs_done += 1

    def _superseded(self, plan: RoundPlan) -> bool:
        """The platform already planned a later round of this job: this one is closed."""
        return self.newest_round.get(plan.job_id, 0) > plan.round or plan.round < self.first_open_round.get(
            plan.job_id, 0
        )

    async def _wait_for_neighbours(self, plan: RoundPlan, state: JobState) -> None:
        """Until every neighbour's weights arrived or were rejected, or the deadline is near."""
        expected = {n.node_id for n in plan.neighbours}
        # With secure aggregation, a margin more for the unmask round trip (every round).
        give_up = plan.deadline - self.deadline_margin_s * (2 if plan.config.secure_aggregation else 1)
        while True:
            heard = set(state.payloads.get(plan.round, {})) | set(state.rejected.get(plan.round, {}))
            remaining = give_up - time.time()
            if expected <= heard or remaining <= 0 or self._superseded(plan):
                return
            state.arrived.clear()
            try:
                await asyncio.wait_for(state.arrived.wait(), timeout=remaining)
            except TimeoutError:
                return


def _enough(
    parsed: dict[int, tuple[dict[int, int], Any]], alive: list[int], dropped: list[int], threshold: int
) -> bool:
    """Whether the unmask answers in hand suffice: a correction from every alive sender if some
    dropped, and ``threshold`` shares of every alive sender's seed."""
    if dropped and any(parsed.get(k, ({}, None))[1] is None for k in alive):
        return False
    held = {j: sum(j in shares for shares, _ in parsed.values()) for j in alive}
    return all(count >= threshold for count in held.values())


def _unmask_refusal(me: int, sent: MaskedSend | None, request: SecAggRecover) -> tuple[str | None, dict[int, bytes]]:
    """(why this peer must not answer an unmask request, or None; the sealed shares it carries)."""
    if sent is None:
        return "no masked model was sent to it", {}
    alive, dropped = set(request.alive), set(request.dropped)
    signed = recover_bytes(
        request.job_id, request.round, request.requester, request.dropped, alive=request.alive, shares=request.shares
    )
    if not verify(sent.recipient_key, signed, request.signature):
        return "bad signature", {}
    if sent.answered:
        return "already answered", {}
    if me not in alive:
        return "this peer is not among the alive senders (or a pairwise-only request)", {}
    if alive & dropped:
        return f"{sorted(alive & dropped)} both alive and dropped", {}
    if alive | dropped != sent.others.keys() | {me}:
        return f"alive and dropped ({sorted(alive | dropped)}) are not the recipient's neighbourhood", {}
    if len(alive) < max(gossip.MIN_SUM, sent.threshold + 1):
        return f"too few alive ({len(alive)}): the shares would unmask a sum of too few", {}
    try:
        sealed = gossip.unpack_sealed(request.shares)
    except ValueError as exc:
        return f"shares: {exc}", {}
    if not sealed.keys() <= alive - {me}:
        return f"shares forwarded for {sorted(sealed.keys() - alive)}, not alive senders", {}
    return None, sealed


def make_trainer(model, data, cfg, *, device, seed: int) -> LocalTrainer:
    """The job's trainer: DP-SGD when the job asks for sample-level DP, plain SGD otherwise."""
    if cfg.dp_noise > 0 and cfg.dp_level == "sample":
        from peers.privacy.dp_sgd import DPSGDTrainer  # here: importing Opacus takes a second

        return DPSGDTrainer(
            model,
            data,
            noise_multiplier=cfg.dp_noise,
            max_grad_norm=cfg.dp_clip,
            delta=cfg.dp_delta,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            device=device,
            seed=seed,
        )
    return LocalTrainer(model, data, lr=cfg.lr, batch_size=cfg.batch_size, device=device, seed=seed)


def privacy_spent(state: JobState) -> float:
    """The epsilon a peer reports: client-level or DP-SGD's, 0 without DP."""
    if state.trainer.is_dp_sgd:
        return state.trainer.epsilon()  # type: ignore[attr-defined]
    return state.privacy.epsilon if state.privacy is not None else 0.0


def _dense_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _distance(a: dict, b: dict) -> float:
    """L2 norm of b - a over every tensor (how far mixing moved the model)."""
    total = 0.0
    for name, tensor in a.items():
        other = b.get(name)
        if other is not None and other.shape == tensor.shape:
            total += float(torch.sum((other.double() - tensor.double()) ** 2))
    return math.sqrt(total)


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0
