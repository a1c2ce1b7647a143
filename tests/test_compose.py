"""compose.yaml stays valid and runs the same commands the README documents."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_describes_the_real_services():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "peer-redis", "rabbitmq", "chain", "web", "worker", "settler", "beat", "peer"} <= set(
        services
    )
    assert services["web"]["command"][:1] == ["daphne"] and "hub.asgi:application" in services["web"]["command"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "hub", "worker"]
    # Settlement has a worker of its own, one task at a time, on the queue hub.settings routes it to.
    settler = services["settler"]["command"]
    assert settler[:4] == ["celery", "-A", "hub", "worker"] and settler[settler.index("-Q") + 1] == "settlement"
    assert settler[settler.index("-c") + 1] == "1"
    assert services["worker"]["command"][services["worker"]["command"].index("-Q") + 1] == "celery"
    assert services["beat"]["command"][:4] == ["celery", "-A", "hub", "beat"]
    assert "anvil" in services["chain"]["entrypoint"]
    peer = services["peer"]
    assert "python -m peers join" in " ".join(peer["command"])
    assert "replicas" in peer["deploy"]
    assert peer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    env = services["web"]["environment"]
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PLATFORM_SIGNING_KEY"):
        assert name in env
    readme = (ROOT / "README.md").read_text()
    for command in ("make demo", "make test", "python -m peers join", "daphne", "celery -A hub worker"):
        assert command in readme


def production_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Production")
    return readme[start : readme.index("\n## ", start + 1)]


def test_readme_production_section_documents_every_setting():
    """Every variable settings.py reads and every variable compose.yaml sets is explained."""
    import re

    settings_py = (ROOT / "platform" / "hub" / "settings.py").read_text()
    read = set(re.findall(r'(?:os\.environ\.get|env_bool)\("([A-Z_]+)"', settings_py))
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "PEER_REDIS_URL", "CHAIN_PRIVATE_KEY"} <= read
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    platform_services = [
        s for name, s in compose["services"].items() if name not in ("postgres", "rabbitmq", "peer", "peer-redis")
    ]
    set_by_compose = {name for service in platform_services for name in service.get("environment") or {}}
    section = production_section()
    undocumented = sorted(name for name in read | set_by_compose - {"PYTHONPATH"} if f"`{name}`" not in section)
    assert undocumented == []
    readme = (ROOT / "README.md").read_text()
    assert [name for name in compose["services"]["peer"]["environment"] if f"`{name}`" not in readme] == []
    for step in (
        "manage.py migrate",
        "manage.py collectstatic",
        "daphne",
        "celery -A hub worker",
        "celery -A hub beat",
    ):
        assert step in section
    assert "Payouts" in section and "at first use" in section  # where the contracts come from and show


def test_peer_service_gets_only_its_own_environment():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert set(compose["services"]["peer"]["environment"]) == {"DFL_NODE_TOKEN", "DFL_DATA"}


def test_the_operator_key_lives_only_where_settlement_runs_and_the_chain_is_internal():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for secret in ("CHAIN_PRIVATE_KEY", "WALLET_ENCRYPTION_KEY"):
        holders = sorted(name for name, s in services.items() if secret in (s.get("environment") or {}))
        assert holders == ["settler"]
        assert ":?" in services["settler"]["environment"][secret]  # required: no default key
    assert "ports" not in services["chain"] and services["chain"]["networks"] == ["chain"]
    assert compose["networks"]["chain"]["internal"] is True
    assert "chain" in services["settler"]["networks"] and "networks" not in services["web"]
    assert "networks" not in services["worker"]


def test_the_peers_exchange_is_a_redis_of_its_own():
    """Peers reach peer-redis only: its default user is off, the platform its admin; the
    platform's own Redis is not the one peers are told about."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    command = services["peer-redis"]["command"]
    assert command[command.index("--user") + 1 : command.index("--user") + 3] == ["default", "off"]
    env = services["web"]["environment"]
    assert "@peer-redis:" in env["PEER_REDIS_URL"] and "redis:6379" not in env["PEER_REDIS_PUBLIC_URL"].replace(
        "peer-redis", ""
    )
    assert "ports" not in services["redis"]  # the platform's Redis is not published
