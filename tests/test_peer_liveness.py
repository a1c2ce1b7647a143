"""What an operator sees when a peer dies, on the production stack: a SIGKILLed peer's node
leaves "online" after at most two missed heartbeats, the job page names the peer the round waits
for, the next round is planned without the dead peer, and the restarted peer, finding the round
it missed closed, says so at INFO (no ERROR) and is planned again from the following round."""

import time
from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import sync_playwright

from jobs.models import PeerReport as StoredReport
from jobs.models import Round
from jobs.orchestration import accept_report, dispatch_plans
from nodes.models import Node
from tests.factories import make_running_job, peer_report
from tests.live_clients import launch_chromium, log_in_page
from tests.stack_fixtures import NODE_ONLINE_SECONDS

PASSWORD = "a-long-password-1"
HEARTBEAT_S = NODE_ONLINE_SECONDS / 2  # what the node API tells peers
BEAT_PERIOD_S = 5  # mark-offline-nodes in CELERY_BEAT_SCHEDULE
WAITING_ON = "() => document.getElementById('waiting-on').textContent"


def test_killed_peer_goes_offline_on_the_page_and_comes_back_quietly(stack):
    owner = User.objects.create_user("operator", password=PASSWORD)
    job, round_one, (alpha, beta) = make_running_job(
        owner, cohort_size=2, name="watched job", rounds=3, node_names=["alpha", "beta"], round_timeout_s=25
    )
    token = alpha.issue_token()
    alpha.public_key = ""  # never joined yet: its peer's first hello sets the key
    alpha.save()
    peer = stack.peer(token, "digits:0/2")
    peer.wait_for(r"joined", timeout=60)

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in_page(page, stack.url, f"/jobs/{job.id}/", "operator", PASSWORD)
            # alpha's peer is up; beta's never came: the page says whom round 1 waits for.
            page.wait_for_function(
                f"() => ({WAITING_ON})() === 'Round 1 is waiting for alpha, beta (offline).'", timeout=20_000
            )

            killed_at = time.monotonic()
            peer.kill()
            page.wait_for_function(
                f"() => ({WAITING_ON})() === 'Round 1 is waiting for alpha (offline), beta (offline).'", timeout=60_000
            )
            gone_after = time.monotonic() - killed_at
            states = page.evaluate(
                "() => Array.from(document.querySelectorAll('#peers tr'))"
                ".map(r => [r.cells[1].textContent, r.cells[3].textContent])"
            )
            assert states == [["alpha", "offline"], ["beta", "offline"]]
            assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
        finally:
            browser.close()
    # Two missed heartbeats, plus one period of the beat task that notices, plus delivery.
    assert gone_after <= 2 * HEARTBEAT_S + BEAT_PERIOD_S + 3, gone_after

    def beta_reports(number: int) -> None:  # beta is a stand-in that only reports
        Node.objects.filter(pk=beta.pk).update(last_seen=timezone.now())
        accept_report(beta, peer_report(job, beta, number))

    def wait_for_round(number: int) -> Round:
        deadline = time.monotonic() + 30
        while not Round.objects.filter(job=job, number=number).exists():
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.2)
        return Round.objects.get(job=job, number=number)

    # While alpha is down its round-1 plan waits in its inbox; beta reports and the deadline
    # closes round 1 (beat). Round 2 is planned for beta alone: nobody waits for the dead.
    dispatch_plans(round_one)
    beta_reports(1)
    Round.objects.filter(pk=round_one.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    assert wait_for_round(2).members == [beta.id]

    # alpha restarts (same machine, same key): the platform tells it round 1 closed, so it skips
    # the stale plan at INFO; beta completes round 2, and round 3 counts on alpha again.
    again = stack.peer(token, "digits:0/2", home=peer.home)
    again.wait_for(r"INFO .*round 1 of job \d+ closed while this peer was away", timeout=60)
    beta_reports(2)
    assert sorted(wait_for_round(3).members) == sorted([alpha.id, beta.id])
    Node.objects.filter(pk=beta.pk).update(last_seen=timezone.now())
    assert again.popen.wait(timeout=90) == 0, again.output()[-3000:]  # it trains round 3, the last
    assert " ERROR " not in again.output(), again.output()[-3000:]
    assert StoredReport.objects.filter(round__job=job, round__number=3, node=alpha).exists(), again.output()[-3000:]
    assert not StoredReport.objects.filter(round__job=job, round__number__in=(1, 2), node=alpha).exists()
