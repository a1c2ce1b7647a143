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
