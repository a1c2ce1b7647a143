"""Accounts: changing one's password, and resetting a forgotten one by an emailed link."""

import re

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

pytestmark = pytest.mark.django_db

OLD, NEW = "an-old-password-1", "a-brand-new-password-2"


def test_password_change_needs_the_old_password_and_keeps_the_session():
    user = User.objects.create_user("carol", password=OLD)
    client = Client()
    assert client.get("/accounts/password/").status_code == 302  # login first
    client.force_login(user)
    assert b"/accounts/password/" in client.get("/accounts/profile/").content
    page = client.get("/accounts/password/")
    assert page.status_code == 200 and b"Change your password" in page.content
    wrong = client.post("/accounts/password/", {"old_password": "nope", "new_password1": NEW, "new_password2": NEW})
    assert wrong.status_code == 200 and wrong.context["form"].errors
    done = client.post(
        "/accounts/password/", {"old_password": OLD, "new_password1": NEW, "new_password2": NEW}, follow=True
    )
    assert done.redirect_chain[-1][0] == "/accounts/password/done/" and b"Password changed" in done.content
    assert client.get("/jobs/").status_code == 200  # still logged in
    user.refresh_from_db()
    assert user.check_password(NEW)


def test_password_reset_mails_a_one_time_link(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    user = User.objects.create_user("dave", email="dave@example.org", password=OLD)
    client = Client()
    assert b"/accounts/password/reset/" in client.get("/login/").content
    response = client.post("/accounts/password/reset/", {"email": "dave@example.org"})
    assert response["Location"] == "/accounts/password/reset/sent/"
    # an unknown address looks the same and sends nothing
    assert client.post("/accounts/password/reset/", {"email": "x@example.org"}).status_code == 302
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["dave@example.org"]
    assert mail.outbox[0].subject == "Reset your DFL platform password"
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    assert form.context["validlink"]
    set_url = form.redirect_chain[-1][0]
    done = client.post(set_url, {"new_password1": NEW, "new_password2": NEW}, follow=True)
    assert b"Password set" in done.content
    user.refresh_from_db()
    assert user.check_password(NEW)
    again = client.get(link, follow=True)
    assert not again.context["validlink"] and b'id="invalid-link"' in again.content


def test_signup_and_profile_keep_an_email_for_resets():
    client = Client()
    client.post(
        "/accounts/signup/",
        {"username": "erin", "email": "erin@example.org", "password1": OLD, "password2": OLD},
    )
    user = User.objects.get(username="erin")
    assert user.email == "erin@example.org"
    client.post("/accounts/profile/", {"payout_address": "", "email": "new@example.org"})
    user.refresh_from_db()
    assert user.email == "new@example.org"


def test_email_settings_come_from_the_environment():
    import os
    import subprocess
    import sys

    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_HOST_USER, s.EMAIL_USE_TLS, s.EMAIL_USE_SSL)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hub.settings", "PYTHONPATH": "platform:.", "DEBUG": "1"}
    env.pop("EMAIL_BACKEND", None)
    smtp = {**env, "EMAIL_URL": "smtp://mailer:p%40ss@mail.example.org:587"}
    out = subprocess.run([sys.executable, "-c", code], env=smtp, capture_output=True, text=True, check=True).stdout
    assert out.split() == [
        "django.core.mail.backends.smtp.EmailBackend",
        "mail.example.org",
        "587",
        "mailer",
        "True",
        "False",
    ]
    env.pop("EMAIL_URL", None)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; print(s.EMAIL_BACKEND)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "django.core.mail.backends.console.EmailBackend"
