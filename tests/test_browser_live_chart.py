"""A real browser (Debian's chromium driven by playwright) on the real stack (daphne, a Celery
worker, Redis, PostgreSQL): a participant logs in through the login page, opens a running job,
and the chart follows the reports as they are accepted, without a reload."""
import os
import threading
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from playwright.sync_api import sync_playwright

from jobs.models import Job, Round
from jobs.orchestration import accept_report
from nodes.models import Node
from peers.protocol import PeerReport
from tests.factories import make_running_job

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT = Path("/tmp/job_page.png")
PASSWORD = "a-long-password-1"
WAIT_MS = 20_000

CHART_STATE = """() => {
  const c = document.getElementById('chart');
  return {
    updates: Number(c.dataset.updates || 0),
    traces: (c.data || []).map(t => ({name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])})),
    accuracy: document.getElementById('job-accuracy').textContent,
    round: document.getElementById('job-round').textContent,
    live: document.getElementById('live-state').textContent,
  };
}"""


def report(job: Job, node: Node, accuracy: float, loss: float) -> PeerReport:
    return PeerReport(job_id=job.id, round=1, node_id=node.id, train_loss=loss, eval_loss=loss, accuracy=accuracy,
                      samples=300, eval_samples=100, model_hash="e" * 64, bytes_sent=1, bytes_received=1,
                      duration_s=0.5)


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


def trace(state: dict, name: str) -> dict:
    matches = [t for t in state["traces"] if t["name"] == name]
    assert len(matches) == 1, (name, state["traces"])
    return matches[0]


def test_chart_updates_live_in_a_real_browser(stack):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium (or set CHROMIUM_BIN)")
    owner = User.objects.create_user("watcher", password=PASSWORD)
    job, _, (alpha, beta) = make_running_job(owner, name="Digits, live", rounds=3, node_names=["alpha", "beta"],
                                             description="Browser test job")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text} {msg.location.get('url', '')}")
                    if msg.type == "error" else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)

            # Log in through the real login page; it sends us on to the job.
            page.goto(f"{stack.url}/jobs/{job.id}/")
            assert page.url.startswith(f"{stack.url}/login/"), page.url
            page.fill("#id_username", "watcher")
            page.fill("#id_password", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url == f"{stack.url}/jobs/{job.id}/", page.url
            assert page.title().startswith("Digits, live")

            # The socket is open and the snapshot drawn: an empty chart (two mean traces, no points).
            page.wait_for_function("() => document.getElementById('chart').dataset.updates === '1'", timeout=WAIT_MS)
            page.wait_for_function("() => document.getElementById('live-state').textContent.startsWith('Live')",
                                   timeout=WAIT_MS)
            before = page.evaluate(CHART_STATE)
            assert [t["name"] for t in before["traces"]] == ["mean accuracy", "mean loss"]
            assert all(t["x"] == [] for t in before["traces"])
            assert before["accuracy"] == "–" and before["round"] == "1 / 3"

            # A report is accepted in this process: the broadcast goes through Redis to daphne to the page.
            in_thread(accept_report, alpha, report(job, alpha, 0.55, 1.2))
            page.wait_for_function("() => document.getElementById('chart').dataset.updates === '2'", timeout=WAIT_MS)
            after_one = page.evaluate(CHART_STATE)
            assert trace(after_one, "alpha accuracy")["x"] == [1]
            assert trace(after_one, "alpha accuracy")["y"] == [0.55]
            assert trace(after_one, "mean accuracy")["x"] == []

            # The last report completes the round; the Celery worker closes it and opens round 2:
            # a report frame, a round frame and a status frame arrive, still without a reload.
            in_thread(accept_report, beta, report(job, beta, 0.75, 0.8))
            page.wait_for_function("() => Number(document.getElementById('chart').dataset.updates) >= 5",
                                   timeout=WAIT_MS)
            state = page.evaluate(CHART_STATE)
            assert trace(state, "beta accuracy")["y"] == [0.75]
            assert trace(state, "mean accuracy")["x"] == [1]
            assert trace(state, "mean accuracy")["y"] == [pytest.approx(0.65)]
            assert trace(state, "mean loss")["y"] == [pytest.approx(1.0)]
            assert state["accuracy"] == "65.0 %"
            assert state["round"] == "2 / 3"
            assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
            assert page.evaluate("() => performance.getEntriesByType('navigation')[0].type") == "navigate"

            page.wait_for_timeout(300)  # let plotly finish drawing before the picture
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            # The browser's own favicon probe is not the page's doing; anything else is.
            assert [e for e in errors if not e.endswith("/favicon.ico")] == [], errors
        finally:
            browser.close()
    assert Round.objects.get(job=job, number=1).status == Round.Status.CLOSED, stack.logs()
