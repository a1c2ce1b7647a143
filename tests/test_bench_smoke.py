"""`python -m bench aggregate --quick` runs and ends with a well-formed JSON line (timings are
never asserted: benchmarks are not tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    "bench",
    "metric",
    "value",
    "baseline",
    "ratio",
    "target",
    "device",
    "quick",
    "median_ratio",
    "params",
    "models",
    "repeats",
}


@pytest.mark.slow
def test_bench_aggregate_quick_prints_json_last_line():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "aggregate", "--quick", "--repeats", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) > 2, "expected a readable table before the JSON line"
    result = json.loads(lines[-1])
    assert set(result) >= REQUIRED, REQUIRED - set(result)
    assert result["bench"] == "aggregate" and result["quick"] is True and result["device"] == "cpu"
    assert result["models"] == 16 and result["params"] == 2_000_000 and result["repeats"] == 3
    for key in ("value", "baseline", "ratio", "median_ratio"):
        assert isinstance(result[key], float) and result[key] > 0, key
    # value and baseline are rounded apart from the ratio: compare within their rounding
    assert abs(result["ratio"] - result["value"] / result["baseline"]) < 1e-3
    # the rules computed the right thing on the benchmark's inputs
    assert result["mean_max_abs_err"] < 1e-5 and result["median_max_abs_err"] < 1e-5


def test_bench_dispatcher_lists_benchmarks_on_unknown_name():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "no_such_bench"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "available: " in proc.stderr and "aggregate" in proc.stderr
