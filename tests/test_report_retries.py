"""Peers retry their reports with backoff and treat "already stored" as success, against a real
HTTP server on loopback that fails the way a restarting platform does."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from peers import client as client_module
from peers.client import PlatformClient, PlatformError


@pytest.fixture
def platform(monkeypatch):
    monkeypatch.setattr(client_module, "REPORT_FIRST_DELAY_S", 0.05)
    answers: list[tuple[int, dict]] = []
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, body = answers.pop(0) if answers else (201, {"ok": True})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield PlatformClient(f"http://127.0.0.1:{server.server_port}", "dfln_x_y"), answers, received
    server.shutdown()


async def test_a_report_is_retried_through_server_errors(platform):
    client, answers, received = platform
    answers += [(503, {"error": "restarting"}), (502, {"error": "bad gateway"})]
    assert await client.report({"round": 3}) == {"ok": True}
    assert len(received) == 3


async def test_a_report_already_stored_counts_as_delivered(platform):
    client, answers, _received = platform
    answers.append((409, {"error": "duplicate report"}))
    assert (await client.report({"round": 3}))["duplicate"] is True


async def test_a_refused_report_is_not_retried(platform):
    client, answers, received = platform
    answers.append((409, {"error": "round 3 is closed"}))
    with pytest.raises(PlatformError) as refused:
        await client.report({"round": 3})
    assert refused.value.status == 409 and len(received) == 1


async def test_an_unreachable_platform_is_retried_then_reported(platform):
    _client, _, _ = platform
    dead = PlatformClient("http://127.0.0.1:9", "dfln_x_y")
    with pytest.raises(PlatformError) as failed:
        await dead.report({"round": 1}, attempts=3)
    assert failed.value.status is None
