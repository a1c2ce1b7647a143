"""The platform's admin (a staff user), in headless Chromium on the production stack: a job of two
rounds is funded on anvil and settled by the stack's own settler process; the admin logs in,
opens the chain audit from the nav, finds the job, runs the audit (queued on the settler, the
only process that reaches the chain), reloads until its verdict is in, sees every check pass,
and downloads the CSV, whose payout rows are exactly the database's payouts. Screenshots of each
step are kept as test artifacts, and so is the CSV."""

import csv
import io
import time

from django.contrib.auth.models import User
from django.db import transaction
from playwright.sync_api import sync_playwright

from jobs import queue
from jobs.models import Job
from ledger.models import Payout, TxStatus, tokens_text
from tests.live_clients import ARTIFACTS, launch_chromium, real_errors, screenshot, watch_page_errors
from tests.test_ledger import add_round, funded_job, nodes_with_addresses

PERSONA = "admin"
PASSWORD = "a-long-password-1"
SETTLED_WITHIN_S = 120
AUDITED_WITHIN_S = 60


def settled_job(stack) -> Job:
    """Three nodes, two closed rounds (one node diverged in the second), funded here on the
    stack's anvil and settled by the stack's settler."""
    a, b, c = nodes_with_addresses(3)
    with transaction.atomic():  # the stack's beat settles ended jobs: it sees this one whole or not at all
        job = funded_job(reward_per_round=9, rounds=2, status=Job.Status.FINISHED)
        add_round(job, 1, {a: 1, b: 1, c: 1})
        add_round(job, 2, {a: 1, b: 1}, diverged={b})
    assert queue.settle_job(job.id)
    deadline = time.monotonic() + SETTLED_WITHIN_S
    while True:
        job.refresh_from_db()
        payouts = list(Payout.objects.filter(job=job))
        if job.status == Job.Status.SETTLED and payouts and all(p.status == TxStatus.CONFIRMED for p in payouts):
            return job
        assert time.monotonic() < deadline, f"not settled: {job.status}, {payouts}\n{stack.logs()}"
        time.sleep(0.5)


def test_an_admin_audits_a_settled_job_and_downloads_the_csv(stack):
    job = settled_job(stack)
    payouts = list(Payout.objects.filter(job=job).select_related("round").order_by("round__number", "index"))
    assert len(payouts) == 4  # round 1: all three; round 2: the one that did not diverge (b scored 0)
    User.objects.create_user("persona-admin", password=PASSWORD, is_staff=True)

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page = context.new_page()
            errors = watch_page_errors(page)

            page.goto(stack.url + "/")
            page.click("nav >> text=Log in")
            page.fill("#id_username", "persona-admin")
            page.fill("#id_password", PASSWORD)
            with page.expect_navigation():
                page.click("main button[type=submit]")
            assert page.is_visible("nav >> text=Log out")

            # The nav's Audit link (staff only) lists every job with an escrow; this one is there.
            page.click("nav >> text=Audit")
            assert page.url == stack.url + "/payouts/audit/", page.url
            link = page.locator(f"a[href='/payouts/audit/{job.id}/']")
            assert link.count() >= 1
            screenshot(page, PERSONA, "1-audit-list")
            with page.expect_navigation():
                link.first.click()
            assert page.url == f"{stack.url}/payouts/audit/{job.id}/", page.url
            assert page.text_content("#verdict").strip() == "Not audited yet."
            assert "Job completed" in page.text_content("#audit-summary")
            screenshot(page, PERSONA, "2-not-audited")

            # Runs the audit; the settler does it; the page says to reload for the result.
            with page.expect_navigation():
                page.click("#run-audit")
            assert "queued" in page.text_content(".messages")
            deadline = time.monotonic() + AUDITED_WITHIN_S
            while page.text_content("#verdict").strip() == "Not audited yet.":
                assert time.monotonic() < deadline, "the audit never ran\n" + stack.logs()
                time.sleep(1)
                page.reload()
            verdict = page.text_content("#verdict")
            checks = page.locator("#audit-checks tr.ok").count()
            assert verdict == f"all {checks} checks match the chain", verdict
            assert page.locator("#audit-checks tr.mismatch").count() == 0 and "MISMATCH" not in page.content()
            rounds = page.eval_on_selector_all("#audit-checks tbody", "bs => bs.map(b => b.dataset.round)")
            assert rounds == ["job", "1", "2"], rounds
            screenshot(page, PERSONA, "3-audited")

            # Downloads the CSV from the page's CSV link.
            with page.expect_download() as download_info:
                page.click("#csv")
            download = download_info.value
            assert download.suggested_filename == f"audit-job-{job.id}.csv"
            saved = ARTIFACTS / "personas" / f"{PERSONA}-audit-job.csv"
            download.save_as(saved)
            rows = list(csv.reader(io.StringIO(saved.read_text())))

            # The job's page shows the same payouts, confirmed.
            with page.expect_navigation():
                page.click(f"h1 a[href='/jobs/{job.id}/']")
            page.wait_for_function(
                "() => document.querySelectorAll('#payouts tr').length === 4 && "
                "Array.from(document.querySelectorAll('#payouts tr')).every(r => r.textContent.includes('confirmed'))",
                timeout=20_000,
            )
            screenshot(page, PERSONA, "4-job-payouts")
            assert real_errors(errors) == [], errors
        finally:
            browser.close()

    assert rows[0] == ["job", "ran_at", "round", "check", "database", "chain", "result", "tx_hash", "tx_url"]
    body = rows[1:]
    assert len(body) == checks and {r[6] for r in body} == {"ok"} and {r[0] for r in body} == {str(job.id)}
    paid = {(r[2], r[3]): r for r in body if r[3].startswith("payout node ")}
    assert len(paid) == len(payouts), paid
    for p in payouts:
        row = paid[(str(p.round.number), f"payout node {p.node_id}")]
        amount = tokens_text(int(p.amount_wei))
        assert row[4] == f"{amount} to {p.address} (confirmed)", row
        assert row[5].lower() == f"{amount} to {p.address}".lower(), row  # what RewardPaid says
        assert row[7] == p.tx_hash and p.tx_hash, row
    assert sum(int(p.amount_wei) for p in payouts if p.round.number == 1) == 9 * 10**18
