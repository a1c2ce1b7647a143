"""HTTP client for the platform's node API (bearer token). Blocking calls run in a thread."""

from __future__ import annotations

import asyncio

import requests


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

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = self.session.request(method, self.base + path, json=body, timeout=self.timeout)
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

    async def heartbeat(self) -> dict:
        return await asyncio.to_thread(self._call, "POST", "node/heartbeat", {})

    async def report(self, message: dict) -> dict:
        return await asyncio.to_thread(self._call, "POST", "reports", message)
