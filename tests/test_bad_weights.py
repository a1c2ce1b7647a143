"""A neighbour sending NaN, mis-shaped or hash-mismatched weights is rejected with a logged
reason that reaches the report, and the round still completes with everyone else."""

import asyncio
import logging

import pytest
import torch

from tests.federation import run_federation

N = 4
ATTACKER = 4


@pytest.mark.parametrize(
    "attack, reason",
    [
        ("nan", "non-finite"),
        ("shape", "wrong shape"),
        ("bad-hash", "sha256 mismatch"),
    ],
)
def test_bad_weights_are_rejected_and_the_round_completes(attack, reason, caplog):
    caplog.set_level(logging.WARNING, logger="peers.worker")
    reports, peers, _ = asyncio.run(run_federation(N, 2, attacks={ATTACKER: attack}))

    assert len(reports) == 2 * N  # every peer reported every round
    neighbours_of_attacker = {1, 3}
    for rep in reports:
        rejected = {item["sender"]: item["reason"] for item in rep["rejected"]}
        if rep["node_id"] in neighbours_of_attacker:
            assert set(rejected) == {ATTACKER}
            assert reason in rejected[ATTACKER]
        else:
            assert rejected == {}
    assert f"rejected weights from {ATTACKER}" in caplog.text and reason in caplog.text
    # The honest peers' models stayed clean (every weight finite, none diverged) and still learn.
    for node_id in (1, 2, 3):
        final_model = peers[node_id].final_model
        assert final_model and all(torch.isfinite(t).all() for t in final_model.values())
    honest = [r for r in reports if r["node_id"] != ATTACKER]
    assert not any(r["diverged"] for r in honest)
    honest_final = [r["accuracy"] for r in honest if r["round"] == 2]
    assert all(0.5 < a <= 1.0 for a in honest_final), honest_final


def test_honest_federation_rejects_nothing():
    reports, _, _ = asyncio.run(run_federation(N, 2))
    assert all(rep["rejected"] == [] and not rep["diverged"] for rep in reports)


def test_a_diverging_peer_reports_diverged_not_a_loss_of_zero(caplog):
    """A learning rate far too large blows the models up: the reports say so."""
    reports, peers, _ = asyncio.run(
        run_federation(2, 1, graph="complete", lr=1e30, local_steps=20, deadline_s=4)
    )  # nothing comes: don't wait long
    assert len(reports) == 2 and all(rep["diverged"] for rep in reports), reports
    assert "diverged in round 1" in caplog.text
    assert not all(torch.isfinite(t).all() for t in peers[1].final_model.values())


def test_zero_local_steps_is_not_divergence():
    """Training no steps yields no loss (NaN by design): the report must not call that diverged."""
    reports, _, _ = asyncio.run(run_federation(2, 1, graph="complete", local_steps=0))
    assert len(reports) == 2 and not any(rep["diverged"] for rep in reports)
