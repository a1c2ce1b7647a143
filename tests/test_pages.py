"""The server-rendered pages: sign-up, jobs, consent, nodes, access control, CSRF and static files.
Bad input shows an error on the page and writes nothing."""

import json
import re

import pytest
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.test import Client

from accounts.models import Profile
from jobs.models import Consent, Job
from nodes.models import Node
from tests.factories import make_node

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-password-1"
ADDRESS = "0x" + "ab12" * 10
CPU_HW = {"cpu": "Test CPU", "cores": 4, "ram_gb": 16.0, "gpus": [], "cuda": False}
GPU_HW = {
    "cpu": "Test CPU",
    "cores": 16,
    "ram_gb": 64.0,
    "cuda": True,
    "gpus": [{"name": "Test GPU", "vram_gb": 24, "cuda_capability": "8.6"}],
}
JOB_FORM = {
    "name": "Digits",
    "description": "",
    "is_public": "on",
    "dataset": "digits",
    "model": "mlp",
    "hidden": 64,
    "topology": "ring",
    "num_peers": 4,
    "rounds": 5,
    "local_steps": 20,
    "lr": 0.1,
    "batch_size": 32,
    "round_timeout_s": 120,
    "min_vram_gb": 0,
    "reward_per_round": 100,
}


def make_user(name: str, **extra) -> User:
    return User.objects.create_user(name, password=PASSWORD, **extra)


def logged_in(user: User, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def form_errors(response, field: str) -> list[str]:
    return list(response.context["form"].errors.get(field, []))


# -- sign-up ----------------------------------------------------------------------------------
def test_signup_creates_user_and_profile_and_logs_in(client):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "alice",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "payout_address": ADDRESS,
        },
    )
    assert response.status_code == 302 and response.url == "/"
    user = User.objects.get(username="alice")
    assert user.check_password(PASSWORD)
    assert Profile.objects.get(user=user).payout_address == ADDRESS
    assert client.session["_auth_user_id"] == str(user.pk)
    home = client.get("/")
    assert "Log out" in home.content.decode() and "alice" in home.content.decode()


@pytest.mark.parametrize(
    "address,message",
    [
        ("0x1234", "Enter an address like 0x followed by 40 hex digits."),
        ("0x" + "zz" * 20, "The address must be hexadecimal."),
        ("ab" * 21, "Enter an address like 0x followed by 40 hex digits."),
    ],
)
def test_signup_with_bad_payout_address_shows_error_and_creates_nothing(client, address, message):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "bob",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "payout_address": address,
        },
    )
    assert response.status_code == 200
    assert message in form_errors(response, "payout_address")
    assert message in response.content.decode()
    assert not User.objects.filter(username="bob").exists()
    assert Profile.objects.count() == 0
    assert "_auth_user_id" not in client.session


def test_profile_rejects_bad_address_and_keeps_the_old_one():
    user = make_user("carol")
    Profile.objects.create(user=user, payout_address=ADDRESS)
    client = logged_in(user)
    response = client.post("/accounts/profile/", {"payout_address": "0xnothex"})
    assert response.status_code == 200 and form_errors(response, "payout_address")
    assert Profile.objects.get(user=user).payout_address == ADDRESS


# -- jobs -------------------------------------------------------------------------------------
def test_job_creation_form_validates_and_creates_nothing_on_error():
    client = logged_in(make_user("owner"))
    response = client.post("/jobs/new/", {**JOB_FORM, "rounds": 0, "lr": 0, "num_peers": 1000})
    assert response.status_code == 200
    assert form_errors(response, "rounds") == ["Must be between 1 and 1000."]
    assert form_errors(response, "num_peers") == ["Must be between 1 and 256."]
    assert form_errors(response, "lr") == ["Must be greater than 0 and at most 10."]
    assert Job.objects.count() == 0

    for bad in (
        {"lr": "nan"},
        {"lr": "inf"},
        {"lr": -1},
        {"min_vram_gb": -2},
        {"round_timeout_s": 1},
        {"dataset": "imagenet"},
        {"name": ""},
    ):
        response = client.post("/jobs/new/", {**JOB_FORM, **bad})
        assert response.status_code == 200 and response.context["form"].errors, bad
        assert Job.objects.count() == 0, bad


def test_job_creation_with_good_form_creates_the_job():
    user = make_user("owner")
    response = logged_in(user).post("/jobs/new/", JOB_FORM)
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == f"/jobs/{job.id}/"
    assert (job.owner, job.name, job.rounds, job.num_peers, job.lr, job.status) == (
        user,
        "Digits",
        5,
        4,
        0.1,
        "waiting",
    )


