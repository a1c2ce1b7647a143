"""The job creator, start to end in headless Chromium on the production stack (daphne, Celery
worker, settler and beat on PostgreSQL, Redis, RabbitMQ and anvil): signs up, fills the job form
and saves a draft, publishes it, finds it in the jobs list, opens it, cancels it through the
cancel button's confirm dialog (dismissing it first changes nothing), sees Cancelled there and,
live, in a second tab that had the job open, then clones it into a new draft. Every step clicks
the page's own links, forms and buttons; screenshots of each step are kept as test artifacts."""

import re

from django.contrib.auth.models import User
from playwright.sync_api import sync_playwright

from jobs.models import Job
from ledger.models import WEI_PER_TOKEN, Escrow
from tests.live_clients import document_loaded_at, launch_chromium, real_errors, screenshot, watch_page_errors

PERSONA = "creator"
PASSWORD = "a-long-password-1"
WAIT_MS = 20_000
JOB_NAME = "Persona digits on a ring"


def test_a_creator_drafts_publishes_cancels_and_clones_a_job(stack):
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            errors = watch_page_errors(page)

            # Signs up from the front page.
            page.goto(stack.url + "/")
            page.click("nav >> text=Sign up")
            page.fill("#id_username", "persona-creator")
            page.fill("#id_password1", PASSWORD)
            page.fill("#id_password2", PASSWORD)
            with page.expect_navigation():
                page.click("main button[type=submit]")
            assert page.url == stack.url + "/", page.url
            assert page.is_visible("nav >> text=Log out") and "Welcome!" in page.text_content(".messages")
            screenshot(page, PERSONA, "1-signed-up")

            # Fills the job form and saves it as a draft.
            page.click("nav >> text=Jobs")
            page.click("main >> text=New job")
            assert page.url == stack.url + "/jobs/new/", page.url
            page.fill("#id_name", JOB_NAME)
            page.fill("#id_description", "Made by the creator persona test.")
            page.select_option("#id_dataset", "digits")
            page.fill("#id_rounds", "3")
            page.fill("#id_num_peers", "2")
            page.fill("#id_reward_per_round", "5")
            screenshot(page, PERSONA, "2-job-form")
            with page.expect_navigation():
                page.click("button[value=draft]")
            match = re.fullmatch(re.escape(stack.url) + r"/jobs/(\d+)/", page.url)
            assert match, page.url
            job_id = int(match.group(1))
            assert page.text_content("#job-status") == "Draft"
            assert page.is_visible("#job-draft") and page.is_visible("#publish-job")
            assert "Draft saved" in page.text_content(".messages")
            screenshot(page, PERSONA, "3-draft")

            # Publishes it: it recruits, with its rewards budget still to deposit.
            with page.expect_navigation():
                page.click("#publish-job")
            assert page.text_content("#job-status") == "Recruiting"
            assert "Job published" in page.text_content(".messages")
            assert page.text_content('[data-escrow="budget"]').strip() == "15"  # 3 rounds x 5 tokens
            assert not page.is_visible("#publish-job")
            screenshot(page, PERSONA, "4-published")

            # Finds it in the jobs list, filtered to recruiting jobs, and opens it from there.
            page.click("nav >> text=Jobs")
            page.select_option("select[name=status]", "waiting")
            with page.expect_navigation():
                page.click("form.filters button[type=submit]")
            row = page.locator("table.jobs tbody tr", has_text=JOB_NAME)
            assert row.count() == 1
            assert row.locator(".badge").text_content() == "Recruiting"
            assert f"#{job_id}" in row.text_content()
            screenshot(page, PERSONA, "5-listed")
            with page.expect_navigation():
                row.locator(f"a:text('{JOB_NAME}')").click()
            assert page.url == f"{stack.url}/jobs/{job_id}/", page.url

            # A second tab has the job open, live.
            watcher = context.new_page()
            watcher_errors = watch_page_errors(watcher)
            watcher.goto(f"{stack.url}/jobs/{job_id}/")
            watcher.wait_for_function(
                "() => document.getElementById('live-state').textContent.startsWith('Live')", timeout=WAIT_MS
            )
            watcher_loaded = document_loaded_at(watcher)
            assert watcher.text_content("#job-status") == "Recruiting" and watcher.is_visible("#cancel-job")
            assert watcher.is_visible("#edit-job") and watcher.is_visible("#fund-job")

            # Cancel, then "no" in the confirm dialog: nothing happens.
            dialogs = []

            def answer(accept: bool):
                def handle(dialog):
                    dialogs.append((dialog.type, dialog.message))
                    dialog.accept() if accept else dialog.dismiss()

                return handle

            page.once("dialog", answer(False))
            loaded = document_loaded_at(page)
            page.click("#cancel-job")
            assert dialogs == [("confirm", "Cancel this job?")], dialogs
            page.wait_for_timeout(500)
            assert document_loaded_at(page) == loaded, "a dismissed confirm still submitted the form"
            assert page.text_content("#job-status") == "Recruiting"

            # Cancel, "yes": the job is cancelled.
            page.once("dialog", answer(True))
            with page.expect_navigation():
                page.click("#cancel-job")
            assert len(dialogs) == 2
            assert page.url == f"{stack.url}/jobs/{job_id}/", page.url
            assert page.text_content("#job-status") == "Cancelled"
            assert "Job cancelled." in page.text_content(".messages")
            assert page.locator("#cancel-job").count() == 0 and page.locator("#edit-job").count() == 0
            screenshot(page, PERSONA, "6-cancelled")

            # The other tab saw it happen, without a reload: the badge changed, the button went.
            watcher.wait_for_function(
                "() => document.getElementById('job-status').textContent === 'Cancelled'", timeout=WAIT_MS
            )
            # What a cancelled job no longer takes went with it: cancel, edit, the deposit form.
            assert not watcher.is_visible("#cancel-job") and not watcher.is_visible("#edit-job")
            assert not watcher.is_visible("#fund-job") and watcher.is_visible('[data-escrow="status"]')
            assert document_loaded_at(watcher) == watcher_loaded
            assert watcher.evaluate("() => performance.getEntriesByType('navigation').map(e => e.type)") == ["navigate"]
            screenshot(watcher, PERSONA, "7-cancelled-live")
            watcher.close()

            # Clones the cancelled job into a new draft, and saves it from the edit form.
            with page.expect_navigation():
                page.click("#clone-job")
            clone_match = re.fullmatch(re.escape(stack.url) + r"/jobs/(\d+)/edit/", page.url)
            assert clone_match, page.url
            clone_id = int(clone_match.group(1))
            assert clone_id != job_id
            assert page.input_value("#id_name") == f"{JOB_NAME} (copy)"
            assert page.input_value("#id_rounds") == "3" and page.input_value("#id_reward_per_round") == "5"
            assert "Draft copied" in page.text_content(".messages")
            screenshot(page, PERSONA, "8-clone-form")
            with page.expect_navigation():
                page.click("form.stacked button[type=submit]")
            assert page.url == f"{stack.url}/jobs/{clone_id}/", page.url
            assert page.text_content("#job-status") == "Draft" and page.is_visible("#publish-job")
            screenshot(page, PERSONA, "9-clone-draft")

            assert real_errors(errors) == [], errors
            assert real_errors(watcher_errors) == [], watcher_errors
        finally:
            browser.close()

    # What the pages said is what the database holds.
    creator = User.objects.get(username="persona-creator")
    job = Job.objects.get(pk=job_id)
    assert job.owner == creator and job.name == JOB_NAME
    assert job.status == Job.Status.CANCELLED and job.finished_at is not None
    assert (job.rounds, job.num_peers, job.reward_per_round) == (3, 2, 5)
    assert int(Escrow.objects.get(job=job).budget_wei) == 15 * WEI_PER_TOKEN
    clone = Job.objects.get(pk=clone_id)
    assert clone.owner == creator and clone.status == Job.Status.DRAFT and clone.name == f"{JOB_NAME} (copy)"
    assert (clone.rounds, clone.num_peers, clone.reward_per_round, clone.description) == (
        3,
        2,
        5,
        job.description,
    )
    assert clone.seed != job.seed
