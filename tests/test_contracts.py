"""The committed contract artifacts are exactly what the pinned compiler makes of the sources."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "platform" / "ledger" / "artifacts" / "RewardToken.json"


def node() -> str:
    binary = shutil.which("node")
    if binary is None:
        pytest.fail("node is required to compile the contracts")
    return binary


def test_committed_artifacts_match_a_fresh_compile():
    result = subprocess.run(
        [node(), "contracts/compile.js", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_check_names_a_stale_artifact(tmp_path):
    # A copy of the tree whose artifact differs from its sources: --check must fail and say which.
    (tmp_path / "contracts").mkdir()
    for f in (ROOT / "contracts").iterdir():
        if f.suffix in {".sol", ".js"}:
            shutil.copy(f, tmp_path / "contracts" / f.name)
    (tmp_path / "node_modules").symlink_to(ROOT / "node_modules")
    stale = tmp_path / "platform" / "ledger" / "artifacts" / ARTIFACT.name
    stale.parent.mkdir(parents=True)
    artifact = json.loads(ARTIFACT.read_text())
    artifact["bytecode"] = artifact["bytecode"][:-2] + "00"
    stale.write_text(json.dumps(artifact, indent=2) + "\n")
    result = subprocess.run(
        [node(), "contracts/compile.js", "--check"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "platform/ledger/artifacts/RewardToken.json" in result.stderr


def test_artifact_shape():
    artifact = json.loads(ARTIFACT.read_text())
    assert list(artifact) == ["contractName", "abi", "bytecode", "compiler", "evmVersion"]
    assert artifact["contractName"] == "RewardToken"
    assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 2
    assert artifact["compiler"].startswith("solc-0.8.30") and artifact["evmVersion"] == "cancun"
    functions = {item["name"] for item in artifact["abi"] if item["type"] == "function"}
    assert {"mint", "transfer", "balanceOf", "decimals", "MINTER_ROLE", "hasRole"} <= functions


def abi_names(name: str, kind: str) -> set[str]:
    artifact = json.loads((ARTIFACT.parent / f"{name}.json").read_text())
    assert artifact["contractName"] == name and artifact["compiler"].startswith("solc-0.8.30")
    return {item["name"] for item in artifact["abi"] if item["type"] == kind}


def test_the_abi_the_platform_codes_against():
    assert {"burn", "burnFrom", "permit", "nonces", "DOMAIN_SEPARATOR", "mint"} <= abi_names("RewardToken", "function")
    assert {
        "registerJob",
        "fundJob",
        "fundJobWithPermit",
        "commitRound",
        "claim",
        "payBatch",
        "closeJob",
        "stake",
        "slash",
        "releaseStake",
        "jobs",
        "rounds",
        "isPaid",
        "primeClaims",
        "stakes",
        "rewardLeaf",
        "COORDINATOR_ROLE",
    } <= abi_names("TrainingLedger", "function")
    assert {
        "JobRegistered",
        "JobFunded",
        "RoundCommitted",
        "RewardPaid",
        "JobClosed",
        "Staked",
        "Slashed",
        "StakeReleased",
    } <= abi_names("TrainingLedger", "event")
    assert {"registerModel", "grantAccess", "revokeAccess", "hasAccess", "models"} <= abi_names(
        "ModelRegistry", "function"
    )
    assert {"ModelRegistered", "AccessGranted", "AccessRevoked"} <= abi_names("ModelRegistry", "event")
