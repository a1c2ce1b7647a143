"""Contribution scoring from evidence: what each peer's model was worth on the validator's data.

A validator (run by the job's creator, holding validation data that never leaves it) receives
every peer's model each round and scores it against the round's starting model (``reference``,
the previous round's consensus). Nothing a peer says about itself (samples, loss, accuracy)
enters a score: only the models it sent, the validator's own losses and, optionally, weights the
validator fixes itself (declared sample counts, capped). See docs/scoring.md for the formula.

``score_round`` evaluates the models and writes every number it measured into an *evidence*
record (plain JSON); the final scores are computed from that record alone by
``score_from_evidence``, so anyone holding the record recomputes them exactly, without a model.
``scores_ppm`` turns scores into integer parts per million that sum to exactly 1_000_000.

Pure functions over tensors and state dicts: no Django, no I/O.
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from peers.evidence import (  # the scores from an evidence record alone (shared with the platform)
    OK,
    Coalition,
    _eligible,
    _key,
    _marginals,
    _pass_marginals,
    score_from_evidence,
    scores_ppm,
)

METHODS = ("shapley", "loo")
EVIDENCE_VERSION = 1

# ||update - reference|| <= ZERO_TOL * max(1, ||reference||): the peer sent back what it got
# (a free rider), or as good as: float32 rounding of a real step is far larger than this.
ZERO_TOL = 1e-6
# ||delta_i - delta_j|| < DUPLICATE_TOL * max(||delta_i||, ||delta_j||): i echoes j. Two honest
# peers trained on different data from the same start differ by far more than 5% of their step.
DUPLICATE_TOL = 0.05
# A raw score below FLOOR times the mean positive raw score is paid nothing: noise-level
# contributions (a twentieth of an average share) would otherwise earn dust for any junk model
# that happens to help by a hair on this validation set.
FLOOR = 0.05
# A loss that is not finite, or above this, counts as this (the evidence stays plain JSON).
LOSS_CAP = 1e6
DEFAULT_PERMUTATIONS = 128
# Pass 1 values every eligible peer; the ones whose value is not positive (they make the mean
# worse) are dropped and pass 2 values the rest without them, so nobody is paid for diluting a
# harmful model. Only once: repeating it would drop honest peers that merely help less than the
# best ones (in an equal-weight mean a short honest step lowers the value of a long one), until
# one winner is left.
MAX_PASSES = 2

REJECTED, NO_UPDATE, DUPLICATE = "rejected", "no-update", "duplicate"

Evaluate = Callable[[dict[str, Tensor]], float]


@dataclass(frozen=True)
class PeerScore:
    node_id: int
    score: float  # in [0, 1]; the scores of a round sum to 1 when any is positive
    marginal: float  # leave-one-out loss difference or Shapley value (loss units; > 0 helps)
    agreement: float  # cosine of its delta with the helpful peers' consensus delta
    duplicate_of: int | None
    update_norm: float  # ||update - reference|| over the floating-point tensors
    status: str  # ok | rejected | no-update | duplicate
    reason: str  # why a peer that is not ok scores 0 ("" when ok)


@dataclass
class RoundScores:
    method: str
    peers: dict[int, PeerScore]  # in arrival order
    reference_loss: float  # loss of the reference (the empty coalition)
    consensus_loss: float  # loss of the weighted mean of every eligible peer's model
    coalition_losses: dict[Coalition, float]  # every loss evaluated, by sorted member ids
    helpful: list[int] = field(default_factory=list)  # the peers left by the last pass (marginal > 0)
    consensus: dict[str, Tensor] | None = None  # that weighted mean (the reference when none is eligible)
    _evidence: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def scores(self) -> dict[int, float]:
        return {i: p.score for i, p in self.peers.items()}

    @property
    def loo_losses(self) -> dict[int, float]:
        """loss(consensus without i) for each eligible peer i, in the first pass (method "loo")."""
        if self.method != "loo":
            return {}
        everyone = _eligible(self._evidence)
        return {i: self.coalition_losses[_key(j for j in everyone if j != i)] for i in everyone}

    def as_evidence(self) -> dict[str, Any]:
        """The record that reproduces the scores: JSON-serialisable, ints, finite floats and
        strings in lists and dicts (a duplicate's row has ``duplicate_of``, the others none)."""
        return copy.deepcopy(self._evidence)

    def ppm(self) -> dict[int, int]:
        return scores_ppm(self.scores)


# ---------------------------------------------------------------- input checks


def _check_update(reference: Mapping[str, Tensor], update: Any) -> str:
    """ "" when ``update`` matches the reference's names, shapes and is finite; else why not."""
    try:
        return _mismatch(reference, update)
    except Exception as exc:  # whatever a peer sent, the validator goes on with the others
        return f"unreadable update ({type(exc).__name__}: {exc})"[:300]


def _mismatch(reference: Mapping[str, Tensor], update: Any) -> str:
    if not isinstance(update, Mapping):
        return f"not a state dict ({type(update).__name__})"
    missing = sorted(set(reference) - set(update))
    extra = sorted(str(k) for k in set(update) - set(reference))
    if missing or extra:
        return f"tensor names differ from the reference (missing {missing[:5]}, unexpected {extra[:5]})"
    for name, ref in reference.items():
        t = update[name]
        if not isinstance(t, Tensor):
            return f"{name!r} is not a tensor ({type(t).__name__})"
        if tuple(t.shape) != tuple(ref.shape):
            return f"{name!r} has shape {tuple(t.shape)}, the reference {tuple(ref.shape)}"
        if t.is_complex() or (t.is_floating_point() != ref.is_floating_point()):
            return f"{name!r} has dtype {t.dtype}, the reference {ref.dtype}"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"{name!r} holds NaN or infinite values"
    return ""


def _check_weight(weights: Mapping[int, float] | None, node_id: int) -> str:
    if weights is None:
        return ""
    w = weights.get(node_id)
    if not isinstance(w, numbers.Real) or isinstance(w, bool) or not math.isfinite(w) or w <= 0:
        return f"no positive finite weight ({w!r})"
    return ""


# ---------------------------------------------------------------- tensor helpers


def _floats(reference: Mapping[str, Tensor]) -> list[str]:
    return [k for k, t in reference.items() if t.is_floating_point()]


def _flat(state: Mapping[str, Tensor], names: list[str]) -> Tensor:
    """The ``names`` tensors of ``state`` flattened into one float64 CPU vector."""
    if not names:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([state[k].detach().to("cpu", torch.float64).reshape(-1) for k in names])


def _norm(v: Tensor) -> float:
    return float(torch.linalg.vector_norm(v)) if v.numel() else 0.0


def _cosine(a: Tensor, b: Tensor) -> float:
    na, nb = _norm(a), _norm(b)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, float(torch.dot(a, b)) / (na * nb)))


