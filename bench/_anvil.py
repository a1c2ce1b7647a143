"""A throwaway anvil (the npm-pinned binary) for benchmarks: ``with anvil() as url: ...``."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 20
# anvil's well-known dev accounts (public test keys from its default mnemonic)
DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
)


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
        return int(s.getsockname()[1])


def rpc_answers(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return "result" in json.load(response)
    except OSError:
        return False


@contextlib.contextmanager
def anvil(*extra_args: str) -> Iterator[str]:
    """Start anvil on a free local port, yield its JSON-RPC URL, stop it afterwards."""
    binary = anvil_binary()
    if not binary or not os.access(binary, os.X_OK):
        raise RuntimeError("anvil binary not found: run `npm ci` (node_modules/@foundry-rs/anvil-*) or set ANVIL_BIN")
    url = f"http://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", port, "--silent", *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not rpc_answers(url):
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"anvil exited with {proc.returncode}: {log.read().decode(errors='replace')}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"anvil did not answer JSON-RPC at {url} within {START_TIMEOUT_S}s")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
