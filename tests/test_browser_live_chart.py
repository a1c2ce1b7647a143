"""A real browser (Debian's chromium driven by playwright) on the real stack (daphne, a Celery
worker, Redis, PostgreSQL): a participant logs in through the login page, opens a running job,
and the chart follows the reports as they are accepted, without a reload."""

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import sync_playwright

from jobs.models import Job, Round
from jobs.orchestration import accept_report
from nodes.models import Node
from peers.protocol import PeerReport
from tests.factories import make_running_job, peer_report
from tests.live_clients import in_thread, launch_chromium, log_in_page, watch_page_errors

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
    return peer_report(job, node, train_loss=loss, eval_loss=loss, accuracy=accuracy, samples=300, eval_samples=100)


def trace(state: dict, name: str) -> dict:
    matches = [t for t in state["traces"] if t["name"] == name]
    assert len(matches) == 1, (name, state["traces"])
    return matches[0]


def test_chart_updates_live_in_a_real_browser(stack):
    owner = User.objects.create_user("watcher", password=PASSWORD)
    job, _, (alpha, beta) = make_running_job(
        owner, name="Digits, live", rounds=3, node_names=["alpha", "beta"], description="Browser test job"
    )

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = watch_page_errors(page)

            # Log in through the real login page; it sends us on to the job.
            log_in_page(page, stack.url, f"/jobs/{job.id}/", "watcher", PASSWORD)
            assert page.title().startswith("Digits, live")

            # The socket is open and the snapshot drawn: an empty chart (two mean traces, no points).
            page.wait_for_function("() => document.getElementById('chart').dataset.updates === '1'", timeout=WAIT_MS)
            page.wait_for_function(
                "() => document.getElementById('live-state').textContent.startsWith('Live')", timeout=WAIT_MS
            )
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
            # The page names the peer the round still waits for (never heard from: offline).
            assert page.text_content("#waiting-on") == "Round 1 is waiting for beta (offline)."

            # The last report completes the round; the Celery worker closes it and opens round 2:
            # a report frame, a round frame and a status frame arrive, still without a reload.
            in_thread(accept_report, beta, report(job, beta, 0.75, 0.8))
            page.wait_for_function(
                "() => Number(document.getElementById('chart').dataset.updates) >= 5", timeout=WAIT_MS
            )
            state = page.evaluate(CHART_STATE)
            assert trace(state, "beta accuracy")["y"] == [0.75]
            assert trace(state, "mean accuracy")["x"] == [1]
            assert trace(state, "mean accuracy")["y"] == [pytest.approx(0.65)]
            assert trace(state, "mean loss")["y"] == [pytest.approx(1.0)]
            assert state["accuracy"] == "65.0 %"
            assert state["round"] == "2 / 3"
            assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
            assert page.evaluate("() => performance.getEntriesByType('navigation')[0].type") == "navigate"

            # The other charts follow the same frames: consensus, bytes, duration, the round's links.
            plotted = page.evaluate(
                """() => Object.fromEntries(['chart-consensus', 'chart-bytes', 'chart-duration', 'chart-topology'].map(
                    id => [id, (document.getElementById(id).data || []).map(t => Array.from(t.x || []).length)]))"""
            )
            assert plotted["chart-consensus"] == [1, 1, 1] and plotted["chart-bytes"] == [1, 1, 1], plotted
            assert plotted["chart-duration"][0] == 1, plotted
            assert plotted["chart-topology"][-1] == 2, plotted  # both peers (round 2 plans neither: offline)
            log = page.evaluate(
                "() => Array.from(document.querySelectorAll('#event-log li')).map(li => li.textContent)"
            )
            assert any("alpha joined the cohort" in line for line in log), log
            assert any("beta: consent granted" in line for line in log), log

            # On a 390 px phone nothing overflows sideways.
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(1000)  # plotly redraws responsive charts after a resize
            wide = page.evaluate(
                """() => Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > 391)
                    .slice(0, 8).map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""
            )
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, wide
            page.set_viewport_size({"width": 1280, "height": 900})

            page.wait_for_timeout(300)  # let plotly finish drawing before the picture
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            # The browser's own favicon probe is not the page's doing; anything else is.
            assert [e for e in errors if not e.endswith("/favicon.ico")] == [], errors
        finally:
            browser.close()
    assert Round.objects.get(job=job, number=1).status == Round.Status.CLOSED, stack.logs()
