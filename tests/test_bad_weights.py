"""A neighbour sending NaN, mis-shaped or hash-mismatched weights is rejected with a logged
reason that reaches the report, and the round still completes with everyone else."""
import asyncio
import logging

import pytest
import torch

from tests.federation import run_federation

N = 4
ATTACKER = 4


@pytest.mark.parametrize("attack, reason", [
    ("nan", "non-finite"), ("shape", "wrong shape"), ("bad-hash", "sha256 mismatch"),
])
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
    # The honest peers' models stayed clean and still learn.
    for peer in list(peers.values())[:3]:
        state = peer.jobs.get(1)
        assert state is None  # job finished and was released
    honest_final = [r["accuracy"] for r in reports if r["round"] == 2 and r["node_id"] != ATTACKER]
    assert all(0.5 < a <= 1.0 for a in honest_final), honest_final


def test_honest_federation_rejects_nothing():
    reports, _, _ = asyncio.run(run_federation(N, 2))
    assert all(rep["rejected"] == [] for rep in reports)
    assert all(torch.isfinite(torch.tensor(rep["accuracy"])) for rep in reports)
