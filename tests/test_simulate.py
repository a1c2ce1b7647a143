"""`python -m peers simulate`: a whole federation of real peers in one process, no platform."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peers.simulate import SimConfig, run_simulation

ROOT = Path(__file__).resolve().parent.parent


def test_ring_of_eight_learns_on_label_skewed_digits():
    cfg = SimConfig(
        peers=8,
        topology="ring",
        rounds=6,
        partition="dirichlet:0.5",
        local_steps=20,
        lr=0.2,
        model="mlp",
        seed=0,
        device="cpu",
    )
    result = run_simulation(cfg)
    assert [s.round for s in result.rounds] == list(range(1, 7))
    first, last = result.rounds[0], result.rounds[-1]
    assert last.accuracy > first.accuracy and last.global_accuracy > first.global_accuracy
    assert last.accuracy > 0.6, [s.accuracy for s in result.rounds]
    assert last.min_accuracy <= last.accuracy <= last.max_accuracy
    assert all(s.bytes_sent > 0 for s in result.rounds)
    assert result.spectral_gap == pytest.approx(1 - (1 + 2 * 0.7071067811865476) / 3)
    summary = result.summary()
    assert summary["rounds"] == 6 and len(summary["accuracy"]) == 6
    assert summary["final_accuracy"] == round(last.accuracy, 4)


def test_star_fedavg_keeps_every_peer_on_one_model():
    cfg = SimConfig(peers=6, topology="star", rule="fedavg", rounds=3, local_steps=10, lr=0.2, device="cpu")
    result = run_simulation(cfg)
    assert result.spectral_gap == 1.0
    assert result.rounds[-1].global_accuracy > result.rounds[0].global_accuracy
    # five leaves upload and download the model each round
    assert len({s.bytes_sent for s in result.rounds}) == 1 and result.rounds[0].bytes_sent % 10 == 0
    with pytest.raises(ValueError, match="star"):
        run_simulation(SimConfig(peers=4, topology="ring", rule="fedavg", rounds=1, device="cpu"))


def test_dynamic_topology_and_bad_arguments():
    result = run_simulation(SimConfig(peers=6, topology="dynamic", every_k=1, rounds=2, local_steps=5, device="cpu"))
    assert len(result.rounds) == 2 and 0 < result.spectral_gap <= 1
    with pytest.raises(ValueError, match="unknown topology"):
        run_simulation(SimConfig(peers=4, topology="hypercube", rounds=1, device="cpu"))


def test_cli_prints_one_json_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "peers",
            "simulate",
            "--peers",
            "4",
            "--topology",
            "ring",
            "--rounds",
            "2",
            "--partition",
            "dirichlet:0.5",
            "--local-steps",
            "5",
            "--lr",
            "0.1",
            "--model",
            "mlp",
            "--rule",
            "mean",
            "--seed",
            "0",
            "--device",
            "cpu",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # the display goes to stderr under --json
    summary = json.loads(lines[0])
    assert summary["rounds"] == 2 and len(summary["accuracy"]) == 2
    assert 0 <= summary["final_accuracy"] <= 1 and summary["final_accuracy"] == summary["accuracy"][-1]
    assert 0 < summary["spectral_gap"] <= 1 and summary["seconds"] > 0
    assert "final accuracy" in out.stderr
