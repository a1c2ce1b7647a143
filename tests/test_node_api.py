"""The node-facing JSON API (/api/v1/): bearer-token authentication, hello, and round reports.
Bad input gets a 4xx JSON error with a reason, and nothing is written."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone

from jobs.models import CohortMember, Consent, Job, PeerReport, Round
from nodes.authority import platform_key
from nodes.models import Node
from peers.protocol import key_change_bytes
from peers.wire.signing import NodeKey
from tests.factories import make_node

pytestmark = pytest.mark.django_db

HARDWARE = {"cpu": "Test CPU", "cores": 8, "ram_gb": 31.5, "gpus": [], "cuda": False, "torch": "2.x", "os": "Linux"}
KEY = "ab" * 32
NODE_FIELDS = [
    "name",
    "cpu",
    "cores",
    "ram_gb",
    "gpu_name",
    "vram_gb",
    "cuda_capability",
    "hardware",
    "public_key",
    "token_id",
    "token_hash",
]


def registered(owner, name="n1") -> tuple[Node, str]:
    node = make_node(owner, name, hardware=HARDWARE, public_key=KEY)
    return node, node.token


def row(node: Node) -> dict:
    return Node.objects.filter(pk=node.pk).values(*NODE_FIELDS, "last_seen").get()


def post(client: Client, path: str, token: str | None, body, raw: bool = False):
    data = body if raw else json.dumps(body)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    return client.post(path, data=data, content_type="application/json", **headers)


@pytest.fixture
def owner():
    return User.objects.create_user("operator", password="pw-123456789")


@pytest.fixture
def node_and_token(owner):
    return registered(owner)


@pytest.fixture
def running(owner, node_and_token):
    """A running job with a cohort of three consenting nodes and round 1 open."""
    node, token = node_and_token
    others = [registered(owner, f"n{i}")[0] for i in (2, 3)]
    job = Job.objects.create(
        owner=owner,
        name="api job",
        num_peers=3,
        rounds=2,
        status=Job.Status.RUNNING,
        current_round=1,
        started_at=timezone.now(),
    )
    for position, member in enumerate([node, *others]):
        Consent.objects.create(job=job, node=member, granted=True, by=owner)
        CohortMember.objects.create(job=job, node=member, position=position)
    rnd = Round.objects.create(job=job, number=1, deadline=timezone.now() + timedelta(minutes=5))
    return job, rnd, node, token, others


def report_body(job, node, round_number=1, **overrides) -> dict:
    body = {
        "job_id": job.id,
        "round": round_number,
        "node_id": node.id,
        "train_loss": 0.7,
        "eval_loss": 0.8,
        "accuracy": 0.61,
        "samples": 300,
        "eval_samples": 60,
        "model_hash": "c" * 64,
        "bytes_sent": 1000,
        "bytes_received": 2000,
        "duration_s": 1.5,
        "rejected": [],
        "diverged": False,
    }
    body.update(overrides)
    return body


def assert_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    for word in words:
        assert word in message, message
    return message


# -- authentication ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        None,  # no Authorization header at all
        "",  # empty
        "Basic dXNlcjpwYXNz",  # another scheme
        "Bearer ",  # empty token
        "Bearer nonsense",  # garbled: no structure
        "Bearer dfln_abcdef123456_wrongsecret",  # well formed but unknown
        "Bearer xxxx_abcdef123456_secret",  # wrong prefix
        "Bearer dfln_\x00\x00_secret",  # NUL bytes must not reach the database
        "Bearer dfln_" + "é" * 12 + "_secret",  # non-ASCII
        "Bearer dfln_" + "a" * 5000 + "_s",  # far too long
    ],
)
def test_bad_token_is_401_json(client, node_and_token, header):
    node, _ = node_and_token
    before = row(node)
    kwargs = {} if header is None else {"HTTP_AUTHORIZATION": header}
    for response in (
        client.get("/api/v1/node", **kwargs),
        client.post("/api/v1/node/heartbeat", data="{}", content_type="application/json", **kwargs),
    ):
        assert_error(response, 401, "token")
    assert row(node) == before


def test_secret_of_another_node_does_not_authenticate(owner, node_and_token):
    node, token = node_and_token
    other, other_token = registered(owner, "other")
    forged = f"dfln_{node.token_id}_{other_token.split('_', 2)[2]}"
    assert Node.authenticate(forged) is None
    assert Node.authenticate(token) == node and Node.authenticate(other_token) == other


def test_token_is_stored_hashed_and_rotates(client, owner, node_and_token):
    node, token = node_and_token
    secret = token.split("_", 2)[2]
    stored = json.dumps(row(node), default=str)
    assert token not in stored and secret not in stored
    assert Node.authenticate(token).pk == node.pk
    response = client.get("/api/v1/node", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and response.json()["node_id"] == node.id

    # A new token invalidates the old one.
    node = Node.objects.get(pk=node.pk)
    new_token = node.issue_token()
    node.save(update_fields=["token_id", "token_hash"])
    assert new_token != token
    assert Node.authenticate(token) is None
    assert Node.authenticate(new_token).pk == node.pk
    assert_error(client.get("/api/v1/node", HTTP_AUTHORIZATION=f"Bearer {token}"), 401)
    assert client.get("/api/v1/node", HTTP_AUTHORIZATION=f"Bearer {new_token}").status_code == 200


# -- hello ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body,raw,words",
    [
        ("{not json", True, ["JSON"]),
        (b"\xff\xfe\x00", True, ["JSON"]),
        ("[1, 2, 3]", True, ["object"]),
        ('"a string"', True, ["object"]),
        ("[" * 100_000, True, ["JSON", "nested"]),
        ('{"a": ' * 65 + "1" + "}" * 65, True, ["JSON", "nested"]),
    ],
)
def test_hello_unparseable_body_is_400_and_changes_nothing(client, node_and_token, body, raw, words):
    node, token = node_and_token
    before = row(node)
    assert_error(post(client, "/api/v1/node/hello", token, body, raw=raw), 400, *words)
    assert row(node) == before


DEEP_BODY_SCRIPT = """
import json, sys, django
django.setup()
import ledger.tasks  # as in the embedded demo's daphne, which settles in process: web3 -> py_ecc
from django.test import Client
assert sys.getrecursionlimit() >= 100_000, sys.getrecursionlimit()
token = sys.argv[1]
out = {}
for path, body in (("/api/v1/node/hello", "[" * 500_000), ("/api/v1/reports", '{"a":' * 400_000),
                   ("/api/v1/node/hello", json.dumps({"public_key": "cd" * 32, "hardware": "[" * 500_000}))):
    r = Client().post(path, data=body, content_type="application/json", HTTP_AUTHORIZATION="Bearer " + token)
    out[path + str(len(out))] = [r.status_code, r.json().get("error", "")]
