"""Consent over time: the append-only history each role may read, revocations on the job page,
and an expiring consent as the orchestration sees it (signed grants, the next round's members)."""

import asyncio
from datetime import timedelta

import pytest
from datasets.models import Dataset
from django.test import Client
from django.utils import timezone

from jobs import orchestration
from jobs.models import Consent, Job, Round
from peers.protocol import RoundPlan, from_message
from peers.transport.redis import RedisChannelTransport
from tests.factories import make_node, make_running_job, make_user, peer_report

DIGITS = {"features": 64, "classes": 10}


def logged_in(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


@pytest.fixture
def shared_job(db):
    """A private job of ``creator`` with two participants' nodes consenting on declared datasets."""
    creator, alice, bob = make_user("creator"), make_user("alice"), make_user("bob")
    job = Job.objects.create(owner=creator, name="shared", is_public=False)
    for user in (alice, bob):
        node = make_node(user, f"{user.username}-box")
        dataset = Dataset.objects.create(
            owner=user, node=node, name=f"{user}-data", task="digits", schema=DIGITS, samples=9
        )
        Consent.objects.create(job=job, node=node, granted=True, by=user, dataset=dataset)
    return job, creator, alice, bob


def test_the_creator_reads_every_row_a_participant_their_own_a_stranger_nothing(shared_job):
    job, creator, alice, _bob = shared_job
    node = alice.nodes.get()
    Consent.objects.create(job=job, node=node, granted=False, by=alice)
    url = f"/jobs/{job.id}/consents/"

    page = logged_in(creator).get(url).content.decode()
    assert "alice-box" in page and "bob-box" in page and page.count("<tr>") == 4  # header + 3 rows
    assert "revoked" in page and "alice-data" in page

    page = logged_in(alice).get(url).content.decode()
    assert "alice-box" in page and "bob-box" not in page and page.count("<tr>") == 3

    stranger = make_user("stranger")
    make_node(stranger, "s-box")
    assert logged_in(stranger).get(url).status_code == 404
    assert Client().get(url).status_code == 302  # anonymous: to the login page
    assert logged_in(creator).get("/jobs/999999/consents/").status_code == 404


def test_a_participant_reads_their_history_across_jobs(shared_job):
    _job, creator, alice, _bob = shared_job
    other = Job.objects.create(owner=creator, name="other job")
    Consent.objects.create(job=other, node=alice.nodes.get(), granted=True, by=alice)
    page = logged_in(alice).get("/datasets/consents/").content.decode()
    assert "shared" in page and "other job" in page and "bob-box" not in page


def test_history_is_append_only_through_the_pages(shared_job):
    job, _creator, alice, _bob = shared_job
    node = alice.nodes.get()
    client = logged_in(alice)
    client.post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "no"})
    client.post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "yes", "dataset": node.datasets.get().id})
    rows = list(Consent.objects.filter(job=job, node=node).order_by("id").values_list("granted", "dataset__name"))
    assert rows == [(True, "alice-data"), (False, "alice-data"), (True, "alice-data")]


def test_csrf_is_enforced_on_consent(shared_job):
    job, _creator, alice, _bob = shared_job
    node = alice.nodes.get()
    client = logged_in(alice, enforce_csrf_checks=True)
    assert client.post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "no"}).status_code == 403
    assert Consent.current(job, node) is True


@pytest.mark.django_db
def test_a_revocation_shows_on_the_job_page_with_the_round_it_takes_effect():
    owner = make_user("owner")
    job, _rnd, nodes = make_running_job(owner, cohort_size=3, rounds=5, node_names=["node-0", "node-1", "node-2"])
    response = logged_in(owner).post(f"/jobs/{job.id}/consent/", {"node": nodes[2].id, "grant": "no"}, follow=True)
    page = response.content.decode()
    assert "node-2 revoked consent at" in page and "it leaves from round 2" in page
    assert [m.node for m in orchestration.active_members(job)] == nodes[:2]


# -- expiry in the orchestration --------------------------------------------------------------
def receive_plans(settings, nodes) -> dict[int, RoundPlan]:
    async def read():
        transport = RedisChannelTransport(settings.REDIS_URL)
        try:
            return {n.id: from_message(await asyncio.wait_for(transport.receive(n.channel), 5)) for n in nodes}
        finally:
            await transport.close()

    return asyncio.run(read())


@pytest.mark.django_db(transaction=True)
def test_an_expiring_consent_bounds_the_grant_and_leaves_the_next_round(settings):
    owner = make_user("owner")
    job = Job.objects.create(owner=owner, name="j", num_peers=3, rounds=5, round_timeout_s=60)
    nodes = [
        make_node(owner, f"n{i}", hardware={"cores": 2, "ram_gb": 4}, public_key=f"{i:064x}", online=True)
        for i in range(3)
    ]
    soon = timezone.now() + timedelta(seconds=30)  # before the round's deadline
    for n in nodes:
        Consent.objects.create(job=job, node=n, granted=True, by=owner, expires_at=soon if n == nodes[2] else None)
    assert orchestration.start_job_if_ready(job.id) is True
    plans = receive_plans(settings, nodes)
    deadline = Round.objects.get(job=job, number=1).deadline.timestamp()
    assert plans[nodes[0].id].consent.expires_at == pytest.approx(deadline)
    assert plans[nodes[2].id].consent.expires_at == pytest.approx(soon.timestamp())

    Consent.objects.filter(node=nodes[2]).update(expires_at=timezone.now() - timedelta(seconds=1))  # it lapses
    assert Consent.current(job, nodes[2]) is False
    for node in nodes[:2]:
        orchestration.accept_report(node, peer_report(job, node, 1, samples=100, eval_samples=20))
    orchestration.close_round(Round.objects.get(job=job, number=1).id)
    assert Round.objects.get(job=job, number=2).members == [nodes[0].id, nodes[1].id]
    plans = receive_plans(settings, nodes[:2])
    assert all(plans[n.id].round == 2 for n in nodes[:2])
    page = logged_in(owner).get(f"/jobs/{job.id}/").content.decode()
    assert "n2 consent expired at" in page and "it leaves from round 2" in page
