"""compose.yaml stays valid and runs the same commands the README documents."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_describes_the_real_services():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "chain", "web", "worker", "beat", "peer"} <= set(services)
    assert services["web"]["command"][:1] == ["daphne"] and "hub.asgi:application" in services["web"]["command"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "hub", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "hub", "beat"]
    assert "anvil" in services["chain"]["entrypoint"]
    peer = services["peer"]
    assert "python -m peers join" in " ".join(peer["command"])
    assert "replicas" in peer["deploy"]
    assert peer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    env = services["web"]["environment"]
    for name in ("DATABASE_URL", "REDIS_URL", "CHAIN_RPC_URL", "SECRET_KEY"):
        assert name in env
    readme = (ROOT / "README.md").read_text()
    for command in ("make demo", "make test", "python -m peers join", "daphne", "celery -A hub worker"):
        assert command in readme
