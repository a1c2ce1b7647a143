"""Clients that watch a job the way viewers do, on a live server: a websocket client
(`websockets`, as an independent program would) and headless Chromium (playwright, driving
Debian's chromium: nothing is downloaded)."""

import json
import os
import threading
import time
from pathlib import Path

import pytest
from django.db import connection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def open_job_socket(base_url: str, job_id: int, session_cookie: str):
    """A logged-in viewer's websocket, without the client-side pings a browser does not send
    either (so nothing but the server's own traffic keeps it alive)."""
    return connect(
        base_url.replace("http", "ws", 1) + f"/ws/jobs/{job_id}/",
        origin=base_url,
        additional_headers={"Cookie": f"sessionid={session_cookie}"},
        ping_interval=None,
        open_timeout=10,
    )


class JobWatcher:
    """Records every frame of a job's websocket in a thread until closed."""

    def __init__(self, base_url: str, job_id: int, session_cookie: str):
        self._opened = open_job_socket(base_url, job_id, session_cookie)
        self.socket = self._opened.__enter__()
        self.frames: list[dict] = []
        self.closed: ConnectionClosed | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for text in self.socket:
                with self._changed:
                    self.frames.append(json.loads(text))
                    self._changed.notify_all()
        except ConnectionClosed as exc:
            self.closed = exc
        with self._changed:
            self.closed = self.closed or ConnectionClosed(None, None)
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float, what: str = "frame") -> dict:
        """The first frame (seen so far or arriving within `timeout`) for which predicate holds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for frame in self.frames:
                    if predicate(frame):
                        return frame
                if self.closed is not None:
                    pytest.fail(f"websocket closed ({self.closed}) before {what}; frames: {self.frames}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {what} within {timeout}s; frames: {[f['kind'] for f in self.frames]}")
                self._changed.wait(left)

    def close(self) -> None:
        self._opened.__exit__(None, None, None)
        self._thread.join(10)


def launch_chromium(playwright):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium (or set CHROMIUM_BIN)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def watch_page_errors(page) -> list[str]:
    """Collect what a person would see go wrong: script errors, console errors, failed requests."""
    errors = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text} {msg.location.get('url', '')}") if msg.type == "error" else None
        ),
    )
    page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    return errors


def log_in_page(page, base_url: str, path: str, username: str, password: str) -> None:
    """Open `path`, get sent to the login page, log in, land back on `path`."""
    page.goto(base_url + path)
    assert page.url.startswith(f"{base_url}/login/"), page.url
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url == base_url + path, page.url


def in_thread(fn, *args):
    """Run ORM code outside the thread where the sync playwright API keeps its event loop
    (Django refuses database calls in a thread with a running loop)."""
    result = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the test
            result["error"] = exc
        finally:
            connection.close()

    worker = threading.Thread(target=target)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), f"{fn.__name__} did not return"
    if "error" in result:
        raise result["error"]
    return result["value"]


ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", "test-artifacts"))


def screenshot(page, persona: str, step: str) -> Path:
    """A full-page screenshot kept as a test artifact: $TEST_ARTIFACTS_DIR/personas/<persona>-<step>.png
    (test-artifacts/ by default, relative to where pytest runs)."""
    path = ARTIFACTS / "personas" / f"{persona}-{step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0, path
    return path


def real_errors(errors: list[str]) -> list[str]:
    return [e for e in errors if not e.endswith("/favicon.ico")]


def document_loaded_at(page) -> float:
    """When the tab's current document started loading (performance.timeOrigin): the same number
    later means no reload or navigation happened in between (a reloaded page is a new document,
    with its own origin time and its own single navigation entry)."""
    return page.evaluate("() => performance.timeOrigin")