print(json.dumps(out))
"""


@pytest.mark.django_db(transaction=True)
def test_deeply_nested_body_is_400_not_a_crash(owner):
    """In a process where web3 is loaded (the embedded demo serves the site and settles in one
    process) py_ecc has raised the recursion limit to 100000: the JSON parser must refuse deep
    nesting before the C stack overflows and takes the whole server down."""
    node, token = registered(owner)
    before = row(node)
    db = connection.settings_dict
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hub.settings",
        "SECRET_KEY": "x",
        "PLATFORM_SIGNING_KEY": "22" * 32,
        "PYTHONPATH": os.pathsep.join([str(root / "platform"), str(root)]),
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
    }
    proc = subprocess.run(
        [sys.executable, "-c", DEEP_BODY_SCRIPT, token], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"the server process died ({proc.returncode}):\n{proc.stderr[-3000:]}"
    results = list(json.loads(proc.stdout.strip().splitlines()[-1]).values())
    assert [status for status, _ in results] == [400, 400, 400], results
    assert all("nested" in message for _, message in results), results
    assert {k: v for k, v in row(node).items() if k != "last_seen"} == {
        k: v for k, v in before.items() if k != "last_seen"
    }


@pytest.mark.parametrize(
    "body,words",
    [
        ({"hardware": HARDWARE}, ["public_key"]),
        ({"hardware": HARDWARE, "public_key": "zz" * 32}, ["public_key"]),
        ({"hardware": HARDWARE, "public_key": "ab" * 31}, ["public_key"]),
        ({"hardware": HARDWARE, "public_key": "AB" * 32}, ["public_key"]),
        ({"hardware": HARDWARE, "public_key": 12345}, ["public_key"]),
        ({"hardware": "{oops", "public_key": "cd" * 32}, ["hardware", "JSON"]),
        ({"hardware": [1, 2], "public_key": "cd" * 32}, ["hardware"]),
        ({"hardware": {"cpu": "x", "ram_gb": 8}, "public_key": "cd" * 32}, ["hardware", "cores"]),
        ({"hardware": {**HARDWARE, "cores": "many"}, "public_key": "cd" * 32}, ["hardware"]),
        ({"hardware": {**HARDWARE, "cores": 0}, "public_key": "cd" * 32}, ["hardware", "cores"]),
        ({"hardware": {**HARDWARE, "ram_gb": -1}, "public_key": "cd" * 32}, ["hardware", "ram_gb"]),
        ({"hardware": {**HARDWARE, "gpus": "one"}, "public_key": "cd" * 32}, ["hardware", "gpus"]),
        ({"hardware": {**HARDWARE, "gpus": [{"name": "g", "vram_gb": "big"}]}, "public_key": "cd" * 32}, ["hardware"]),
        ({"hardware": {**HARDWARE, "cores": 10**12}, "public_key": "cd" * 32}, ["hardware", "cores"]),
        ({"hardware": {**HARDWARE, "cpu": "evil\x00cpu"}, "public_key": "cd" * 32}, ["hardware", "NUL"]),
        (
            {"hardware": {**HARDWARE, "gpus": [{"name": "g", "vram_gb": -4}]}, "public_key": "cd" * 32},
            ["hardware", "vram_gb"],
        ),
    ],
)
def test_hello_bad_fields_are_400_and_change_nothing(client, node_and_token, body, words):
    node, token = node_and_token
    before = row(node)
    assert_error(post(client, "/api/v1/node/hello", token, body), 400, *words)
    after = row(node)
    # The hardware, key and token are untouched (only liveness may be refreshed by an authenticated call).
    assert {k: after[k] for k in NODE_FIELDS} == {k: before[k] for k in NODE_FIELDS}


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_hello_non_finite_hardware_is_400(client, node_and_token, value):
    node, token = node_and_token
    before = row(node)
    for field in (f'"ram_gb": {value}', f'"ram_gb": 8, "gpus": [{{"name": "g", "vram_gb": {value}}}]'):
        raw = '{{"public_key": "{}", "hardware": {{"cpu": "x", "cores": 2, {}}}}}'.format("cd" * 32, field)
        assert_error(post(client, "/api/v1/node/hello", token, raw, raw=True), 400, "hardware")
    assert {k: v for k, v in row(node).items() if k != "last_seen"} == {
        k: v for k, v in before.items() if k != "last_seen"
    }


def test_good_hello_updates_hardware_key_and_last_seen(client, node_and_token):
    node, token = node_and_token
    assert row(node)["last_seen"] is None
    hw = {
        "cpu": "Big CPU",
        "cores": 32,
        "ram_gb": 128.0,
        "cuda": True,
        "torch": "2.x",
        "os": "Linux",
        "gpus": [
            {"name": "small", "vram_gb": 8, "cuda_capability": "7.5"},
            {"name": "H100", "vram_gb": 80, "cuda_capability": "9.0"},
        ],
    }
    response = post(client, "/api/v1/node/hello", token, {"hardware": hw, "public_key": KEY})
    assert response.status_code == 200, response.content
    info = response.json()
    assert info["node_id"] == node.id and info["channel"] == f"dfl.node.{node.id}"
    assert info["platform_key"] == platform_key().public_key_hex
    node.refresh_from_db()
    assert (node.cpu, node.cores, node.ram_gb) == ("Big CPU", 32, 128.0)
    assert (node.gpu_name, node.vram_gb, node.cuda_capability) == ("H100", 80.0, "9.0")
    assert node.hardware["gpus"][1]["name"] == "H100"
    assert node.public_key == KEY
    assert node.last_seen is not None and timezone.now() - node.last_seen < timedelta(seconds=30)
    assert node.is_online


# -- reports ----------------------------------------------------------------------------------
def test_valid_report_is_stored(client, running):
    job, rnd, node, token, _ = running
    body = report_body(job, node, rejected=[{"sender": 7, "reason": "bad signature"}])
    response = post(client, "/api/v1/reports", token, body)
    assert response.status_code == 201, response.content
    saved = PeerReport.objects.get(pk=response.json()["report"])
    assert (saved.round_id, saved.node_id) == (rnd.id, node.id)
    assert (saved.train_loss, saved.eval_loss, saved.accuracy) == (0.7, 0.8, 0.61)
    assert (saved.samples, saved.eval_samples, saved.bytes_sent, saved.bytes_received) == (300, 60, 1000, 2000)
    assert saved.model_hash == "c" * 64 and saved.rejected == [{"sender": 7, "reason": "bad signature"}]
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.OPEN  # two of three reported: still open


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    "change,status,words",
    [
        (lambda b: _without(b, "accuracy"), 400, ["missing", "accuracy"]),
        (lambda b: _without(b, "model_hash"), 400, ["missing", "model_hash"]),
        (lambda b: {**b, "samples": "300"}, 400, ["samples"]),
        (lambda b: {**b, "samples": 3.5}, 400, ["samples"]),
        (lambda b: {**b, "samples": True}, 400, ["samples"]),
        (lambda b: {**b, "accuracy": "high"}, 400, ["accuracy"]),
        (lambda b: {**b, "round": None}, 400, ["round"]),
        (lambda b: {**b, "surprise": 1}, 400, ["unexpected", "surprise"]),
        (lambda b: {**b, "type": "peer.heartbeat"}, 400, []),
        (lambda b: {**b, "type": "no.such.type"}, 400, ["unknown"]),
        (lambda b: {**b, "rejected": [{"sender": 1}]}, 400, ["rejected"]),
        (lambda b: {**b, "rejected": [{"sender": 1, "reason": "bad\x00sig"}]}, 400, ["rejected"]),
        (lambda b: {**b, "rejected": [{"sender": 2**80, "reason": "x"}]}, 400, ["rejected"]),
        (lambda b: {**b, "diverged": "no"}, 400, ["diverged"]),
        (lambda b: {**b, "accuracy": 1.5}, 400, ["accuracy"]),
        (lambda b: {**b, "accuracy": -0.1}, 400, ["accuracy"]),
        (lambda b: {**b, "samples": -1}, 400, ["samples"]),
        (lambda b: {**b, "samples": 2**31}, 400, ["samples"]),
        (lambda b: {**b, "bytes_sent": 2**70}, 400, ["bytes_sent"]),
        (lambda b: {**b, "model_hash": "short"}, 400, ["model_hash"]),
        (lambda b: {**b, "model_hash": "z" * 64}, 400, ["model_hash"]),
        (lambda b: {**b, "model_hash": "\x00" * 64}, 400, ["model_hash"]),
        (lambda b: {**b, "round": 2}, 404, ["round 2"]),
        (lambda b: {**b, "round": 2**40}, 404, ["round"]),
        (lambda b: {**b, "job_id": 10**9}, 403, ["cohort"]),
        (lambda b: {**b, "node_id": b["node_id"] + 1000}, 403, ["another node"]),
    ],
)
def test_malformed_report_is_refused_and_not_stored(client, running, change, status, words):
    job, _rnd, node, token, _ = running
    assert_error(post(client, "/api/v1/reports", token, change(report_body(job, node))), status, *words)
    assert PeerReport.objects.count() == 0


@pytest.mark.parametrize("name", ["accuracy", "train_loss", "eval_loss", "duration_s"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_metric_in_raw_body_is_refused(client, running, name, value):
    job, _rnd, node, token, _ = running
    raw = json.dumps(report_body(job, node, **{name: 0.5})).replace(f'"{name}": 0.5', f'"{name}": {value}')
    assert value in raw
    assert_error(post(client, "/api/v1/reports", token, raw, raw=True), 400, name, "finite")
    assert PeerReport.objects.count() == 0


def test_report_with_unparseable_body_is_refused(client, running):
    _, _, _, token, _ = running
    assert_error(post(client, "/api/v1/reports", token, "{nope", raw=True), 400, "JSON")
    assert_error(post(client, "/api/v1/reports", token, "[]", raw=True), 400, "object")
    assert PeerReport.objects.count() == 0


def test_report_from_node_outside_the_cohort_is_refused(client, owner, running):
    job, _rnd, _, _, _ = running
    stranger, stranger_token = registered(owner, "stranger")
    Consent.objects.create(job=job, node=stranger, granted=True, by=owner)  # consent alone is not membership
    assert_error(post(client, "/api/v1/reports", stranger_token, report_body(job, stranger)), 403, "cohort")
    assert PeerReport.objects.count() == 0


def test_report_from_member_who_revoked_consent_is_refused(client, owner, running):
    job, _rnd, node, token, _ = running
    Consent.objects.create(job=job, node=node, granted=False, by=owner)
    assert_error(post(client, "/api/v1/reports", token, report_body(job, node)), 403, "cohort")
    assert PeerReport.objects.count() == 0


def test_report_on_behalf_of_another_member_is_refused(client, running):
    job, _rnd, _node, token, others = running
    assert_error(post(client, "/api/v1/reports", token, report_body(job, others[0])), 403, "another node")
    assert PeerReport.objects.count() == 0


def test_duplicate_report_is_refused_and_first_kept(client, running):
    job, _rnd, node, token, _ = running
    assert post(client, "/api/v1/reports", token, report_body(job, node)).status_code == 201
    assert_error(post(client, "/api/v1/reports", token, report_body(job, node, accuracy=0.99)), 409, "duplicate")
    assert list(PeerReport.objects.values_list("node_id", "accuracy")) == [(node.id, 0.61)]


def test_report_for_closed_round_is_refused(client, running):
    job, rnd, node, token, _ = running
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.CLOSED, closed_at=timezone.now())
    assert_error(post(client, "/api/v1/reports", token, report_body(job, node)), 409, "closed")
    assert PeerReport.objects.count() == 0


def test_report_needs_post_and_token(client, running):
    job, _rnd, node, token, _ = running
    assert client.get("/api/v1/reports", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 405
    assert_error(post(client, "/api/v1/reports", None, report_body(job, node)), 401)
    assert PeerReport.objects.count() == 0


# -- signing keys -------------------------------------------------------------------------------
def test_a_stolen_token_cannot_replace_the_nodes_key(client, owner):
    """Attack: with the token alone, say hello with one's own key to sign weights in the node's name."""
    current = NodeKey.generate()
    node = make_node(owner, "keyed", hardware=HARDWARE, public_key=current.public_key_hex)
    thief = NodeKey.generate()
    response = post(
        client, "/api/v1/node/hello", node.token, {"hardware": HARDWARE, "public_key": thief.public_key_hex}
    )
    assert_error(response, 403, "signing key")
    forged = thief.sign(key_change_bytes(node.id, thief.public_key_hex)).hex()  # signed by the wrong key
    response = post(
        client, "/api/v1/node/hello", node.token, {"public_key": thief.public_key_hex, "key_change_signature": forged}
    )
    assert_error(response, 403, "signing key")
    for junk in ("zz", 12, None):
        response = post(
            client, "/api/v1/node/hello", node.token, {"public_key": thief.public_key_hex, "key_change_signature": junk}
        )
        assert response.status_code == 403
    node.refresh_from_db()
    assert node.public_key == current.public_key_hex


def test_a_key_change_signed_by_the_current_key_is_accepted(client, owner):
    current, new = NodeKey.generate(), NodeKey.generate()
    node = make_node(owner, "rotating", hardware=HARDWARE, public_key=current.public_key_hex)
    proof = current.sign(key_change_bytes(node.id, new.public_key_hex)).hex()
    response = post(
        client, "/api/v1/node/hello", node.token, {"public_key": new.public_key_hex, "key_change_signature": proof}
    )
    assert response.status_code == 200, response.content
    node.refresh_from_db()
    assert node.public_key == new.public_key_hex
    # the proof names the key it moves to: it cannot be replayed for another one
    other = NodeKey.generate()
    response = post(
        client, "/api/v1/node/hello", node.token, {"public_key": other.public_key_hex, "key_change_signature": proof}
    )
    assert response.status_code == 403


def test_the_owner_resets_a_lost_key_in_the_browser(client, owner):
    node = make_node(owner, "lost-key", hardware=HARDWARE, public_key=NodeKey.generate().public_key_hex)
    stranger = User.objects.create_user("stranger", password="pw-unused-123")
    client.force_login(stranger)
    assert client.post(f"/nodes/{node.id}/reset-key/").status_code == 404
    client.force_login(owner)
    response = client.post(f"/nodes/{node.id}/reset-key/")
    assert response.status_code == 302
    fresh = NodeKey.generate()
    response = post(Client(), "/api/v1/node/hello", node.token, {"public_key": fresh.public_key_hex})
    assert response.status_code == 200, response.content
    node.refresh_from_db()
    assert node.public_key == fresh.public_key_hex


def test_a_restarting_peer_gets_its_current_rounds_and_signed_plans(client, running):
    """GET node/plans: what a peer starts from after a restart (plans that waited in its inbox
    for rounds before the current one are then skipped as closed)."""
    import base64

    from peers.protocol import RoundPlan, decode, plan_bytes
    from peers.wire.signing import verify

    job, _rnd, node, token, _others = running
    response = client.get("/api/v1/node/plans", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    state = response.json()
    assert state["current_rounds"] == {str(job.id): 1}
    [encoded] = state["plans"]
    plan = decode(base64.b64decode(encoded))
    assert isinstance(plan, RoundPlan) and (plan.job_id, plan.round, plan.node_id) == (job.id, 1, node.id)
    assert verify(platform_key().public_key_hex, plan_bytes(plan), plan.signature)
    assert plan.consent.node_id == node.id
    # a stranger's node learns nothing about the job
    outsider = make_node(User.objects.create_user("outsider"), "outside")
    response = client.get("/api/v1/node/plans", HTTP_AUTHORIZATION=f"Bearer {outsider.token}")
    assert response.json() == {"current_rounds": {}, "plans": []}
