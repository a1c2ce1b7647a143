"""The job's validator in a real federation (Peers over the in-memory transport): every member
sends it its model, it scores them on its own data and reports the evidence; attackers score 0."""

import asyncio

import pytest

from peers.evidence import score_from_evidence, scores_ppm
from tests.federation import run_federation

pytestmark = pytest.mark.slow


def scores_of(reports) -> dict[int, dict]:
    return {r["round"]: r for r in reports if r.get("type") == "validator.scores"}


def test_the_validator_scores_every_round_and_noise_scores_zero():
    reports, _, _ = asyncio.run(
        run_federation(n=4, rounds=2, shards=5, validator_data="digits:4/5", attacks={4: "gaussian"})
    )
    by_round = scores_of(reports)
    assert sorted(by_round) == [1, 2]
    for number, report in by_round.items():
        assert report["node_id"] == 5
        ppm = scores_ppm(score_from_evidence(report["evidence"]))  # what the platform recomputes
        assert set(ppm) == {1, 2, 3, 4}
        assert ppm[4] == 0, f"round {number}: the noise sender was scored {ppm[4]}"
        assert sum(ppm.values()) == 1_000_000 and all(ppm[i] > 0 for i in (1, 2, 3))
        assert len(report["consensus_hash"]) == 64
    member_reports = [r for r in reports if r.get("type") != "validator.scores"]
    assert len(member_reports) == 8


def test_a_free_rider_is_scored_zero():
    reports, _, _ = asyncio.run(
        run_federation(n=4, rounds=2, shards=5, validator_data="digits:4/5", attacks={2: "free-ride"})
    )
    for report in scores_of(reports).values():
        assert scores_ppm(score_from_evidence(report["evidence"]))[2] == 0


def test_a_peer_training_on_flipped_labels_is_scored_zero():
    reports, _, _ = asyncio.run(
        run_federation(n=4, rounds=2, shards=5, validator_data="digits:4/5", attacks={3: "label-flip"})
    )
    for report in scores_of(reports).values():
        assert scores_ppm(score_from_evidence(report["evidence"]))[3] == 0
