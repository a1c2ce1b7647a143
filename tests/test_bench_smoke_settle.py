"""`python -m bench settle --quick` runs and ends with a well-formed JSON line. It starts its own
anvil (the npm binary), hence the services marker. Gas figures are checked for shape and for
the contract's own invariants only (all sizes commit at the same cost); targets are the bench's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # anvil

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    "bench",
    "metric",
    "value",
    "baseline",
    "ratio",
    "target",
    "quick",
    "commit_gas_max",
    "batch_gas_per_payee",
    "claim_gas",
    "rows",
}


def test_bench_settle_quick_prints_json_last_line():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "settle", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) > 2, proc.stdout  # a table first
    result = json.loads(lines[-1])
    assert set(result) >= REQUIRED, sorted(REQUIRED - set(result))
    assert result["bench"] == "settle" and result["quick"] is True
    for key in ("value", "baseline", "ratio", "commit_gas_max", "batch_gas_per_payee", "claim_gas"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, (key, result[key])
    assert [row["payees"] for row in result["rows"]] == [10, 100]
    # a commit stores the same three words whatever the payee count (calldata bytes aside)
    assert max(row["commit_gas"] for row in result["rows"]) - min(row["commit_gas"] for row in result["rows"]) < 200
