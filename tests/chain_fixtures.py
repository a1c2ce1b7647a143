"""A real anvil for the session. Missing binary or a failed start fails the tests, never skips."""

import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's account 0 (public)
START_TIMEOUT_S = 20


def anvil_binary() -> str | None:
    """$ANVIL_BIN, the npm @foundry-rs/anvil platform binary, or anvil on PATH."""
    if os.environ.get("ANVIL_BIN"):
        return os.environ["ANVIL_BIN"]
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), ""
    )
    npm_bin = ROOT / "node_modules" / "@foundry-rs" / f"anvil-{platform.system().lower()}-{arch}" / "bin" / "anvil"
    if npm_bin.is_file():
        return str(npm_bin)
    return shutil.which("anvil")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rpc_answers(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return "result" in json.load(response)
    except OSError:
        return False


@pytest.fixture(scope="session")
def anvil():
    binary = anvil_binary()
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail("anvil binary not found: run `npm ci` (node_modules/@foundry-rs/anvil-*) or set ANVIL_BIN")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not rpc_answers(url):
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"anvil exited with {proc.returncode}: {log.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail(f"anvil did not answer JSON-RPC at {url} within {START_TIMEOUT_S}s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def chain_settings(anvil, settings):
    """Point the ledger at the session's anvil, paying with anvil's well-known dev key (given
    explicitly: the platform never falls back to it)."""
    settings.CHAIN_RPC_URL = anvil
    settings.CHAIN_PRIVATE_KEY = ANVIL_DEV_KEY
    return settings
