"""A job's lifecycle as its creator drives it from the pages: draft, publish, edit (until the
deposit fixes the terms), clone, cancel (recruiting: at once, the deposit back; running: after
the current round, whose work is paid), and what the pages show along the way."""

import re

import pytest
from django.test import Client

from jobs import orchestration
from jobs.models import Consent, Job, Round
from ledger import settlement
from ledger.models import WEI_PER_TOKEN, Escrow, TxStatus
from ledger.wallets import wallet_for
from tests.factories import make_node, make_running_job, make_user, peer_report

pytestmark = pytest.mark.django_db

JOB_FORM = {
    "name": "Digits",
    "description": "",
    "is_public": "on",
    "dataset": "digits",
    "model": "mlp",
    "hidden": 64,
    "topology": "ring",
    "num_peers": 1,
    "rounds": 3,
    "local_steps": 20,
    "lr": 0.1,
    "batch_size": 32,
    "round_timeout_s": 120,
    "min_vram_gb": 0,
    "reward_per_round": 0,
}


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def messages_of(response) -> str:
    return " ".join(str(m) for m in response.context["messages"])


def online_node(owner, name="n"):
    return make_node(owner, name, public_key="ab" * 32, online=True)


def create(client, action="create", **fields) -> Job:
    response = client.post("/jobs/new/", {**JOB_FORM, "action": action, **fields})
    assert response.status_code == 302, response.content[:2000]
    return Job.objects.get(pk=int(response["Location"].rstrip("/").rsplit("/", 1)[1]))


# -- draft and publish ------------------------------------------------------------------------
def test_a_draft_does_not_recruit_until_its_creator_publishes_it():
    owner = make_user()
    client = logged_in(owner)
    job = create(client, action="draft")
    assert job.status == Job.Status.DRAFT
    Consent.objects.create(job=job, node=online_node(owner), granted=True, by=owner)
    assert orchestration.start_job_if_ready(job.id) is False
    page = client.get(f"/jobs/{job.id}/")
    assert b'id="publish-job"' in page.content and b"Draft" in page.content
    # nobody else sees it, even though it is public
    other = logged_in(make_user())
    assert other.get(f"/jobs/{job.id}/").status_code == 404
    assert job.name.encode() not in other.get("/jobs/").content
    assert other.post(f"/jobs/{job.id}/publish/").status_code == 404
    assert Job.objects.get(pk=job.id).status == Job.Status.DRAFT

    response = client.post(f"/jobs/{job.id}/publish/", follow=True)
    assert "published" in messages_of(response)
    job.refresh_from_db()
    assert job.status == Job.Status.WAITING
    assert orchestration.start_job_if_ready(job.id) is True
    assert Job.objects.get(pk=job.id).status == Job.Status.RUNNING
    # published once: a second publish is refused
    assert "Only a draft" in messages_of(client.post(f"/jobs/{job.id}/publish/", follow=True))


def test_publishing_a_draft_with_rewards_opens_its_escrow_on_the_published_terms():
    client = logged_in(make_user())
    job = create(client, action="draft", reward_per_round=10, rounds=3)
    assert not Escrow.objects.filter(job=job).exists()
    client.post(f"/jobs/{job.id}/edit/", {**JOB_FORM, "reward_per_round": 10, "rounds": 4})
    client.post(f"/jobs/{job.id}/publish/")
    assert int(Escrow.objects.get(job=job).budget_wei) == 40 * WEI_PER_TOKEN


# -- edit -------------------------------------------------------------------------------------
def test_the_creator_edits_a_recruiting_job_before_the_deposit_and_not_after():
    owner = make_user()
    client = logged_in(owner)
    job = create(client, reward_per_round=10, rounds=3)
    escrow = Escrow.objects.get(job=job)
    assert int(escrow.budget_wei) == 30 * WEI_PER_TOKEN
    page = client.get(f"/jobs/{job.id}/edit/")
    assert page.status_code == 200 and page.context["form"].instance == job
    assert b'value="Digits"' in page.content  # prefilled
    assert b'id="edit-job"' in client.get(f"/jobs/{job.id}/").content

    response = client.post(
        f"/jobs/{job.id}/edit/", {**JOB_FORM, "name": "Digits v2", "reward_per_round": 10, "rounds": 5}
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.name, job.rounds, job.status) == ("Digits v2", 5, Job.Status.WAITING)
    escrow = Escrow.objects.get(job=job)
    assert int(escrow.budget_wei) == 50 * WEI_PER_TOKEN  # the escrow follows the new terms
    assert escrow.config_hash != ""

    # someone else may not edit it
    other = logged_in(make_user())
    assert other.get(f"/jobs/{job.id}/edit/").status_code == 404
    assert other.post(f"/jobs/{job.id}/edit/", {**JOB_FORM, "name": "mine"}).status_code == 404

    # the deposit fixes the terms (the chain holds their hash)
    Escrow.objects.filter(job=job).update(status=Escrow.Status.FUNDED)
    response = client.post(
        f"/jobs/{job.id}/edit/", {**JOB_FORM, "name": "Digits v3", "reward_per_round": 1}, follow=True
    )
    assert "deposit is on chain" in messages_of(response)
    job.refresh_from_db()
    assert (job.name, job.reward_per_round) == ("Digits v2", 10)
    assert b'id="edit-job"' not in client.get(f"/jobs/{job.id}/").content


