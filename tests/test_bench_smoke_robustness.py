"""`python -m bench robustness --quick` runs and ends with a well-formed JSON line.

Timings and accuracies are never asserted (benchmarks are not tests): only the convention's
keys, the bench's own keys and that the attackers' payment is a number.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"bench", "metric", "value", "baseline", "ratio", "target", "device", "quick"}


@pytest.mark.slow
def test_robustness_benchmark_quick_prints_its_json_last_line():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "robustness", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) > 1, proc.stdout  # a table first
    result = json.loads(lines[-1])
    assert set(result) >= REQUIRED | {"best_rule", "best_rule_drop_points", "attackers_paid", "grid"}
    assert result["bench"] == "robustness" and result["quick"] is True and result["device"] == "cpu"
    assert isinstance(result["attackers_paid"], (int, float)) and result["attackers_paid"] >= 0
    assert isinstance(result["best_rule_drop_points"], (int, float))
    assert result["best_rule"].split("+")[0] in result["grid"]["expander"]  # "rule+exclusion" too
