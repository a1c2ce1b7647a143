"""The admin audit page: `manage.py audit_chain`'s checks per round, run by the settler's task
(the web process never reaches the chain) and read from the cache; filters, CSV, staff only."""

import csv
import io

import pytest
from django.core.cache import cache
from django.test import Client

from jobs.models import Job
from ledger import audit_results
from ledger.models import WEI_PER_TOKEN, Payout
from ledger.settlement import settle
from tests.factories import make_user
from tests.test_ledger import add_round, funded_job, nodes_with_addresses

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def staff_client() -> Client:
    user = make_user()
    user.is_staff = True
    user.save()
    return logged_in(user)


@pytest.fixture
def settled_job(chain_settings, settings):
    """A finished job of two rounds, committed and paid on anvil; the audit task runs in process."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    a, b, c = nodes_with_addresses(3)
    job = funded_job(reward_per_round=9, rounds=2)
    add_round(job, 1, {a: 1, b: 1, c: 1})
    add_round(job, 2, {a: 1, b: 1}, diverged={b})
    job.status = Job.Status.FINISHED
    job.save()
    settle(job.id)
    cache.delete_many([audit_results.result_key(job.id), audit_results.request_key(job.id)])
    return job


def run_audit(client: Client, job: Job) -> str:
    response = client.post(f"/payouts/audit/{job.id}/run/", follow=True)
    assert response.status_code == 200
    return response.content.decode()


def test_a_settled_job_audits_clean_and_a_tampered_payout_shows_up(settled_job):
    job, staff = settled_job, staff_client()
    page = staff.get(f"/payouts/audit/{job.id}/").content.decode()
    assert "Not audited yet" in page and "Run audit now" in page and "csrfmiddlewaretoken" in page

    page = run_audit(staff, job)
    result = audit_results.last(job.id)
    assert result["error"] == "" and result["counts"]["mismatches"] == 0 and result["counts"]["checks"] > 5
    assert f"all {result['counts']['checks']} checks match the chain" in page
    assert "MISMATCH" not in page
    assert "round 1" in page and "round 2" in page and "reward root" in page
    assert settled_job.settlements.get(number=1).tx_hash in page  # no explorer set: the hash as text

    listing = staff.get("/payouts/audit/").content.decode()
    assert f"/payouts/audit/{job.id}/" in listing and "ok</span>" in listing

    # Someone edits a payout's amount in the database; the chain paid what it paid.
    tampered = Payout.objects.filter(job=job, round__number=1).order_by("index").first()
    Payout.objects.filter(pk=tampered.pk).update(amount_wei=90 * WEI_PER_TOKEN)
    page = run_audit(staff, job)
    assert "MISMATCH" in page
    bad = [c for c in audit_results.last(job.id)["checks"] if not c["ok"]]
    assert [c["what"] for c in bad] == [f"payout node {tampered.node_id}"]
    assert "MISMATCH" in staff.get("/payouts/audit/").content.decode()

    only = staff.get(f"/payouts/audit/{job.id}/", {"only": "mismatches"}).content.decode()
    assert only.count('<tr class="mismatch">') == 1 and '<tr class="ok">' not in only
    assert f"payout node {tampered.node_id}" in only and "reward root" not in only


def test_round_filter_csv_and_explorer_links(settled_job, settings):
    job, staff = settled_job, staff_client()
    run_audit(staff, job)
    checks = audit_results.last(job.id)["checks"]

    round2 = staff.get(f"/payouts/audit/{job.id}/", {"round": "2"}).content.decode()
    in_round2 = [c for c in checks if c["round"] == 2]
    assert round2.count("<tr class=") == len(in_round2) and 'data-round="1"' not in round2
    job_level = staff.get(f"/payouts/audit/{job.id}/", {"round": "job"}).content.decode()
    assert "deposit" in job_level and 'data-round="2"' not in job_level

    response = staff.get(f"/payouts/audit/{job.id}/", {"format": "csv"})
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == f'attachment; filename="audit-job-{job.id}.csv"'
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:7] == ["job", "ran_at", "round", "check", "database", "chain", "result"]
    assert len(rows) == 1 + len(checks)
    assert {r[6] for r in rows[1:]} == {"ok"}
    filtered = staff.get(f"/payouts/audit/{job.id}/", {"format": "csv", "round": "2"})
    assert len(list(csv.reader(io.StringIO(filtered.content.decode())))) == 1 + len(in_round2)

    settings.CHAIN_EXPLORER_URL = "https://explorer.example"
    tx = job.settlements.get(number=2).tx_hash
    page = staff.get(f"/payouts/audit/{job.id}/").content.decode()
    assert f'href="https://explorer.example/tx/{tx}"' in page


def test_the_audit_pages_are_404_to_everyone_but_staff(settled_job):
    job = settled_job
    for client in (Client(), logged_in(make_user()), logged_in(job.owner)):
        assert client.get("/payouts/audit/").status_code == 404
        assert client.get(f"/payouts/audit/{job.id}/").status_code == 404
        assert client.get(f"/payouts/audit/{job.id}/", {"format": "csv"}).status_code == 404
        assert client.post(f"/payouts/audit/{job.id}/run/").status_code == 404
    assert audit_results.last(job.id) is None and audit_results.requested_at(job.id) is None
    assert "/payouts/audit/" not in logged_in(job.owner).get("/payouts/").content.decode()


def test_the_run_button_needs_csrf(settled_job):
    job = settled_job
    user = make_user()
    user.is_staff = True
    user.save()
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post(f"/payouts/audit/{job.id}/run/").status_code == 403
    assert audit_results.last(job.id) is None
    assert "/payouts/audit/" in strict.get("/payouts/").content.decode()  # the nav links staff to it


def test_an_audit_that_cannot_reach_the_chain_says_so(settled_job, settings):
    job, staff = settled_job, staff_client()
    run_audit(staff, job)
    assert audit_results.last(job.id)["counts"]["mismatches"] == 0
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"  # nothing listens there
    page = run_audit(staff, job)
    result = audit_results.last(job.id)
    assert result["error"] and result["checks"] == []
    assert "the audit failed" in page and "checks match the chain" not in page  # no stale verdict
    assert "audit failed" in staff.get("/payouts/audit/").content.decode()