def test_private_job_is_seen_only_by_owner_staff_and_consenting_node_owners():
    owner, stranger, participant = make_user("owner"), make_user("stranger"), make_user("participant")
    staff = make_user("admin", is_staff=True)
    private = Job.objects.create(owner=owner, name="Secret job", is_public=False)
    public = Job.objects.create(owner=owner, name="Open job", is_public=True)
    Consent.objects.create(job=private, node=make_node(participant, "box"), granted=True, by=participant)

    url = f"/jobs/{private.id}/"
    as_stranger = logged_in(stranger)
    assert as_stranger.get(url).status_code == 404
    assert (
        as_stranger.post(f"{url}consent/", {"node": make_node(stranger, "box").id, "grant": "yes"}).status_code == 404
    )
    for page in ("/jobs/", "/"):
        text = as_stranger.get(page).content.decode()
        assert "Secret job" not in text and "Open job" in text, page
    assert as_stranger.get(f"/jobs/{public.id}/").status_code == 200
    assert not Consent.objects.filter(job=private, node__owner=stranger).exists()

    for user in (owner, staff, participant):
        client = logged_in(user)
        assert client.get(url).status_code == 200, user
        assert "Secret job" in client.get("/jobs/").content.decode(), user

    assert Client().get(url).status_code == 302  # anonymous: to the login page
    assert logged_in(stranger).get("/jobs/999999/").status_code == 404


# -- consent ----------------------------------------------------------------------------------
def test_cannot_consent_with_someone_elses_node():
    owner, mallory = make_user("owner"), make_user("mallory")
    job = Job.objects.create(owner=owner, name="job")
    victim_node = make_node(owner, "owners-box")
    response = logged_in(mallory).post(f"/jobs/{job.id}/consent/", {"node": victim_node.id, "grant": "yes"})
    assert response.status_code == 404
    assert Consent.objects.count() == 0


def test_consent_rows_are_append_only():
    user = make_user("participant")
    job = Job.objects.create(owner=make_user("owner"), name="job")
    node = make_node(user, "box")
    client = logged_in(user)

    granted = client.post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "yes"}, follow=True)
    assert "consents to train" in granted.content.decode()
    assert Consent.current(job, node) is True
    first = Consent.objects.get()

    revoked = client.post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "no"}, follow=True)
    assert "revoked" in revoked.content.decode()
    rows = list(Consent.objects.filter(job=job, node=node).order_by("id").values_list("id", "granted", "by_id"))
    assert rows == [(first.id, True, user.id), (rows[1][0], False, user.id)]
    assert Consent.current(job, node) is False
    assert list(Consent.consenting_nodes(job)) == []


@pytest.mark.parametrize("data", [{}, {"node": "x", "grant": "yes"}, {"node": 1, "grant": "maybe"}])
def test_malformed_consent_is_refused(data):
    user = make_user("participant")
    job = Job.objects.create(owner=user, name="job")
    make_node(user, "box")
    response = logged_in(user).post(f"/jobs/{job.id}/consent/", data, follow=True)
    assert response.status_code == 200
    assert "Choose a node" in response.content.decode()
    assert Consent.objects.count() == 0


def test_node_without_required_hardware_cannot_consent():
    user = make_user("participant")
    job = Job.objects.create(owner=make_user("owner"), name="GPU job", require_cuda=True)
    cpu_node = make_node(user, "cpu-box", hardware=CPU_HW)
    client = logged_in(user)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert "hardware too small" in page
    response = client.post(f"/jobs/{job.id}/consent/", {"node": cpu_node.id, "grant": "yes"}, follow=True)
    assert "does not meet this job" in response.content.decode()
    assert Consent.objects.count() == 0

    big_job = Job.objects.create(owner=job.owner, name="big GPU job", min_vram_gb=48)
    gpu_node = make_node(user, "gpu-box", hardware=GPU_HW)
    client.post(f"/jobs/{big_job.id}/consent/", {"node": gpu_node.id, "grant": "yes"})
    assert Consent.objects.count() == 0
    client.post(f"/jobs/{job.id}/consent/", {"node": gpu_node.id, "grant": "yes"})
    assert list(Consent.objects.values_list("job_id", "node_id", "granted")) == [(job.id, gpu_node.id, True)]


# -- CSRF -------------------------------------------------------------------------------------
def test_csrf_is_enforced_on_forms():
    user = make_user("owner")
    job = Job.objects.create(owner=user, name="job")
    node = make_node(user, "box")
    client = logged_in(user, enforce_csrf_checks=True)
    assert client.post("/jobs/new/", JOB_FORM).status_code == 403
    assert client.post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "yes"}).status_code == 403
    assert client.post(f"/nodes/{node.id}/token/").status_code == 403
    assert client.post("/nodes/register/", {"name": "n2", "hardware_json": json.dumps(CPU_HW)}).status_code == 403
    assert client.post("/accounts/profile/", {"payout_address": ADDRESS}).status_code == 403
    assert (
        Client(enforce_csrf_checks=True)
        .post("/accounts/signup/", {"username": "eve", "password1": PASSWORD, "password2": PASSWORD})
        .status_code
        == 403
    )
    assert Job.objects.count() == 1 and Consent.objects.count() == 0 and Node.objects.count() == 1
    assert not User.objects.filter(username="eve").exists()
    assert Node.objects.get().token_hash == node.token_hash

    # With the token from the form the same post goes through.
    page = client.get("/jobs/new/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert client.post("/jobs/new/", {**JOB_FORM, "csrfmiddlewaretoken": token}).status_code == 302
    assert Job.objects.count() == 2


# -- nodes ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hardware,message",
    [
        ("{not json", "Hardware report: not valid JSON"),
        ("[1, 2]", "Hardware report: expected a JSON object"),
        ('{"cpu": "x", "ram_gb": 8}', "Hardware report: missing field &#x27;cores&#x27;"),
        ('{"cores": 0, "ram_gb": 8}', "Hardware report: cores must be between"),
        ('{"cores": 2, "ram_gb": NaN}', "Hardware report: ram_gb must be a finite number"),
        ("", "This field is required."),
        ("[" * 200_000, "Hardware report: not valid JSON (JSON nested deeper than 64 levels)"),
    ],
)
def test_node_registration_with_invalid_hardware_shows_error(hardware, message):
    client = logged_in(make_user("participant"))
    response = client.post("/nodes/register/", {"name": "box", "hardware_json": hardware})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert Node.objects.count() == 0


