"""HTTP client for the platform's node API (bearer token). Blocking calls run in a thread."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import requests

log = logging.getLogger("peers.client")
REPORT_ATTEMPTS = 8  # ~1 minute of backoff in all
REPORT_FIRST_DELAY_S = 0.5
REPORT_MAX_DELAY_S = 15.0


class PlatformError(RuntimeError):
    """A call the platform refused (``status`` is its HTTP status) or that never reached it (None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class PlatformClient:
    def __init__(self, server: str, token: str, timeout: float = 30.0):
        self.base = server.rstrip("/") + "/api/v1/"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def _call(
        self, method: str, path: str, body: dict | None = None, *, raw: bytes | None = None, headers=None
    ) -> dict:
        try:
            response = self.session.request(
                method, self.base + path, json=body, data=raw, headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise PlatformError(f"{method} {path}: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text[:200]}
        if response.status_code >= 400:
            raise PlatformError(
                f"{method} {path}: HTTP {response.status_code}: {data.get('error', data)}", response.status_code
            )
        return data

    def hello(self, hardware: dict, public_key: str) -> dict:
        return self._call("POST", "node/hello", {"hardware": hardware, "public_key": public_key})

    def current_plans(self) -> dict:
        return self._call("GET", "node/plans")

    async def heartbeat(self, stats: dict | None = None) -> dict:
        """Liveness, and what the peer is doing (peers.stats.collect) for its operator's console."""
        return await asyncio.to_thread(self._call, "POST", "node/heartbeat", {"stats": stats} if stats else {})

    async def report(self, message: dict, *, attempts: int = REPORT_ATTEMPTS) -> dict:
        """Post a round report, retrying with backoff while the platform cannot be reached or
        answers 5xx (a restart, a blip). Idempotent: a report the platform already stored (an
        earlier try whose answer was lost) comes back 409 "duplicate report", which is success."""
        delay = REPORT_FIRST_DELAY_S
        for attempt in range(1, attempts + 1):
            try:
                return await asyncio.to_thread(self._call, "POST", "reports", message)
            except PlatformError as exc:
                if exc.status == 409 and "duplicate report" in str(exc):
                    return {"ok": True, "duplicate": True}
                if (exc.status is not None and exc.status < 500) or attempt == attempts:
                    raise
                log.warning(
                    "report of round %s not delivered (%s); retrying in %.1f s", message.get("round"), exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, REPORT_MAX_DELAY_S)
        raise AssertionError("unreachable")

    def upload_model(self, job_id: int, blob: bytes) -> dict:
        """Upload a finished job's final model (the consensus, as safetensors bytes): only the
        job's validator node may, once; the same bytes again are a no-op."""
        headers = {"Content-Type": "application/octet-stream", "X-Content-SHA256": hashlib.sha256(blob).hexdigest()}
        return self._call("PUT", f"jobs/{job_id}/model", raw=blob, headers=headers)
