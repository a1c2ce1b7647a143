"""FedAvg's aggregation step under secure aggregation, all parties in one process: what the star's
aggregator computes, from masked uploads only, equals ``peers.training.mix`` of the plain ones
(within the fixed-point error, 2^-33 per value and summand). Used by ``peers.simulate`` (``--secagg``
with the star) to measure what SecAgg costs in time and accuracy before it runs across machines.

Weights are applied before masking (each participant uploads ``samples * update``) and divided
out after unmasking by the survivors' total, so the aggregator learns the weighted sum and the
total weight, never one participant's update. ``dropped`` participants shared their secrets and
then vanished before uploading: the mean is over the survivors, as FedAvg's would be.

``tree_weighted_mean`` is the same step over an aggregation tree (``peers.secagg.tree``: groups
of ``group_size`` with an aggregator each, a second masked round among the aggregators; ``python
-m peers simulate --secagg --secagg-tree GROUP_SIZE``): the root learns the same mean, no
aggregator more than its group's sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from peers.secagg.fixedpoint import decode, encode
from peers.secagg.protocol import Participant, unmask
from peers.secagg.tree import DEFAULT_DROPOUT_FRACTION, layout, tree_weighted_sum


def default_threshold(participants: int) -> int:
    """Shares needed to unmask: more than two thirds of the participants (the paper's bound for
    an active adversary), so up to a third may drop out."""
    return max(1, math.floor(2 * participants / 3) + 1) if participants > 2 else participants


def secure_weighted_mean(
    uploads: Sequence[tuple[float, dict[str, torch.Tensor]]],
    round: int,
    *,
    threshold: int | None = None,
    dropped: frozenset[int] = frozenset(),
) -> dict[str, torch.Tensor]:
    """The ``weight``-weighted mean of the uploads' state dicts (participant i = position i),
    computed the way the aggregator of a SecAgg round computes it."""
    n = len(uploads)
    if n == 0:
        raise ValueError("no uploads")
    threshold = default_threshold(n) if threshold is None else threshold
    ids = list(range(n))
    people = [Participant(i, round, threshold) for i in ids]
    held: dict[int, dict] = {i: {} for i in ids}  # what each participant holds from the others
    for p in people:
        for j, pair in p.share_secrets(ids).items():
            held[j][p.node_id] = pair
    public = {p.node_id: p.public_key for p in people}
    survivors = [i for i in ids if i not in dropped]
    total: np.ndarray | None = None
    for i in survivors:
        weight, state = uploads[i]
        flat = _flatten(state, uploads[0][1]) * weight
        masked = people[i].mask(encode(flat, summands=n), public)
        total = masked if total is None else total + masked  # uint64: wraps mod 2^64, as it must
    if total is None:
        raise ValueError("every participant dropped out")
    reveals = {i: people[i].reveal(survivors, dropped, held[i]) for i in survivors}
    summed = decode(unmask(total, survivors, dropped, public, reveals, threshold, round, total.size))
    return _unflatten(summed / sum(uploads[i][0] for i in survivors), uploads[0][1])


def tree_weighted_mean(
    uploads: Sequence[tuple[float, dict[str, torch.Tensor]]],
    round: int,
    group_size: int,
    *,
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION,
    dropped: frozenset[int] = frozenset(),
) -> dict[str, torch.Tensor]:
    """``secure_weighted_mean`` over the aggregation tree of ``peers.secagg.tree.layout(range(n),
    group_size)`` (participant i = position i, its weight the upload's, which the caller vouches
    for): the mean over the contributors whose updates reached the root."""
    if not uploads:
        raise ValueError("no uploads")
    ids = range(len(uploads))
    result = tree_weighted_sum(
        layout(ids, group_size),
        {i: _flatten(uploads[i][1], uploads[0][1]) for i in ids},
        {i: uploads[i][0] for i in ids},
        round,
        dropout_fraction=dropout_fraction,
        dropped=dropped,
    )
    return _unflatten(result.mean, uploads[0][1])


def _flatten(state: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> np.ndarray:
    """``state``'s tensors in ``like``'s order, as one float64 vector."""
    return np.concatenate([state[k].detach().cpu().double().reshape(-1).numpy() for k in like])


def _unflatten(flat: np.ndarray, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``flat`` cut back into tensors of ``like``'s names, shapes and dtypes."""
    out, offset = {}, 0
    for name, tensor in like.items():
        size = math.prod(tensor.shape)
        out[name] = torch.from_numpy(flat[offset : offset + size].reshape(tensor.shape)).to(tensor.dtype)
        offset += size
    return out
