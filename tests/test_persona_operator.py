"""The node operator, in headless Chromium on the production stack: signs up, registers a node
through the form (its hardware report from `python -m peers hw`, as the page asks), copies the
token it is shown once, and watches the console (/nodes/, over /ws/operator/) while a real
`python -m peers join` process with that token comes up and is stopped again. The node's row goes
offline -> idle -> offline (through stale) in the same document, never reloaded; screenshots of
each step are kept as test artifacts."""

from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import sync_playwright

from nodes.models import Node, NodeSample
from tests.live_clients import document_loaded_at, launch_chromium, real_errors, screenshot, watch_page_errors
from tests.stack_fixtures import NODE_ONLINE_SECONDS, participant_command

PERSONA = "operator"
PASSWORD = "a-long-password-1"
NODE = "persona-rig"
PEER_UP_MS = 120_000  # the peer process imports torch and says hello; its first beat is 5 s later
WAIT_MS = 30_000  # stopped at one beat, stale after 1.5 beats and offline after 2 (5 s beats here)

# Every change of the row's status as the page renders it (consecutive repeats dropped).
WATCH_ROW = """row => {
  window.seenStatuses = [row.dataset.status];
  new MutationObserver(() => {
    const seen = window.seenStatuses;
    if (seen[seen.length - 1] !== row.dataset.status) seen.push(row.dataset.status);
  }).observe(row, { attributes: true, attributeFilter: ["data-status"] });
}"""


def row_status_is(page, node_row: str, status: str, timeout: int) -> None:
    page.wait_for_function(
        f"() => document.querySelector(\"{node_row}\").dataset.status === '{status}'", timeout=timeout
    )
    assert page.text_content(f"{node_row} td:nth-child(2) .badge") == status


def test_an_operator_registers_a_node_and_watches_it_come_and_go_live(stack, tmp_path):
    hardware = participant_command(tmp_path, "hw")

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = watch_page_errors(page)

            page.goto(stack.url + "/accounts/signup/")
            page.fill("#id_username", "persona-operator")
            page.fill("#id_password1", PASSWORD)
            page.fill("#id_password2", PASSWORD)
            with page.expect_navigation():
                page.click("main button[type=submit]")
            assert page.is_visible("nav >> text=Log out")

            # The console starts empty; the operator registers a node from it.
            page.click("nav >> text=My nodes")
            assert page.url == stack.url + "/nodes/", page.url
            assert "No nodes yet." in page.text_content("#console-nodes")
            page.click("main >> text=Register a node")
            page.fill("#id_name", NODE)
            page.fill("#id_hardware_json", hardware)
            screenshot(page, PERSONA, "1-register-form")
            with page.expect_navigation():
                page.click("main button[type=submit]")
            token = page.text_content("#node-token").strip()
            assert token.startswith("dfln_"), token
            assert f"--token {token}" in page.text_content("pre")
            screenshot(page, PERSONA, "2-token")

            # The node's page, then the console: the node is there, offline (never heard from).
            with page.expect_navigation():
                page.click("text=Go to the node")
            assert NODE in page.text_content("h1")
            page.click("nav >> text=My nodes")
            page.wait_for_function(
                "() => document.getElementById('console-state').textContent.startsWith('Live')", timeout=WAIT_MS
            )
            node_id = int(page.get_attribute("#console-nodes tr[data-node]", "data-node"))
            node_row = f"#console-nodes tr[data-node='{node_id}']"
            assert page.locator("#console-nodes tr[data-node]").count() == 1
            assert page.text_content(f"{node_row} td:first-child") == NODE
            row_status_is(page, node_row, "offline", WAIT_MS)
            screenshot(page, PERSONA, "3-console-offline")
            page.eval_on_selector(node_row, WATCH_ROW)
            loaded = document_loaded_at(page)

            # A real peer with the token joins: hello, then a heartbeat with its stats each 5 s.
            peer = stack.peer(token, "digits:0/1")
            try:
                row_status_is(page, node_row, "idle", PEER_UP_MS)
            except Exception:
                raise AssertionError(f"the row never went idle\n{peer.output()[-3000:]}") from None
            cells = page.eval_on_selector(node_row, "tr => Array.from(tr.cells).map(c => c.textContent)")
            assert cells[2] == "–" and cells[4].endswith(" %"), cells  # no job yet; its CPU load shown
            screenshot(page, PERSONA, "4-console-online")

            # The peer stops (no more beats): the row goes stale, then offline, by itself.
            seen_before_stop = page.evaluate("() => window.seenStatuses.length")
            peer.stop()
            row_status_is(page, node_row, "offline", WAIT_MS)
            screenshot(page, PERSONA, "5-console-offline-again")

            seen = page.evaluate("() => window.seenStatuses")
            assert seen[0] == "offline" and "idle" in seen[:seen_before_stop], seen
            assert set(seen[seen_before_stop:]) <= {"stale", "offline"} and seen[-1] == "offline", seen
            # All of it in the document first loaded: no reload, no navigation.
            assert document_loaded_at(page) == loaded
            assert page.evaluate("() => performance.getEntriesByType('navigation').map(e => e.type)") == ["navigate"]
            assert real_errors(errors) == [], errors
        finally:
            browser.close()

    node = Node.objects.get(pk=node_id)
    assert node.owner == User.objects.get(username="persona-operator") and node.name == NODE
    assert len(node.public_key) == 64  # the peer's hello set its signing key
    assert node.stats.get("status") == "idle" and NodeSample.objects.filter(node=node).exists()
    # Offline by the stack's own measure too (its NODE_ONLINE_SECONDS, not this process's).
    assert (timezone.now() - node.last_seen).total_seconds() > NODE_ONLINE_SECONDS