def test_a_registered_deposit_under_way_fixes_the_terms_too_and_a_running_job_is_not_edited():
    owner = make_user()
    client = logged_in(owner)
    job = create(client, reward_per_round=10)
    Escrow.objects.filter(job=job).update(registered_at="2026-01-01T00:00:00Z")
    assert "deposit is on chain" in messages_of(client.get(f"/jobs/{job.id}/edit/", follow=True))
    running, _rnd, _nodes = make_running_job(owner)
    assert "cannot be edited" in messages_of(client.get(f"/jobs/{running.id}/edit/", follow=True))


# -- clone ------------------------------------------------------------------------------------
def test_anyone_who_sees_a_job_clones_it_into_a_draft_of_their_own():
    creator = make_user()
    validator = online_node(creator, "validator")
    source = Job.objects.create(
        owner=creator, name="Digits", rounds=7, lr=0.05, rule="median", validator=validator, reward_per_round=3
    )
    cloner = make_user()
    response = logged_in(cloner).post(f"/jobs/{source.id}/clone/")
    copy = Job.objects.exclude(pk=source.pk).get()
    assert response["Location"] == f"/jobs/{copy.id}/edit/"
    assert (copy.owner, copy.status, copy.name) == (cloner, Job.Status.DRAFT, "Digits (copy)")
    assert (copy.rounds, copy.lr, copy.rule, copy.reward_per_round) == (7, 0.05, "median", 3)
    assert copy.validator is None  # the creator's node is not the cloner's
    assert copy.current_round == 0 and not copy.cohort.exists()
    # the creator's own clone keeps the validator
    logged_in(creator).post(f"/jobs/{source.id}/clone/")
    assert Job.objects.filter(owner=creator, status=Job.Status.DRAFT).get().validator == validator


def test_a_job_one_cannot_see_is_not_cloned():
    private = Job.objects.create(owner=make_user(), name="secret", is_public=False)
    client = logged_in(make_user())
    assert client.post(f"/jobs/{private.id}/clone/").status_code == 404
    assert client.get(f"/jobs/{private.id}/clone/").status_code == 405
    assert Job.objects.count() == 1


# -- cancel -----------------------------------------------------------------------------------
def test_cancelling_a_draft_or_recruiting_job_is_immediate_and_only_for_its_creator():
    owner = make_user()
    client = logged_in(owner)
    draft = create(client, action="draft")
    recruiting = create(client)
    other = logged_in(make_user())
    assert other.post(f"/jobs/{recruiting.id}/cancel/").status_code == 404
    assert Job.objects.get(pk=recruiting.id).status == Job.Status.WAITING
    for job in (draft, recruiting):
        client.post(f"/jobs/{job.id}/cancel/")
        job.refresh_from_db()
        assert job.status == Job.Status.CANCELLED and job.finished_at is not None and job.ended
    assert "cannot be cancelled" in messages_of(client.post(f"/jobs/{recruiting.id}/cancel/", follow=True))
    # a cancelled job takes no consent and never starts
    node = online_node(owner)
    response = client.post(f"/jobs/{recruiting.id}/consent/", {"node": node.id, "grant": "yes"}, follow=True)
    assert "takes no consent" in messages_of(response)
    assert not Consent.objects.filter(job=recruiting).exists()
    assert orchestration.start_job_if_ready(recruiting.id) is False


def test_cancel_needs_a_post_with_csrf():
    owner = make_user()
    job = Job.objects.create(owner=owner, name="j")
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(f"/jobs/{job.id}/cancel/").status_code == 403
    assert client.get(f"/jobs/{job.id}/cancel/").status_code == 405
    assert Job.objects.get(pk=job.id).status == Job.Status.WAITING


def test_a_cancelled_recruiting_job_gets_its_deposit_back(chain_settings, monkeypatch):
    owner = make_user()
    client = logged_in(owner)
    job = create(client, reward_per_round=10, rounds=3)
    settlement.fund_with_test_tokens(job)
    creator = wallet_for(owner).address
    chain = settlement.Chain.from_settings()
    assert chain.balance_of(creator) == 0
    client.post(f"/jobs/{job.id}/cancel/")
    # beat's safety net picks the cancelled, funded job
    from jobs import queue
    from ledger import tasks

    queued = []
    monkeypatch.setattr(queue, "settle_job", queued.append)
    tasks.settle_ended_jobs()
    assert job.id in queued
    settlement.settle(job.id)
    escrow = Escrow.objects.get(job=job)
    assert escrow.status == Escrow.Status.CLOSED and int(escrow.refunded_wei) == 30 * WEI_PER_TOKEN
    assert chain.balance_of(creator) == 30 * WEI_PER_TOKEN
    assert Job.objects.get(pk=job.id).status == Job.Status.CANCELLED  # not "settled"


