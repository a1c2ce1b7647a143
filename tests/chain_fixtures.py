"""A real anvil for the session. Missing binary or a failed start fails the tests, never skips."""

import contextlib
from pathlib import Path

import pytest

from bench._anvil import anvil as start_anvil
from bench._anvil import anvil_binary, free_port, rpc_answers  # noqa: F401  (used by other fixtures and tests)

ROOT = Path(__file__).resolve().parents[1]
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's account 0 (public)
START_TIMEOUT_S = 20


@pytest.fixture(scope="session")
def anvil():
    """One anvil for the session (bench._anvil starts and stops it); a failed start fails the tests."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(start_anvil())
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield url


@pytest.fixture
def chain_settings(anvil, settings):
    """Point the ledger at the session's anvil, paying with anvil's well-known dev key (given
    explicitly: the platform never falls back to it)."""
    settings.CHAIN_RPC_URL = anvil
    settings.CHAIN_PRIVATE_KEY = ANVIL_DEV_KEY
    return settings
