"""`python -m bench websocket --quick` runs (its own daphne on Redis's channel layer, 50 viewers,
a publisher process) and ends with a well-formed JSON line. Timings are never asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # real Redis

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
    "p95_ms_500",
    "p95_ms_1000",
    "lost",
}


@pytest.mark.slow
def test_bench_websocket_quick_prints_json_last_line():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "websocket", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) > 1, "expected a readable table before the JSON line"
    result = json.loads(lines[-1])
    assert set(result) >= REQUIRED, REQUIRED - set(result)
    assert result["bench"] == "websocket" and result["quick"] is True
    assert [(r["mode"], r["viewers"]) for r in result["rows"]] == [("hub", 50), ("old", 50)]
    assert result["lost"] == sum(r["lost"] for r in result["rows"] if r["mode"] == "hub")
    for row in result["rows"]:
        assert row["published"] == 30 and row["p95_ms"] > 0