def test_node_registration_refuses_duplicate_name():
    user = make_user("participant")
    make_node(user, "box")
    response = logged_in(user).post("/nodes/register/", {"name": "box", "hardware_json": json.dumps(CPU_HW)})
    assert "You already have a node with this name." in response.content.decode()
    assert Node.objects.count() == 1


def test_node_token_is_shown_once_and_never_listed():
    user = make_user("participant")
    client = logged_in(user)
    response = client.post("/nodes/register/", {"name": "box", "hardware_json": json.dumps(GPU_HW)})
    assert response.status_code == 200
    token = re.search(r'id="node-token">([^<]+)<', response.content.decode()).group(1)
    node = Node.objects.get()
    assert Node.authenticate(token) == node
    assert (node.owner, node.gpu_name, node.vram_gb, node.cuda_capability) == (user, "Test GPU", 24.0, "8.6")
    secret = token.split("_", 2)[2]
    for page in ("/nodes/", f"/nodes/{node.id}/", "/", "/nodes/register/"):
        text = client.get(page).content.decode()
        assert secret not in text, page
    listing = client.get("/nodes/").content.decode()
    assert "box" in listing and "Test GPU" in listing

    # A new token replaces the old one, and is again shown only on its own page.
    again = client.post(f"/nodes/{node.id}/token/")
    new_token = re.search(r'id="node-token">([^<]+)<', again.content.decode()).group(1)
    assert new_token != token and Node.authenticate(token) is None and Node.authenticate(new_token) == node
    assert new_token.split("_", 2)[2] not in client.get("/nodes/").content.decode()


def test_nodes_of_others_are_404():
    owner, other = make_user("owner"), make_user("other")
    node = make_node(owner, "box")
    before = Node.objects.values("token_hash").get()
    client = logged_in(other)
    assert client.get(f"/nodes/{node.id}/").status_code == 404
    assert client.post(f"/nodes/{node.id}/token/").status_code == 404
    assert "box" not in client.get("/nodes/").content.decode()
    assert Node.objects.values("token_hash").get() == before


# -- anonymous access -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/jobs/", "/jobs/new/", "/nodes/", "/nodes/register/", "/payouts/", "/accounts/profile/"]
)
def test_anonymous_users_are_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.url == f"/login/?next={path}"


def test_login_page_logs_in(client):
    make_user("dora")
    assert client.get("/login/").status_code == 200
    response = client.post("/login/", {"username": "dora", "password": PASSWORD, "next": "/jobs/"})
    assert response.status_code == 302 and response.url == "/jobs/"
    bad = Client().post("/login/", {"username": "dora", "password": "wrong"})
    assert bad.status_code == 200 and "correct username and password" in bad.content.decode()


# -- the job page and its static files --------------------------------------------------------
def test_job_page_loads_plotly_from_our_static_files():
    user = make_user("owner")
    job = Job.objects.create(owner=user, name="charted")
    client = logged_in(user)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert '<script src="/static/vendor/plotly/plotly.min.js"></script>' in page
    assert '<script src="/static/js/job_live.js"></script>' in page
    assert 'id="chart"' in page
    snapshot = json.loads(
        re.search(r'<script id="job-snapshot" type="application/json">(.*?)</script>', page, re.S).group(1)
    )
    assert snapshot["job"] == job.id and snapshot["status"] == "waiting" and snapshot["reports"] == []

    path = finders.find("vendor/plotly/plotly.min.js")
    assert path, "plotly.min.js is not found by the staticfiles finders"
    for url, needle in (
        ("/static/vendor/plotly/plotly.min.js", b"plotly"),
        ("/static/js/job_live.js", b"WebSocket"),
        ("/static/css/site.css", b"{"),
    ):
        response = Client().get(url)  # static files need no login
        assert response.status_code == 200, url
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert needle in body, url
        assert len(body) > 100
    with open(path, "rb") as fh:
        size = len(fh.read())
    response = Client().get("/static/vendor/plotly/plotly.min.js")
    assert int(response["Content-Length"]) == size > 1_000_000
    assert response["Content-Type"].startswith(("text/javascript", "application/javascript"))
