"""Shared fixtures. Real services only: PostgreSQL (pytest-django's test database), Redis,
anvil. A service that cannot be reached fails the run; nothing is skipped."""
import pytest
import redis
from django.conf import settings as django_settings

pytest_plugins = ["tests.chain_fixtures", "tests.stack_fixtures"]


@pytest.fixture(scope="session", autouse=True)
def clean_redis():
    """Start from an empty Redis database (the Makefile gives tests their own, db 9)."""
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {django_settings.REDIS_URL} is not reachable: {exc}")
    client.flushdb()
    yield
    client.close()
