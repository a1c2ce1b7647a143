"""Who gets what: every page and API route of the URLconf, for an anonymous visitor, a participant
(owns a node), a job's creator and a staff member. Pages that need a login send anonymous
visitors to it; what is someone else's is 404 (its existence is not told); a job's actions by
anyone but its creator change nothing. The last test fails when a route is added without a row here."""

import pytest
from datasets.models import Dataset
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from jobs.models import Consent, Job
from nodes.models import Node
from tests.factories import make_node

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "participant", "creator", "staff")
LOGIN = "login"  # 302 to the login page
RESET_LINK = "/accounts/reset/MQ/set-password/"  # an invalid link: the page says so


@pytest.fixture
def world():
    creator = User.objects.create_user("creator")
    participant = User.objects.create_user("participant")
    staff = User.objects.create_user("staff", is_staff=True)
    node = make_node(participant, "participant-node")
    job = Job.objects.create(owner=creator, name="public", reward_per_round=10)  # recruiting
    draft = Job.objects.create(owner=creator, name="draft", status=Job.Status.DRAFT)
    private = Job.objects.create(owner=creator, name="private", is_public=False)
    seen = Job.objects.create(owner=creator, name="private, consented", is_public=False)
    Consent.objects.create(job=seen, node=node, granted=True, by=participant)
    dataset = Dataset.objects.create(
        owner=participant, node=node, name="shard", task="digits", schema={"features": 64, "classes": 10}, samples=100
    )
    users = {"anonymous": None, "participant": participant, "creator": creator, "staff": staff}
    ids = {
        "job": job.id,
        "draft": draft.id,
        "private": private.id,
        "seen": seen.id,
        "node": node.id,
        "dataset": dataset.id,
    }
    return users, ids


def client_for(users, role) -> Client:
    client = Client()
    if users[role] is not None:
        client.force_login(users[role])
    return client


def expect(anonymous, participant, creator, staff) -> dict:
    return dict(zip(ROLES, (anonymous, participant, creator, staff)))


ALL_200 = expect(200, 200, 200, 200)
LOGGED_IN = expect(LOGIN, 200, 200, 200)
STAFF_ONLY = expect(404, 404, 404, 200)
OWNER_ONLY = expect(LOGIN, 404, 200, 404)
API = expect(401, 401, 401, 401)  # a session is no node token
SESSION_API = expect(401, 200, 200, 200)

