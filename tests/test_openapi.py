"""The REST API at /api/v1/ (hub/api.py): its OpenAPI document and docs page, session auth for
people (401 JSON when anonymous), 404 JSON for a job one may not see, and JSON errors, never an
HTML page nor a 500, for anything malformed: a schemathesis fuzz (positive and negative cases
generated from the served schema) sent through Django's test client, with and without a session
and a node token."""

import json
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

import pytest
import schemathesis
from datasets.models import Dataset
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from jobs.models import Consent, Job, PeerReport, Round
from tests.factories import make_node, make_user

pytestmark = pytest.mark.django_db

OPERATIONS = {
    ("get", "/api/v1/node"),
    ("post", "/api/v1/node/hello"),
    ("post", "/api/v1/node/heartbeat"),
    ("get", "/api/v1/node/plans"),
    ("post", "/api/v1/reports"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{job_id}"),
    ("get", "/api/v1/jobs/{job_id}/rounds"),
    ("get", "/api/v1/jobs/{job_id}/consents"),
    ("get", "/api/v1/datasets"),
}


@pytest.fixture
def world():
    creator, participant, stranger = make_user("creator"), make_user("participant"), make_user("stranger")
    node = make_node(participant, "p-node", online=True)
    dataset = Dataset.objects.create(
        owner=participant,
        node=node,
        name="digits here",
        task="digits",
        schema={"features": 64, "classes": 10},
        samples=500,
    )
    public = Job.objects.create(owner=creator, name="public", status=Job.Status.RUNNING, current_round=2)
    private = Job.objects.create(owner=creator, name="private", is_public=False)
    Consent.objects.create(job=public, node=node, granted=True, by=participant, dataset=dataset)
    done = Round.objects.create(
        job=public, number=1, status=Round.Status.CLOSED, deadline=timezone.now(), mean_accuracy=0.5, mean_loss=1.0
    )
    Round.objects.create(job=public, number=2, deadline=timezone.now() + timedelta(minutes=1))
    PeerReport.objects.create(
        round=done, node=node, train_loss=float("nan"), eval_loss=1.0, accuracy=0.5, samples=10, eval_samples=5,
        model_hash="ab" * 32, diverged=True,
    )  # fmt: skip
    return {"creator": creator, "participant": participant, "stranger": stranger, "node": node, "public": public,
            "private": private, "dataset": dataset}  # fmt: skip


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_schema_is_served_and_lists_every_operation():
    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    found = {(method, path) for path, item in schema["paths"].items() for method in item}
    assert found == OPERATIONS
    schemes = schema["components"]["securitySchemes"]
    assert schemes["NodeToken"]["scheme"] == "bearer" and schemes["SessionAuth"]["in"] == "cookie"
    assert schema["paths"]["/api/v1/node/hello"]["post"]["security"] == [{"NodeToken": []}]
    assert schema["paths"]["/api/v1/jobs"]["get"]["security"] == [{"SessionAuth": []}]


def test_the_docs_page_loads_nothing_from_elsewhere():
    response = Client().get("/api/v1/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/ninja/redoc.standalone.js" in html and "/api/v1/openapi.json" in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html


def test_anonymous_gets_401_json(world):
    for path in ("/api/v1/jobs", f"/api/v1/jobs/{world['public'].id}", "/api/v1/datasets"):
        response = Client().get(path)
        assert response.status_code == 401 and response["Content-Type"].startswith("application/json"), path


def test_jobs_are_the_ones_the_user_may_see(world):
    ids = lambda client: [j["id"] for j in client.get("/api/v1/jobs").json()["items"]]  # noqa: E731
    assert ids(logged_in(world["creator"])) == [world["private"].id, world["public"].id]
    assert ids(logged_in(world["stranger"])) == [world["public"].id]
    response = logged_in(world["stranger"]).get(f"/api/v1/jobs/{world['private'].id}")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}
    job = logged_in(world["creator"]).get(f"/api/v1/jobs/{world['private'].id}").json()
    assert job["name"] == "private" and job["owner"] == "creator" and job["is_public"] is False
    assert logged_in(world["stranger"]).get("/api/v1/jobs/999999").status_code == 404


def test_metrics_history(world):
    rounds = logged_in(world["stranger"]).get(f"/api/v1/jobs/{world['public'].id}/rounds").json()
    assert [(r["number"], r["status"], r["mean_accuracy"]) for r in rounds] == [(1, "closed", 0.5), (2, "open", None)]
    (report,) = rounds[0]["reports"]
    assert report["node"] == world["node"].id and report["train_loss"] is None and report["diverged"] is True
    assert logged_in(world["stranger"]).get(f"/api/v1/jobs/{world['private'].id}/rounds").status_code == 404


def test_datasets_are_the_users_own(world):
    (mine,) = logged_in(world["participant"]).get("/api/v1/datasets").json()
    assert mine["name"] == "digits here" and mine["data_schema"] == {"features": 64, "classes": 10}
    assert logged_in(world["creator"]).get("/api/v1/datasets").json() == []


def test_consents_as_the_history_page(world):
    path = f"/api/v1/jobs/{world['public'].id}/consents"
    (row,) = logged_in(world["creator"]).get(path).json()
    assert row["node"] == world["node"].id and row["granted"] and row["stands"] and row["by"] == "participant"
    assert row["dataset"] == world["dataset"].id
    assert len(logged_in(world["participant"]).get(path).json()) == 1
    assert logged_in(world["stranger"]).get(path).status_code == 404


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("get", "/api/v1/nowhere", None),
        ("get", "/api/v1/jobs/not-a-number", None),
        ("delete", "/api/v1/jobs", None),
        ("put", "/api/v1/node/hello", None),
        ("get", "/api/v1/jobs?limit=abc", None),
        ("get", "/api/v1/jobs?offset=-1", None),
        ("get", "/api/v1/jobs?offset=99999999999999999999", None),  # past SQL's bigint
        ("post", "/api/v1/node/hello", b"{not json"),
        ("post", "/api/v1/reports", b"[1, 2]"),
    ],
)
def test_malformed_requests_get_json_4xx(world, method, path, body):
    client = logged_in(world["participant"])
    response = client.generic(method.upper(), path, data=body or b"", content_type="application/json")
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:200])
    assert response["Content-Type"].startswith("application/json")
    json.loads(response.content)