def _mean_delta(deltas: Mapping[int, Tensor], weights: Mapping[int, float], members: Coalition) -> Tensor:
    total = sum(weights[i] for i in members)
    out = torch.zeros_like(next(iter(deltas.values())))
    for i in members:
        out.add_(deltas[i], alpha=weights[i] / total)
    return out


def _model(reference: Mapping[str, Tensor], names: list[str], delta: Tensor) -> dict[str, Tensor]:
    """reference + delta (delta over ``names``, flattened), each tensor in the reference's dtype."""
    out = {k: t.detach().clone() for k, t in reference.items()}
    offset = 0
    for k in names:
        t = reference[k]
        n = t.numel()
        piece = delta[offset : offset + n].reshape(t.shape)
        out[k] = (t.detach().to("cpu", torch.float64) + piece).to(device=t.device, dtype=t.dtype)
        offset += n
    return out


# ---------------------------------------------------------------- scoring


def score_round(
    reference: Mapping[str, Tensor],
    updates: Mapping[int, Mapping[str, Tensor]],
    evaluate: Evaluate,
    *,
    weights: Mapping[int, float] | None = None,
    method: str = "shapley",
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> RoundScores:
    """Score each peer's model (``updates``: node id -> model, in arrival order) against the
    round's ``reference`` with ``evaluate(state) -> validation loss``.

    ``weights`` (node id -> positive weight) weigh the consensus; never a peer's self-reported
    numbers: uniform when None. ``method``: "shapley" (Monte-Carlo over ``permutations``
    orderings drawn with ``seed``; every ordering when there are no more than that, i.e. exact)
    or "loo" (leave one out). A peer whose model is malformed, not finite, unchanged or a copy of
    an earlier one scores 0 with its reason in the evidence; nothing a peer sends raises.
    Only floating-point tensors are averaged and compared; integer ones (counters) must match in
    shape and the consensus keeps the reference's."""
    if method not in METHODS:
        raise ValueError(f"unknown scoring method {method!r}; expected one of {METHODS}")
    if method == "shapley" and permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    names = _floats(reference)
    ref_flat = _flat(reference, names)
    ref_norm = _norm(ref_flat)

    rows: list[dict[str, Any]] = []
    deltas: dict[int, Tensor] = {}
    w: dict[int, float] = {}
    for order, (node_id, update) in enumerate(updates.items()):
        node_id = int(node_id)
        row: dict[str, Any] = {
            "node_id": node_id,
            "order": order,
            "weight": 0.0,
            "status": OK,
            "reason": "",
            "update_norm": 0.0,
            "agreement": 0.0,
        }
        rows.append(row)
        reason = _check_update(reference, update) or _check_weight(weights, node_id)
        if reason:
            row.update(status=REJECTED, reason=reason)
            continue
        row["weight"] = float(weights[node_id]) if weights is not None else 1.0
        d = _flat(update, names) - ref_flat
        row["update_norm"] = norm = _norm(d)
        if not math.isfinite(norm):
            row.update(status=REJECTED, reason="update too large to measure", update_norm=0.0)
            continue
        if norm <= ZERO_TOL * max(1.0, ref_norm):
            row.update(status=NO_UPDATE, reason=f"no update: ||delta|| = {norm:.3g}")
            continue
        for j, dj in deltas.items():  # only originals: a copy of a copy points at the original
            dist = _norm(d - dj) / max(norm, _norm(dj))
            if dist < DUPLICATE_TOL:
                row.update(
                    status=DUPLICATE,
                    duplicate_of=j,
                    reason=f"copy of node {j}'s model (relative distance {dist:.3g} < {DUPLICATE_TOL})",
                )
                break
        else:
            deltas[node_id] = d
            w[node_id] = row["weight"]

    eligible = list(deltas)  # arrival order
    cache: dict[Coalition, float] = {}

    def loss(members) -> float:
        key = _key(members)
        if key not in cache:
            state = dict(reference) if not key else _model(reference, names, _mean_delta(deltas, w, key))
            value = float(evaluate(state))
            cache[key] = value if math.isfinite(value) and value < LOSS_CAP else LOSS_CAP
        return cache[key]

    loss(())
    rng = random.Random(seed)
    passes: list[dict[str, Any]] = []
    members = sorted(eligible)
    while members and len(passes) < MAX_PASSES:
        perms: list[list[int]] = []
        if method == "loo":
            for i in members:
                loss(j for j in members if j != i)
            loss(members)
        else:
            if math.factorial(len(members)) <= permutations:
                perms = [list(p) for p in itertools.permutations(members)]  # exact Shapley
            else:
                perms = [rng.sample(members, len(members)) for _ in range(permutations)]
            for perm in perms:
                for k in range(1, len(perm) + 1):
                    loss(perm[:k])
        passes.append({"members": members, "permutations": perms})
        values = _pass_marginals(method, members, perms, cache)
        helpful = [i for i in members if values[i] > 0]
        if not helpful or helpful == members:
            break
        members = helpful
    loss(eligible)

    evidence: dict[str, Any] = {
        "version": EVIDENCE_VERSION,
        "method": method,
        "params": {
            "zero_tol": ZERO_TOL,
            "duplicate_tol": DUPLICATE_TOL,
            "floor": FLOOR,
            "loss_cap": LOSS_CAP,
            "max_passes": MAX_PASSES,
            "permutations": permutations if method == "shapley" else 0,
            "seed": seed if method == "shapley" else 0,
            "weighted": int(weights is not None),
        },
        "reference_loss": cache[()],
        "consensus_loss": cache[_key(eligible)],
        "coalitions": [
            {"members": list(k), "loss": v} for k, v in sorted(cache.items(), key=lambda kv: (len(kv[0]), kv[0]))
        ],
        "passes": passes,
        "peers": rows,
    }
    marginals, helpful = _marginals(evidence)
    # Agreement: with the direction of the helpful peers' consensus (everyone eligible's when none
    # helps; every score is 0 then). Not the plain consensus: a large harmful delta (noise) would
    # dominate it and decide everybody's agreement.
    basis = _key(helpful or eligible)
    if basis:
        direction = _mean_delta(deltas, w, basis)
        for row in rows:
            if row["status"] == OK:
                row["agreement"] = _cosine(deltas[row["node_id"]], direction)
    scores = score_from_evidence(evidence)
    peers = {
        r["node_id"]: PeerScore(
            node_id=r["node_id"],
            score=scores[r["node_id"]],
            marginal=marginals.get(r["node_id"], 0.0),
            agreement=r["agreement"],
            duplicate_of=r.get("duplicate_of"),
            update_norm=r["update_norm"],
            status=r["status"],
            reason=r["reason"],
        )
        for r in rows
    }
    # The next round's reference: the helpful peers' consensus only. With every usable model in it,
    # one attacker's huge update (scaling, noise) would move the reference, and next round every
    # honest update would look like an outlier against it.
    consensus = _model(reference, names, _mean_delta(deltas, w, basis)) if basis else dict(reference)
    return RoundScores(
        method=method,
        peers=peers,
        reference_loss=cache[()],
        consensus_loss=cache[_key(eligible)],
        coalition_losses=dict(cache),
        helpful=helpful,
        consensus=consensus,
        _evidence=evidence,
    )