# (method, path with {placeholders}, expected status per role)
PAGES = [
    ("get", "/", ALL_200),
    ("get", "/login/", ALL_200),
    ("get", "/logout/", expect(405, 405, 405, 405)),
    ("get", "/accounts/signup/", ALL_200),
    ("get", "/accounts/profile/", LOGGED_IN),
    ("get", "/accounts/password/", LOGGED_IN),
    ("get", "/accounts/password/done/", LOGGED_IN),
    ("get", "/accounts/password/reset/", ALL_200),
    ("get", "/accounts/password/reset/sent/", ALL_200),
    ("get", RESET_LINK, ALL_200),
    ("get", "/accounts/reset/done/", ALL_200),
    ("get", "/nodes/", LOGGED_IN),
    ("get", "/nodes/register/", LOGGED_IN),
    ("get", "/nodes/{node}/", expect(LOGIN, 200, 404, 404)),
    ("get", "/jobs/", LOGGED_IN),
    ("get", "/jobs/new/", LOGGED_IN),
    ("get", "/jobs/{job}/", LOGGED_IN),
    ("get", "/jobs/{private}/", expect(LOGIN, 404, 200, 200)),
    ("get", "/jobs/{seen}/", expect(LOGIN, 200, 200, 200)),
    ("get", "/jobs/{draft}/", expect(LOGIN, 404, 200, 200)),
    ("get", "/jobs/{job}/edit/", OWNER_ONLY),
    ("get", "/jobs/{draft}/edit/", OWNER_ONLY),
    ("get", "/jobs/{job}/fund/browser/", OWNER_ONLY),
    ("get", "/jobs/{job}/model/", expect(LOGIN, 404, 404, 404)),  # no final model yet
    ("get", "/jobs/{job}/cancel/", expect(LOGIN, 405, 405, 405)),
    ("get", "/jobs/{job}/clone/", expect(LOGIN, 405, 405, 405)),
    ("get", "/jobs/{draft}/publish/", expect(LOGIN, 405, 405, 405)),
    ("get", "/jobs/{job}/consent/", expect(LOGIN, 405, 405, 405)),
    ("get", "/jobs/{job}/fund/", expect(LOGIN, 405, 405, 405)),
    ("get", "/datasets/", LOGGED_IN),
    ("get", "/datasets/new/", LOGGED_IN),
    ("get", "/datasets/{dataset}/", expect(LOGIN, 200, 404, 404)),
    ("get", "/datasets/consents/", LOGGED_IN),
    ("get", "/jobs/{seen}/consents/", expect(LOGIN, 200, 200, 404)),  # the creator's job; the participant consented
    ("get", "/jobs/{private}/consents/", expect(LOGIN, 404, 200, 404)),
    ("get", "/payouts/", LOGGED_IN),
    ("get", "/payouts/audit/", STAFF_ONLY),
    ("get", "/payouts/audit/{job}/", STAFF_ONLY),
    ("get", "/admin/", expect(302, 302, 302, 200)),
    ("get", "/api/v1/node", API),
    ("post", "/api/v1/node/hello", API),
    ("post", "/api/v1/node/heartbeat", API),
    ("get", "/api/v1/node/plans", API),
    ("post", "/api/v1/reports", API),
    ("put", "/api/v1/jobs/{job}/model", API),
    # the API for people (session; anonymous: 401 JSON) and its description
    ("get", "/api/v1/", expect(404, 404, 404, 404)),  # ninja's root: nothing there (JSON 404)
    ("get", "/api/v1/openapi.json", ALL_200),
    ("get", "/api/v1/docs", ALL_200),
    ("get", "/api/v1/jobs", SESSION_API),
    ("get", "/api/v1/jobs/{job}", SESSION_API),
    ("get", "/api/v1/jobs/{private}", expect(401, 404, 200, 200)),
    ("get", "/api/v1/jobs/{draft}/rounds", expect(401, 404, 200, 200)),
    ("get", "/api/v1/jobs/{seen}/consents", expect(401, 200, 200, 404)),  # as the consent history page
    ("get", "/api/v1/datasets", SESSION_API),
    ("get", "/metrics", ALL_200),  # the test client's address, 127.0.0.1, is in METRICS_ALLOWED_IPS
    # actions (POST); a non-owner's leave every row as it was (checked below)
    ("post", "/jobs/{draft}/publish/", expect(LOGIN, 404, 302, 404)),
    ("post", "/jobs/{job}/cancel/", expect(LOGIN, 404, 302, 404)),
    ("post", "/jobs/{draft}/cancel/", expect(LOGIN, 404, 302, 404)),
    ("post", "/jobs/{job}/edit/", OWNER_ONLY),  # the creator's empty form comes back with its errors
    ("post", "/jobs/{job}/fund/", expect(LOGIN, 404, 302, 404)),
    ("post", "/jobs/{job}/clone/", expect(LOGIN, 302, 302, 302)),
    ("post", "/jobs/{private}/clone/", expect(LOGIN, 404, 302, 302)),
    ("post", "/jobs/{draft}/clone/", expect(LOGIN, 404, 302, 302)),
    ("post", "/jobs/{private}/consent/", expect(LOGIN, 404, 302, 302)),  # seen: the form then asks for a node
    ("post", "/nodes/{node}/token/", expect(LOGIN, 200, 404, 404)),  # the new token, shown once
    ("post", "/nodes/{node}/reset-key/", expect(LOGIN, 302, 404, 404)),
    ("post", "/payouts/faucet/", expect(LOGIN, 302, 302, 302)),
    ("post", "/payouts/refresh/", expect(LOGIN, 302, 302, 302)),
    ("post", "/payouts/audit/{job}/run/", expect(404, 404, 404, 302)),
]


