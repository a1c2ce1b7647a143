"""One signer at a time for the operator key, across processes: its nonces must never interleave."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

SIGNER_LOCK_KEY = 0x44464C5349474E  # "DFLSIGN": one advisory lock for the operator key
_process_signer_lock = threading.RLock()


@contextmanager
def signer_lock() -> Iterator[None]:
    """Held while anything signs with the operator key (settlement, funding, the faucet,
    deploying a contract): a Postgres advisory lock across processes, a process lock on SQLite."""
    with _process_signer_lock:
        if connection.vendor != "postgresql":
            yield
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [SIGNER_LOCK_KEY])
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [SIGNER_LOCK_KEY])
