"""The learning-rate schedule: the rule itself, peers following it, and the job option."""

import asyncio
import itertools
import math

import pytest

from peers.training import LR_SCHEDULES, LocalTrainer, scheduled_lr
from tests.federation import run_federation


def test_constant_keeps_the_rate():
    assert [scheduled_lr(0.3, "constant", r, 10) for r in (1, 5, 10)] == [0.3, 0.3, 0.3]


def test_cosine_starts_at_lr_ends_at_lr_over_rounds_and_only_decreases():
    rates = [scheduled_lr(1.0, "cosine", r, 50) for r in range(1, 51)]
    assert rates[0] == 1.0 and math.isclose(rates[-1], 1.0 / 50)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert math.isclose(scheduled_lr(1.0, "cosine", 26, 51), (1.0 + 1.0 / 51) / 2)  # halfway: the midpoint
    assert scheduled_lr(0.5, "cosine", 1, 1) == 0.5  # a one-round job trains at its rate
    assert scheduled_lr(1.0, "cosine", 99, 10) == pytest.approx(0.1)  # past the end: stays at the floor


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        scheduled_lr(0.1, "step", 1, 10)
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        scheduled_lr(0.1, "step", 1, 1)  # even where every schedule gives lr
    assert set(LR_SCHEDULES) == {"constant", "cosine"}


@pytest.mark.asyncio
async def test_peers_train_each_round_at_the_scheduled_rate(monkeypatch):
    seen = []
    set_lr = LocalTrainer.set_lr

    def recording_set_lr(self, lr):
        seen.append(lr)
        set_lr(self, lr)

    monkeypatch.setattr(LocalTrainer, "set_lr", recording_set_lr)
    reports, _, _ = await run_federation(n=3, rounds=3, lr=0.3, lr_schedule="cosine", local_steps=2)
    assert len(reports) == 9
    expected = [scheduled_lr(0.3, "cosine", r, 3) for r in (1, 2, 3)]
    assert sorted(seen) == sorted(expected * 3) and expected[0] > expected[1] > expected[2]


@pytest.mark.asyncio
async def test_a_peer_refuses_a_job_with_an_unknown_schedule(caplog):
    """Before any training: the peers log why and never report (the platform's deadline fails the round)."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run_federation(n=2, rounds=1, lr_schedule="step", local_steps=1), timeout=3)
    assert "unknown lr schedule 'step'" in caplog.text
