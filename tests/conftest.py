"""Shared fixtures. Real services only: PostgreSQL (pytest-django's test database), Redis,
RabbitMQ (Celery's broker), anvil, Chromium. A service that cannot be reached fails the run; nothing is skipped.

Tests that need a service carry the ``services`` marker: set by hand on modules that talk to
Redis directly, and added here to every test that asks for the database, anvil or the
production stack. ``make test-fast`` runs the rest with every service address pointing nowhere.
"""

import pytest
import redis
from django.conf import settings as django_settings

pytest_plugins = ["tests.chain_fixtures", "tests.exchange_fixtures", "tests.stack_fixtures"]


def _flush_again_on_deadlock() -> None:
    """A transactional test's teardown empties every table (TRUNCATE) while the production
    stack's processes may still be reading some of them: Postgres can pick the TRUNCATE as a
    deadlock's victim and roll it back. Nothing was emptied then, so emptying again is safe."""
    import time

    from django.db import OperationalError
    from django.test import TransactionTestCase

    teardown = TransactionTestCase._fixture_teardown
    if getattr(teardown, "retries_deadlocks", False):
        return

    def _fixture_teardown(self):
        for attempt in range(5):
            try:
                return teardown(self)
            except Exception as exc:  # flush wraps the OperationalError in a CommandError
                cause = exc if isinstance(exc, OperationalError) else exc.__cause__ or exc.__context__
                if attempt == 4 or "deadlock detected" not in str(cause):
                    raise
                time.sleep(0.5 * (attempt + 1))

    _fixture_teardown.retries_deadlocks = True  # type: ignore[attr-defined]
    TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[method-assign]


@pytest.fixture(scope="session", autouse=True)
def flush_again_on_deadlock():
    _flush_again_on_deadlock()


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """Each test gets channel layers of its own. Every async test runs on an event loop of its
    own, and channels_redis keeps loop-bound state in the process-wide instance: a receive that
    a closed loop abandoned leaves its asyncio lock held and bound to that loop, and the next
    test's first receive fails with "bound to a different event loop". (A server process has
    one loop for its lifetime, so production never meets this.)"""
    from channels.layers import channel_layers

    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


SERVICE_FIXTURES = {
    "db",
    "transactional_db",
    "django_db_setup",
    "client",
    "admin_client",
    "live_server",
    "anvil",
    "peer_redis",
    "exchange",
    "chain_settings",
    "stack",
    "production_stack",
}


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def clean_broker():
    """Start with no Celery task left in the broker by an earlier run (RabbitMQ, its own vhost)."""
    from hub.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2)
            app.control.purge(connection=conn)
    except Exception as exc:
        pytest.fail(f"Celery's broker at {app.conf.broker_url} is not reachable: {exc}")


@pytest.fixture(autouse=True)
def _services_for_marked_tests(request):
    """A test that needs services gets a checked, clean Redis and broker first (once per session)."""
    if request.node.get_closest_marker("services"):
        request.getfixturevalue("clean_redis")
        request.getfixturevalue("clean_broker")


def pytest_collection_modifyitems(config, items):
    """Mark the tests that need services; run those on the production stack last: its Celery
    beat acts on every row it sees, and once started the stack runs until the session ends."""
    from tests.stack_fixtures import STACK_FIXTURES

    for item in items:
        if item.get_closest_marker("django_db") or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)

    def uses_stack(item) -> bool:
        return any(name in getattr(item, "fixturenames", ()) for name in STACK_FIXTURES)

    items.sort(key=uses_stack)  # stable: the order within each group is kept
