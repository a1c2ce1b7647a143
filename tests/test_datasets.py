"""Datasets declared by metadata only: the declare/edit pages, their checks (schema against the
task, one's own nodes, sample cap), per-object access and CSRF; and consent naming a dataset."""

import json
from datetime import timedelta

import pytest
from datasets.models import MAX_SAMPLES, Dataset, schema_problem
from django.test import Client
from django.utils import timezone

from jobs.models import Consent, Job
from tests.factories import make_node, make_user

pytestmark = pytest.mark.django_db

DIGITS = {"features": 64, "classes": 10}


def logged_in(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def declare(client, node, **fields):
    data = {"node": node.id, "name": "clinic-a", "task": "digits", "schema": json.dumps(DIGITS), "samples": 1200}
    return client.post("/datasets/new/", {**data, **fields}, follow=True)


def test_declaring_a_dataset_records_its_metadata_and_lists_it_for_its_owner_only():
    alice, bob = make_user("alice"), make_user("bob")
    node = make_node(alice, "box")
    response = declare(logged_in(alice), node, description="scanned forms")
    assert "declared for box" in response.content.decode()
    dataset = Dataset.objects.get()
    assert (dataset.owner, dataset.node, dataset.task, dataset.schema, dataset.samples) == (
        alice,
        node,
        "digits",
        DIGITS,
        1200,
    )
    assert "clinic-a" in logged_in(alice).get("/datasets/").content.decode()
    assert "clinic-a" not in logged_in(bob).get("/datasets/").content.decode()
    assert Client().get("/datasets/").status_code == 302  # anonymous: to the login page


def test_an_image_schema_counts_channels_times_height_times_width():
    assert schema_problem("digits", {"channels": 1, "height": 8, "width": 8, "classes": 10}) is None
    assert "64 features" in schema_problem("digits", {"channels": 3, "height": 8, "width": 8, "classes": 10})
    assert "1×8×8" in schema_problem("digits", {"channels": 4, "height": 4, "width": 4, "classes": 10})
    assert "tabular" in schema_problem("synthetic", {"channels": 1, "height": 6, "width": 10, "classes": 10})
    assert schema_problem("synthetic", {"features": 60, "classes": 10}) is None


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"schema": json.dumps({"features": 60, "classes": 10})}, "digits has 64 features"),
        ({"schema": json.dumps({"features": 64, "classes": 2})}, "digits has 10 classes"),
        ({"schema": json.dumps({"features": 64, "classes": 10, "path": 1})}, "unknown schema keys"),
        ({"schema": "[1, 2]"}, "must be a JSON object"),
        ({"schema": "not json"}, "Enter a valid JSON"),
        ({"samples": MAX_SAMPLES + 1}, "Must be between 1 and"),
        ({"samples": 0}, "Must be between 1 and"),
        ({"task": "imagenet"}, "Select a valid choice"),
    ],
)
def test_a_declaration_that_does_not_fit_is_refused(fields, error):
    user = make_user("alice")
    response = declare(logged_in(user), make_node(user, "box"), **fields)
    assert error in response.content.decode()
    assert not Dataset.objects.exists()


def test_a_dataset_cannot_be_declared_on_someone_elses_node():
    alice, mallory = make_user("alice"), make_user("mallory")
    victim = make_node(alice, "box")
    response = declare(logged_in(mallory), victim)
    assert "Select a valid choice" in response.content.decode()
    assert not Dataset.objects.exists()


def test_one_name_per_node():
    user = make_user("alice")
    node = make_node(user, "box")
    client = logged_in(user)
    declare(client, node)
    assert "already exists" in declare(client, node, samples=5).content.decode()
    assert Dataset.objects.count() == 1


def test_only_the_owner_edits_a_dataset():
    alice, mallory = make_user("alice"), make_user("mallory")
    node = make_node(alice, "box")
    dataset = Dataset.objects.create(owner=alice, node=node, name="a", task="digits", schema=DIGITS, samples=10)
    edit = {"node": node.id, "name": "a", "task": "digits", "schema": json.dumps(DIGITS), "samples": 99}
    assert logged_in(mallory).get(f"/datasets/{dataset.id}/").status_code == 404
    assert logged_in(mallory).post(f"/datasets/{dataset.id}/", edit).status_code == 404
    assert logged_in(alice).post(f"/datasets/{dataset.id}/", edit).status_code == 302
    dataset.refresh_from_db()
    assert dataset.samples == 99