def rows():
    return list(_rows())


def _rows():
    for method, path, expected in PAGES:
        for role in ROLES:
            yield pytest.param(method, path, role, expected[role], id=f"{method} {path} {role}")


def snapshot():
    """Every job and node as rows: what an action refused must leave as it was."""
    return (
        sorted(Job.objects.values_list("id", "owner_id", "name", "status", "cancel_requested", "rounds")),
        sorted(Node.objects.values_list("id", "token_hash")),
        Consent.objects.count(),
    )


@pytest.mark.parametrize("method,path,role,status", rows())
def test_route_answers_each_role(world, method, path, role, status, settings):
    settings.DEBUG = False
    users, ids = world
    client = client_for(users, role)
    before = snapshot()
    response = getattr(client, method)(path.format(**ids))
    if status == LOGIN:
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), response
    else:
        assert response.status_code == status, (response.status_code, response.content[:300])
    if response.status_code in (401, 403, 404, 405) or status == LOGIN:
        assert snapshot() == before  # refused: nothing changed


def test_a_non_owner_gets_404_on_every_job_action_and_nothing_changes(world):
    users, ids = world
    for role in ("participant", "staff"):
        client = client_for(users, role)
        before = snapshot()
        for action in ("edit", "publish", "cancel", "fund"):
            for job in ("job", "draft", "seen"):
                response = client.post(f"/jobs/{ids[job]}/{action}/", {"name": "taken over", "rounds": 1})
                assert response.status_code == 404, (role, action, job)
        assert snapshot() == before


def test_job_actions_need_the_csrf_token(world):
    users, ids = world
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["creator"])
    before = snapshot()
    for action in ("publish", "cancel", "clone", "edit"):
        assert client.post(f"/jobs/{ids['draft']}/{action}/").status_code == 403, action
    assert snapshot() == before


def route_patterns(resolver: URLResolver | None = None, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            if route.startswith("admin/"):
                continue  # Django's admin: its own staff checks, covered by /admin/ above
            found |= route_patterns(entry, route)
        elif isinstance(entry, URLPattern):
            found.add(route)
    return found


def test_every_route_has_a_row():
    import re

    tested = {re.sub(r"\{\w+\}", "<int>", path.lstrip("/")) for _, path, _ in PAGES} | {
        "accounts/reset/<uidb64>/<token>/"
    }
    routes = {re.sub(r"<int:\w+>", "<int>", route) for route in route_patterns()}
    assert sorted(routes - tested) == []


@pytest.mark.django_db(transaction=True)
async def test_a_draft_socket_is_refused_to_everyone_but_its_creator_and_staff():
    from channels.db import database_sync_to_async

    from tests.test_live_websocket import ORIGIN, TIMEOUT, connect, session_cookie

    @database_sync_to_async
    def setup():
        creator = User.objects.create_user("creator")
        other = User.objects.create_user("other", password="pw-unused-123")
        draft = Job.objects.create(owner=creator, name="draft", status=Job.Status.DRAFT)  # public, not published
        return draft, session_cookie(creator), session_cookie(other)

    draft, creator_cookie, other_cookie = await setup()
    outsider = await connect(draft.id, ORIGIN, other_cookie)
    assert await outsider.connect(timeout=TIMEOUT) == (False, 4403)
    owner = await connect(draft.id, ORIGIN, creator_cookie)
    assert (await owner.connect(timeout=TIMEOUT))[0]
    assert (await owner.receive_json_from(timeout=TIMEOUT))["data"]["status"] == "draft"
    await owner.disconnect()
