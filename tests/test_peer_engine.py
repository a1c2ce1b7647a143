"""The peer engine's options, end to end in memory: compression on the wire, robust rules in
the neighbourhood, a late joiner pulling the current model, and the codec's own guarantees."""

import asyncio
import logging

import pytest
import torch

from peers.wire.codec import WeightsDecoder, WeightsEncoder
from peers.wire.format import WeightsRejected, describe
from tests.federation import run_federation


def final(reports, round_number, skip=()):
    return [r for r in reports if r["round"] == round_number and r["node_id"] not in skip]


@pytest.mark.parametrize("compression, max_ratio", [("fp16", 0.55), ("int8", 0.35), ("topk:0.1", 0.35)])
def test_compression_shrinks_bytes_and_still_learns(compression, max_ratio):
    dense, _, _ = asyncio.run(run_federation(4, 4))
    packed, _, _ = asyncio.run(run_federation(4, 4, compression=compression))
    # Round 1 of top-k is a dense keyframe; compare a later round.
    dense_bytes = sum(r["bytes_sent"] for r in final(dense, 3))
    packed_bytes = sum(r["bytes_sent"] for r in final(packed, 3))
    assert packed_bytes < max_ratio * dense_bytes
    assert all(r["rejected"] == [] for r in packed)
    accuracy = [r["accuracy"] for r in final(packed, 4)]
    assert min(accuracy) > 0.75, accuracy


def test_median_in_the_neighbourhood_resists_a_scaling_attacker():
    attacks = {5: "scale"}
    plain, _, _ = asyncio.run(run_federation(5, 3, graph="complete", attacks=attacks))
    robust, _, _ = asyncio.run(run_federation(5, 3, graph="complete", attacks=attacks, rule="median"))
    plain_acc = [r["accuracy"] for r in final(plain, 3, skip={5})]
    robust_acc = [r["accuracy"] for r in final(robust, 3, skip={5})]
    assert min(robust_acc) > 0.85, robust_acc
    assert min(robust_acc) > max(plain_acc) + 0.15, (plain_acc, robust_acc)  # the mean is dragged away


@pytest.mark.slow
def test_late_joiner_pulls_the_current_model_from_a_neighbour(caplog):
    caplog.set_level(logging.INFO, logger="peers.worker")
    # Short deadlines: until node 3 starts, its neighbours wait that long for its weights.
    reports, _, _ = asyncio.run(run_federation(4, 4, late={3: 4}, deadline_s=4))
    assert "node 3 caught up on job 1" in caplog.text
    joiner_first = next(r for r in reports if r["node_id"] == 3)
    assert joiner_first["round"] == 4
    # Starting from the federation's model, one round is enough to be on par with the others.
    others = [r["accuracy"] for r in final(reports, 4, skip={3})]
    assert joiner_first["accuracy"] > min(others) - 0.1


def states(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(50, 20, generator=g), "b": torch.randn(20, generator=g)} for _ in range(n)]


def test_topk_deltas_track_the_model_and_keyframes_resync():
    models = states(0, 12)
    encoder = WeightsEncoder("topk:0.2", keyframe_every=5)
    decoder = WeightsDecoder(describe(models[0]), 10_000_000)
    late = WeightsDecoder(describe(models[0]), 10_000_000)
    for r, model in enumerate(models, start=1):
        data = encoder.encode(model, r)
        got = decoder.decode(data)
        assert torch.equal(got["w"], encoder.public["w"])  # both sides hold the same public copy
        if r == 3:
            with pytest.raises(WeightsRejected, match="stale delta"):
                late.decode(data)  # missed the keyframe of round 1
        if r == 6:
            assert torch.equal(late.decode(data)["w"], model["w"])  # keyframe: exact and back in sync
    err = (decoder.public["w"] - models[-1]["w"]).norm() / models[-1]["w"].norm()
    assert err < 1.0  # a delta round moves the copy towards the model


def test_snapshots_never_become_a_delta_base():
    a, b = states(1, 2)
    encoder = WeightsEncoder("topk:0.5")
    decoder = WeightsDecoder(describe(a), 10_000_000)
    decoder.decode(encoder.encode(a, 1))
    snapshot = WeightsDecoder(describe(a), 10_000_000).decode(encoder.snapshot(b, 1))
    assert torch.equal(snapshot["w"], b["w"])
    assert decoder.public_round == 1 and torch.equal(decoder.public["w"], a["w"])


def test_reports_say_how_far_mixing_moved_the_model_and_the_dense_size_sent():
    dense, _, _ = asyncio.run(run_federation(4, 2))
    packed, _, _ = asyncio.run(run_federation(4, 2, compression="int8"))
    for r in dense + packed:
        assert r["consensus_distance"] > 0 and r["model_bytes"] > 0, r
    ratio = [r["model_bytes"] / r["bytes_sent"] for r in final(dense, 2)]
    assert all(0.9 < x <= 1.0 for x in ratio), ratio  # dense: the payload is the weights (and a header)
    ratio = [r["model_bytes"] / r["bytes_sent"] for r in final(packed, 2)]
    assert all(x > 3.0 for x in ratio), ratio
