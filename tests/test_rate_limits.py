"""Rate limits on login and on the node API, counted in the shared Redis cache (limits come
from settings, so tests and benchmarks can raise them)."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client

from tests.factories import make_node

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_counts():
    cache.clear()
    yield
    cache.clear()


def test_password_guessing_is_slowed_per_address_and_username(settings):
    settings.LOGIN_RATE_LIMIT = "3/h"  # an hour window: the test cannot straddle it
    User.objects.create_user("alice", password="the-right-password-1")
    guesser = Client()
    answers = [guesser.post("/login/", {"username": "alice", "password": f"guess-{i}"}).status_code for i in range(5)]
    assert answers == [200, 200, 200, 429, 429]  # 200: the form again, with its error
    # even the right password waits: the account is not guessable faster by getting lucky
    assert guesser.post("/login/", {"username": "alice", "password": "the-right-password-1"}).status_code == 429
    # another account from the same address is not locked out by it
    User.objects.create_user("bob", password="bobs-password-1")
    assert Client().post("/login/", {"username": "bob", "password": "bobs-password-1"}).status_code == 302


def test_a_node_flooding_the_api_is_refused(settings):
    settings.NODE_API_RATE_LIMIT = "5/h"
    owner = User.objects.create_user("operator", password="pw-unused-123")
    node, other = make_node(owner, "noisy"), make_node(owner, "quiet")
    api = Client()
    statuses = [
        api.post(
            "/api/v1/node/heartbeat",
            data="{}",
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {node.token}",
        ).status_code
        for _ in range(7)
    ]
    assert statuses == [200] * 5 + [429] * 2
    refused = api.post(
        "/api/v1/node/heartbeat", data="{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {node.token}"
    )
    assert refused.json()["error"].startswith("too many requests")
    ok = api.post(
        "/api/v1/node/heartbeat", data="{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {other.token}"
    )
    assert ok.status_code == 200  # per node: one noisy node does not silence the others


def test_deploy_check_is_clean_for_production_behind_https():
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
        "SECRET_KEY": secrets.token_urlsafe(50),
        "PLATFORM_SIGNING_KEY": secrets.token_hex(32),
        "ALLOWED_HOSTS": "dfl.example.org",
        "CSRF_TRUSTED_ORIGINS": "https://dfl.example.org",
        "HTTPS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues" in proc.stdout
