"""The operator console in a real browser on the real stack: the nodes page follows a node's
heartbeat stats live, and the node's page charts its history, without console errors."""

import json

from django.contrib.auth.models import User
from django.test import Client
from playwright.sync_api import sync_playwright

from tests.factories import make_node
from tests.live_clients import in_thread, launch_chromium, log_in_page, watch_page_errors

PASSWORD = "a-long-password-1"
WAIT_MS = 20_000


def beat(node, stats: dict) -> int:
    response = Client().post(
        "/api/v1/node/heartbeat",
        data=json.dumps({"stats": stats}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {node.token}",
    )
    return response.status_code


def test_console_follows_heartbeats_and_node_page_charts_history(stack):
    owner = User.objects.create_user("operator", password=PASSWORD)
    node = make_node(owner, "rig-1", online=True)
    assert beat(node, {"status": "idle", "cpu_percent": 12.0, "ram_percent": 40.0, "steps_per_s": 0.0}) == 200

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            errors = watch_page_errors(page)
            log_in_page(page, stack.url, "/nodes/", "operator", PASSWORD)
            page.wait_for_function(
                "() => document.getElementById('console-state').textContent.startsWith('Live')", timeout=WAIT_MS
            )
            row = f"#console-nodes tr[data-node='{node.id}']"
            assert page.get_attribute(row, "data-status") == "idle"

            stats = {
                "status": "training",
                "job": 3,
                "round": 2,
                "steps_per_s": 55.5,
                "cpu_percent": 97.0,
                "gpu_util": 80.0,
                "gpu_mem_used_gb": 9.5,
                "gpu_mem_total_gb": 80.0,
                "last_error": "boom",
            }
            assert in_thread(beat, node, stats) == 200
            page.wait_for_function(
                f"() => document.querySelector(\"{row}\").dataset.status === 'training'", timeout=WAIT_MS
            )
            cells = page.eval_on_selector(row, "tr => Array.from(tr.cells).map(c => c.textContent)")
            assert cells[2] == "job 3 / round 2" and cells[3] == "55.5" and cells[4] == "97 %", cells
            assert cells[6] == "80 %, 9.5 / 80.0 GB" and cells[8] == "boom", cells
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390

            page.goto(f"{stack.url}/nodes/{node.id}/")
            page.wait_for_function(
                "() => (document.getElementById('history-usage').data || []).length === 4", timeout=WAIT_MS
            )
            usage = page.evaluate("() => document.getElementById('history-usage').data.map(t => t.y.length)")
            assert usage == [2, 2, 2, 2], usage
            assert [e for e in errors if not e.endswith("/favicon.ico")] == [], errors
        finally:
            browser.close()
