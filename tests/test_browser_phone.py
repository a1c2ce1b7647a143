"""The pages fit a 390 px wide phone (Chromium, playwright): nothing makes the page scroll
sideways; wide tables scroll inside their own box. The server is pytest-django's live server
(no websocket there: the page stays at its first render, which is what is measured)."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from playwright.sync_api import sync_playwright

from jobs.models import Consent, Job, Round
from tests.factories import make_node, make_running_job, make_user
from tests.live_clients import launch_chromium

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 390, "height": 844}
LONG_NAME = "Handwritten digits, ring of eight, Krum with f=1, int8 compression, cosine schedule"


def overflow(page) -> dict:
    return page.evaluate(
        """() => ({scroll: document.documentElement.scrollWidth,
                  wide: [...document.querySelectorAll('body *')]
                    .filter(e => e.getBoundingClientRect().right > 391 && !e.closest('.scroll'))
                    .slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)})"""
    )


def test_job_pages_fit_a_390_px_phone(live_server):
    owner = make_user("phone-owner")
    job, rnd, _nodes = make_running_job(
        owner, cohort_size=3, name=LONG_NAME, rounds=40, reward_per_round=10, node_names=["alpha", "beta", "gamma"]
    )
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.CLOSED, mean_accuracy=0.5, mean_loss=1.0)
    recruiting = Job.objects.create(owner=owner, name=LONG_NAME + " (recruiting)", num_peers=4)
    helper = make_node(make_user(), "helper", online=True)
    Consent.objects.create(job=recruiting, node=helper, granted=True, by=helper.owner)
    Job.objects.filter(pk=recruiting.pk).update(created_at=timezone.now() - timedelta(days=1))

    client = Client()
    client.force_login(owner)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            context = browser.new_context(viewport=PHONE)
            context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
            page = context.new_page()
            for path in (
                f"/jobs/{job.id}/",
                f"/jobs/{recruiting.id}/",
                "/jobs/",
                "/jobs/new/",
                "/nodes/",
                "/payouts/",
                "/accounts/profile/",
                "/",
            ):
                page.goto(live_server.url + path)
                page.wait_for_load_state("load")
                measured = overflow(page)
                assert measured["scroll"] <= PHONE["width"], (path, measured)
            # 40 rounds: whole-round labels, few enough not to collide
            page.goto(live_server.url + f"/jobs/{job.id}/")
            page.wait_for_selector("#chart .xtick text")
            ticks = page.eval_on_selector_all("#chart .xtick text", "els => els.map(e => e.textContent)")
            assert 2 <= len(ticks) <= 11 and all(t.isdigit() for t in ticks), ticks
            # the recruiting job says how far it is
            page.goto(live_server.url + f"/jobs/{recruiting.id}/")
            assert "1 of 4 nodes consented (1 online)" in page.text_content("#recruiting")
        finally:
            browser.close()
