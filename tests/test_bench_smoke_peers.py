"""The peer-side benchmarks run with --quick and end with a well-formed JSON line.

Timings are never asserted (benchmarks are not tests); only that each benchmark runs and
reports what the convention in docs/benchmarks.md asks for. exchange and round need Redis
(REDIS_URL; `make test` points it at a throw-away db) and clean up their own keys.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # real Redis

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"bench", "metric", "value", "baseline", "ratio", "target", "device", "quick"}


@pytest.mark.parametrize("name", ["exchange", "train", "round"])
def test_quick_benchmark_prints_json_last_line(name):
    env = dict(os.environ)
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", name, "--quick"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) > 1, proc.stdout  # a table first
    result = json.loads(lines[-1])
    assert set(result) >= REQUIRED, sorted(REQUIRED - set(result))
    assert result["bench"] == name and result["quick"] is True and result["device"] == "cpu"
    for key in ("value", "baseline", "ratio"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, (key, result[key])


@pytest.mark.slow
def test_faults_benchmark_runs_a_short_job_twice_and_loses_nothing():
    """`python -m bench faults` on a small scale: its own stack, a baseline job and one with a
    killed peer and an exchange restart; the convention's JSON line with its own keys."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "faults", "--quick", "--peers", "3", "--rounds", "8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) >= REQUIRED | {"rounds_planned", "rounds_completed", "reports_lost", "duplicate_payouts"}
    assert result["bench"] == "faults" and result["peers"] == 3 and result["rounds_planned"] == 8
    assert result["rounds_completed"] == 8 and result["reports_lost"] == 0 and result["duplicate_payouts"] == 0
    assert result["kills"] >= 1 and result["exchange_restarts"] == 1


@pytest.mark.slow
def test_privacy_benchmark_reports_its_three_costs():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "privacy", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) >= REQUIRED | {
        "secagg_round_ratio",
        "secagg_accuracy_drop_points",
        "dpsgd_train_ratio",
        "epsilon",
    }
    assert result["bench"] == "privacy" and result["quick"] is True
    assert result["secagg_round_ratio"] > 0 and result["dpsgd_train_ratio"] > 0 and result["epsilon"] > 0
    assert abs(result["secagg_accuracy_drop_points"]) < 5  # masks cancel: the same model up to rounding
    assert result["secagg_tree_round_ratio"] > 0 and abs(result["secagg_tree_accuracy_drop_points"]) < 5
