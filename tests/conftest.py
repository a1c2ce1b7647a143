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


def pytest_collection_modifyitems(config, items):
    """Tests on the production stack run last: its Celery beat acts on every row it sees, and
    once started the stack runs until the session ends."""
    from tests.stack_fixtures import STACK_FIXTURES

    def uses_stack(item) -> bool:
        return any(name in getattr(item, "fixturenames", ()) for name in STACK_FIXTURES)

    items.sort(key=uses_stack)  # stable: the order within each group is kept
