"""The peers' exchange as production runs it: a Redis server of its own (started here, on its own
port, never the machine's shared one), its `default` user disabled, the platform's admin user
the only one configured; nodes get their users from the platform at hello (nodes.exchange)."""

import secrets
import shutil
import subprocess
import time

import pytest
import redis

from tests.chain_fixtures import free_port

ADMIN_USER = "platform"


class PeerRedis:
    """A redis-server process the tests own: they may stop and restart it (its data and node
    users go with it, as a real restart without persistence does)."""

    def __init__(self):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not on PATH: the peers' exchange needs one of its own")
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self.popen: subprocess.Popen | None = None

    @property
    def admin_url(self) -> str:
        return f"redis://{ADMIN_USER}:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def public_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.admin_url)

    def start(self) -> None:
        # Written the way compose.yaml's peer-redis service starts it.
        self.popen = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory",
                "1gb",
                "--maxmemory-policy",
                "noeviction",
                "--user",
                "default",
                "off",
                "--user",
                ADMIN_USER,
                "on",
                f">{self.password}",
                "~*",
                "&*",
                "+@all",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.admin() as client:
                    client.ping()
                return
            except redis.RedisError:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the peers' redis-server on port {self.port} did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def peer_redis():
    server = PeerRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def exchange(peer_redis, settings):
    """This test's platform has the peers' exchange (PEER_REDIS_URL), emptied first."""
    with peer_redis.admin() as client:
        for user in client.execute_command("ACL", "USERS"):
            if user.startswith(b"node-"):
                client.execute_command("ACL", "DELUSER", user)
        client.flushall()
    use_exchange(settings, peer_redis)
    return peer_redis


def use_exchange(settings, peer_redis: PeerRedis) -> None:
    """Point this process's platform code (pytest-django's ``settings``) at ``peer_redis``, as
    PEER_REDIS_URL does for the stack's processes."""
    settings.PEER_REDIS_URL = peer_redis.admin_url
    settings.PEER_REDIS_PUBLIC_URL = ""
    settings.CHANNEL_LAYERS = {
        **settings.CHANNEL_LAYERS,
        "peers": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": peer_redis.admin_url}], "prefix": "asgi"},
        },
    }
