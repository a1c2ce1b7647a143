"""A real anvil for the session. Missing binary or a failed start fails the tests, never skips."""

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bench._anvil import anvil_binary, free_port, rpc_answers

ROOT = Path(__file__).resolve().parents[1]
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's account 0 (public)
START_TIMEOUT_S = 20


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