def test_a_cancelled_running_job_ends_when_its_round_closes_and_pays_that_round(chain_settings):
    owner = make_user()
    job, rnd, nodes = make_running_job(owner, cohort_size=2, rounds=3, reward_per_round=10)
    settlement.fund_with_test_tokens(job)
    client = logged_in(owner)
    assert logged_in(make_user()).post(f"/jobs/{job.id}/cancel/").status_code == 404
    assert not Job.objects.get(pk=job.id).cancel_requested
    response = client.post(f"/jobs/{job.id}/cancel/", follow=True)
    assert "round 1 is the last one" in messages_of(response)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.cancel_requested
    assert b'id="job-cancelling"' in response.content and b'id="cancel-job"' not in response.content
    for node in nodes:  # the peers finish the round they are in
        orchestration.accept_report(node, peer_report(job, node, 1))
    orchestration.close_round(rnd.id)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.finished_at is not None
    assert list(job.round_set.values_list("number", "status")) == [(1, Round.Status.CLOSED)]  # no round 2
    assert orchestration.current_plans_for(nodes[0])["plans"] == []
    settlement.settle(job.id)
    escrow = Escrow.objects.get(job=job)
    assert escrow.status == Escrow.Status.CLOSED
    assert int(escrow.refunded_wei) == 20 * WEI_PER_TOKEN  # rounds 2 and 3 were never run
    assert sorted(job.payouts.values_list("status", flat=True)) == [TxStatus.CONFIRMED] * 2
    assert sum(int(p.amount_wei) for p in job.payouts.all()) == 10 * WEI_PER_TOKEN
    assert Job.objects.get(pk=job.id).status == Job.Status.CANCELLED


# -- what the pages show ----------------------------------------------------------------------
def test_a_recruiting_job_says_how_many_nodes_consented_and_are_online():
    owner = make_user()
    job = Job.objects.create(owner=owner, name="j", num_peers=4)
    for i, online in enumerate([True, False]):
        node = make_node(make_user(), f"n{i}", online=online)
        Consent.objects.create(job=job, node=node, granted=True, by=node.owner)
    revoked = make_node(make_user(), "gone", online=True)
    Consent.objects.create(job=job, node=revoked, granted=True, by=revoked.owner)
    Consent.objects.create(job=job, node=revoked, granted=False, by=revoked.owner)
    page = logged_in(owner).get(f"/jobs/{job.id}/").content.decode()
    text = re.sub(r"<[^>]+>", "", page)  # the counts sit in spans the live page updates
    assert "2 of 4 nodes consented (1 online)" in text


def test_the_job_list_filters_by_status_and_searches_by_name():
    owner = make_user("alice")
    Job.objects.create(owner=owner, name="Digits ring", status=Job.Status.RUNNING)
    Job.objects.create(owner=make_user("bob"), name="Digits ring", status=Job.Status.WAITING)
    Job.objects.create(owner=owner, name="Synthetic", status=Job.Status.WAITING)
    client = logged_in(owner)
    page = client.get("/jobs/")
    assert [j.name for j in page.context["jobs"]] == ["Synthetic", "Digits ring", "Digits ring"]
    text = page.content.decode()
    assert "Created" in text and "alice" in text and "bob" in text and "Recruiting" in text
    assert [j.status for j in client.get("/jobs/?status=waiting").context["jobs"]] == ["waiting", "waiting"]
    found = client.get("/jobs/?q=digits").context["jobs"]
    assert {(j.name, j.owner.username) for j in found} == {("Digits ring", "alice"), ("Digits ring", "bob")}
    assert [j.name for j in client.get("/jobs/?q=digits&status=running").context["jobs"]] == ["Digits ring"]
    assert list(client.get("/jobs/?status=bogus").context["jobs"]) == list(page.context["jobs"])
    assert "No job matches" in client.get("/jobs/?q=nothing-like-it").content.decode()


def test_unknown_pages_show_the_sites_own_404(settings):
    settings.DEBUG = False
    client = logged_in(make_user())
    for url in ("/jobs/999999/", "/no-such-page/"):
        response = client.get(url)
        assert response.status_code == 404
        assert b'id="not-found"' in response.content and b"DFL platform" in response.content
    assert b'id="not-found"' in Client().get("/no-such-page/").content  # anonymous too


def test_the_500_page_renders_without_a_request_context():
    from django.template import loader

    html = loader.get_template("500.html").render({})
    assert 'id="server-error"' in html