def test_the_declare_form_has_no_file_upload():
    user = make_user("alice")
    page = logged_in(user).get("/datasets/new/").content.decode()
    assert 'type="file"' not in page and "multipart" not in page


def test_csrf_is_enforced_on_the_dataset_forms():
    user = make_user("alice")
    node = make_node(user, "box")
    dataset = Dataset.objects.create(owner=user, node=node, name="a", task="digits", schema=DIGITS, samples=10)
    client = logged_in(user, enforce_csrf_checks=True)
    assert declare(client, node, name="b").status_code == 403
    assert client.post(f"/datasets/{dataset.id}/", {"name": "c"}).status_code == 403
    assert Dataset.objects.count() == 1


# -- consent naming a dataset -----------------------------------------------------------------
def test_consent_names_a_dataset_of_the_jobs_task_and_an_optional_expiry():
    user = make_user("participant")
    job = Job.objects.create(owner=make_user("owner"), name="job", dataset="digits")
    node = make_node(user, "box")
    digits = Dataset.objects.create(owner=user, node=node, name="d", task="digits", schema=DIGITS, samples=10)
    synthetic = Dataset.objects.create(
        owner=user, node=node, name="s", task="synthetic", schema={"features": 60, "classes": 10}, samples=10
    )
    client = logged_in(user)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert f'<option value="{digits.id}">' in page and f'<option value="{synthetic.id}">' not in page

    wrong = client.post(
        f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "yes", "dataset": synthetic.id}, follow=True
    )
    assert "choose a matching dataset" in wrong.content.decode()
    missing = client.post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "yes"}, follow=True)
    assert "Choose which of box" in missing.content.decode()
    past = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    expired = client.post(
        f"/jobs/{job.id}/consent/",
        {"node": node.id, "grant": "yes", "dataset": digits.id, "expires_at": past},
        follow=True,
    )
    assert "must be in the future" in expired.content.decode()
    assert not Consent.objects.exists()

    until = (timezone.now() + timedelta(days=2)).replace(second=0, microsecond=0)
    granted = client.post(
        f"/jobs/{job.id}/consent/",
        {"node": node.id, "grant": "yes", "dataset": digits.id, "expires_at": until.strftime("%Y-%m-%dT%H:%M")},
        follow=True,
    )
    assert "consents to train" in granted.content.decode()
    row = Consent.objects.get()
    assert (row.dataset, row.expires_at, row.granted) == (digits, until, True)
    assert Consent.current(job, node) is True


def test_someone_elses_dataset_cannot_be_named():
    user, other = make_user("participant"), make_user("other")
    job = Job.objects.create(owner=make_user("owner"), name="job")
    node = make_node(user, "box")
    Dataset.objects.create(owner=user, node=node, name="mine", task="digits", schema=DIGITS, samples=10)
    theirs = Dataset.objects.create(
        owner=other, node=make_node(other, "their-box"), name="theirs", task="digits", schema=DIGITS, samples=10
    )
    response = logged_in(user).post(
        f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "yes", "dataset": theirs.id}, follow=True
    )
    assert "declares no such dataset" in response.content.decode()
    assert not Consent.objects.exists()


def test_a_node_that_declares_no_dataset_of_the_task_is_told_to_declare_one():
    user = make_user("participant")
    job = Job.objects.create(owner=make_user("owner"), name="job", dataset="digits")
    node = make_node(user, "box")
    Dataset.objects.create(
        owner=user, node=node, name="s", task="synthetic", schema={"features": 60, "classes": 10}, samples=10
    )
    response = logged_in(user).post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "yes"}, follow=True)
    assert "declares no Handwritten digits" in response.content.decode()
    assert not Consent.objects.exists()


def test_an_expired_grant_counts_as_revoked():
    user = make_user("participant")
    job = Job.objects.create(owner=user, name="job")
    node = make_node(user, "box")
    row = Consent.objects.create(
        job=job, node=node, granted=True, by=user, expires_at=timezone.now() + timedelta(hours=1)
    )
    assert Consent.current(job, node) is True and list(Consent.consenting_nodes(job)) == [node]
    Consent.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert Consent.current(job, node) is False and list(Consent.consenting_nodes(job)) == []
    assert "expired" in logged_in(user).get(f"/jobs/{job.id}/").content.decode()
