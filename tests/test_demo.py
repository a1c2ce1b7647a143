"""`python manage.py demo --headless` runs the embedded job and ends with a JSON line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_headless_demo_prints_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CHAIN_RPC_URL", "REDIS_URL")}
    env.update(DFL_EMBEDDED="1", DFL_VAR_DIR=str(tmp_path))
    run = subprocess.run(
        [sys.executable, "manage.py", "demo", "--headless", "--rounds", "3", "--peers", "4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "settled"
    assert summary["rounds"] == 3 and summary["peers"] == 4
    assert summary["final_accuracy"] > 0.5
    assert summary["tokens_paid"] == 300.0  # 100 tokens per round, 3 rounds
    # One payout batch a round, each its own transaction.
    assert len(summary["chain_txs"]) == 3 and all(tx.startswith("0x") and len(tx) == 66 for tx in summary["chain_txs"])
    assert (tmp_path / "demo.sqlite3").exists()