def send(client: Client, case, token: str | None):
    """A schemathesis case through Django's test client (in-process, inside the test's transaction)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    url = urlsplit(kwargs["url"])
    query = urlencode(kwargs.get("params") or {}, doseq=True)
    headers = {k: str(v) for k, v in (kwargs.get("headers") or {}).items() if k.lower() == "authorization"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if "json" in kwargs:
        data, content_type = json.dumps(kwargs["json"]), "application/json"
    else:
        data, content_type = kwargs.get("data") or b"", headers.get("Content-Type", "application/json")
    return client.generic(
        kwargs["method"],
        url.path + (f"?{query}" if query else ""),
        data=data,
        content_type=content_type,
        headers=headers,
    )


def fuzz(operation, mode, client: Client, token: str | None) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(case):
        response = send(client, case, token)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.content[:300])
        assert response["Content-Type"].startswith("application/json"), (case.method, case.path, response)

    check()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_no_5xx_and_always_json(world, mode):
    schema = schemathesis.openapi.from_dict(Client().get("/api/v1/openapi.json").json())
    session = logged_in(world["participant"])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(OPERATIONS)
    for operation in operations:
        # node operations: with the node's real token (its view checks the body); people's: the session
        if "NodeToken" in json.dumps(operation.definition.raw.get("security", [])):
            fuzz(operation, mode, Client(), world["node"].token)
        else:
            fuzz(operation, mode, session, None)
