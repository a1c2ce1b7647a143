"""A tiny form-filling HTTP client: what a person does in the browser, minus the rendering."""

import re

import requests


class Browser:
    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")
        self.session = requests.Session()

    def get(self, path: str) -> requests.Response:
        response = self.session.get(self.base + path, timeout=30)
        response.raise_for_status()
        return response

    def submit(self, path: str, data: dict, form_page: str | None = None) -> requests.Response:
        """Load the page holding the form (for its CSRF token), then post the form."""
        page = self.get(form_page or path).text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, f"no CSRF token on {form_page or path}"
        response = self.session.post(self.base + path, data={"csrfmiddlewaretoken": token.group(1), **data}, timeout=30)
        response.raise_for_status()
        return response

    def sign_up(self, username: str, password: str, payout_address: str = "") -> None:
        response = self.submit(
            "/accounts/signup/",
            {
                "username": username,
                "password1": password,
                "password2": password,
                "payout_address": payout_address,
            },
        )
        assert "Log out" in response.text, response.text[:2000]

    def log_in(self, username: str, password: str) -> None:
        response = self.submit("/login/", {"username": username, "password": password})
        assert "Log out" in response.text, response.text[:2000]

    @property
    def session_cookie(self) -> str:
        return self.session.cookies["sessionid"]
