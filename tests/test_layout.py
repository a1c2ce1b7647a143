"""Source layout: `platform/` is a source root that never shadows the stdlib `platform` module,
peers never pull in Django, the control plane never pulls in torch, the wire protocol
depends only on the standard library and msgpack, and the import contracts in `.importlinter`
are kept."""

import ast
import configparser
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env_overrides: str) -> dict:
    """Run `code` with the venv's python from the repo root; it prints one JSON line at the end."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    env.update(env_overrides)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_platform_dir_is_not_a_package():
    assert not (ROOT / "platform" / "__init__.py").exists(), "platform/ must stay a source root, not a package"


def test_stdlib_platform_is_not_shadowed_from_repo_root():
    out = run_python(
        "import json, sys, sysconfig, platform\n"
        "print(json.dumps({'system': platform.system(), 'file': platform.__file__,\n"
        "                  'stdlib': sysconfig.get_paths()['stdlib']}))"
    )
    assert out["system"] in {"Linux", "Darwin", "Windows"}
    assert Path(out["file"]).resolve().is_relative_to(Path(out["stdlib"]).resolve()), out
    assert not Path(out["file"]).resolve().is_relative_to(ROOT / "platform")


def test_stdlib_platform_also_wins_with_platform_on_the_path():
    """Even with the control plane's source root on sys.path (as daphne and celery run), `platform`
    is the stdlib module: platform/ has no __init__.py to turn it into a namespace package."""
    out = run_python(
        "import json, platform\nprint(json.dumps({'system': platform.system(), 'file': platform.__file__}))",
        PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
    )
    assert out["system"]
    assert not Path(out["file"]).resolve().is_relative_to(ROOT / "platform")


PLATFORM_APPS = ("hub", "accounts", "nodes", "jobs", "ledger", "live", "modelstore", "datasets")


def peers_modules_on_disk() -> set[str]:
    """Every module of the peers package, named from its files."""
    names = set()
    for path in (ROOT / "peers").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_peers_never_load_django():
    """Every module under peers/ (walked with pkgutil, so a new one is covered without a change
    here) imports without Django, Channels, Celery, web3 or a platform app, even with the platform's
    source root on the path where they would be importable."""
    out = run_python(
        "import importlib, json, pkgutil, sys\n"
        "import peers, peers.worker, peers.protocol, peers.transport.redis, peers.__main__\n"
        "imported = ['peers']\n"
        "for info in pkgutil.walk_packages(peers.__path__, 'peers.'):\n"
        "    importlib.import_module(info.name)\n"
        "    imported.append(info.name)\n"
        f"banned = ('django', 'channels', 'celery', 'web3') + {PLATFORM_APPS!r}\n"
        "print(json.dumps({'django': sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')),\n"
        "                  'banned': sorted(m for m in sys.modules if m.split('.')[0] in banned),\n"
        "                  'imported': imported}))",
        PYTHONPATH=os.pathsep.join(["platform", "."]),
    )
    assert out["django"] == [], f"peers imported Django modules: {out['django'][:10]}"
    assert out["banned"] == [], f"peers imported platform-side modules: {out['banned'][:10]}"
    imported = set(out["imported"])
    assert imported == peers_modules_on_disk(), sorted(imported ^ peers_modules_on_disk())
    for name in (
        "peers.simulate",
        "peers.client",
        "peers.images",
        "peers.plans",
        "peers.topology",
        "peers.hw",
        "peers.wire.exchange",
        "peers.transport.redis",
        "peers.rules.krum",
    ):
        assert name in imported
    for package in ("peers.wire.", "peers.transport.", "peers.rules."):
        assert sum(m.startswith(package) for m in imported) >= 3, package


def test_control_plane_never_loads_torch():
    modules = []
    for app in ("accounts", "nodes", "jobs", "ledger", "live", "modelstore", "datasets", "hub"):
        for name in (
            "models",
            "views",
            "urls",
            "consumers",
            "tasks",
            "orchestration",
            "api",
            "api_urls",
            "forms",
            "routing",
            "broadcast",
            "snapshot",
            "services",
            "chain",
            "admin",
            "hardware",
        ):
            if (ROOT / "platform" / app / f"{name}.py").exists():
                modules.append(f"{app}.{name}")
    modules += ["hub.asgi", "hub.celery"]
    # the ones the layout promises must be among them
    for required in ("jobs.orchestration", "live.consumers", "jobs.tasks", "ledger.tasks", "hub.urls", "nodes.views"):
        assert required in modules
    code = (
        "import importlib, json, sys, django\n"
        "django.setup()\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps({'torch': sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:10],\n"
        "                  'loaded': [m for m in %r if m in sys.modules]}))" % (modules,)
    )
    out = run_python(
        code,
        DJANGO_SETTINGS_MODULE="hub.settings",
        PYTHONPATH=os.pathsep.join(["platform", "."]),
        SECRET_KEY="layout-test",
        PLATFORM_SIGNING_KEY="11" * 32,
    )
    assert out["loaded"] == modules
    assert out["torch"] == [], f"the control plane imported torch: {out['torch']}"


def test_protocol_imports_only_stdlib_and_msgpack():
    tree = ast.parse((ROOT / "peers" / "protocol.py").read_text())
    top_level = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "peers/protocol.py must not use relative imports"
            top_level.add(node.module.split(".")[0])
    assert "msgpack" in top_level
    allowed = set(sys.stdlib_module_names) | {"msgpack"}
    assert top_level <= allowed, f"non-stdlib imports in peers/protocol.py: {sorted(top_level - allowed)}"


LINT_ENV_DROP = ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")


def lint_imports_command() -> list[str]:
    script = Path(sys.executable).with_name("lint-imports")
    found = str(script) if script.exists() else shutil.which("lint-imports")
    assert found, "lint-imports not found: install import-linter (the `test` extra)"
    return [found, "--no-cache"]  # no .import_linter_cache left in the tree


def test_import_contracts_are_kept():
    """`.importlinter`: the platform imports no torch and only the shared peers modules, peers
    import nothing of the platform, peers.protocol stands alone, no import cycles (jobs.tasks ->
    jobs.orchestration -> jobs.queue and peers.data -> peers.images one way)."""
    env = {k: v for k, v in os.environ.items() if k not in LINT_ENV_DROP}
    env["PYTHONPATH"] = os.pathsep.join(["platform", "."])
    proc = subprocess.run(lint_imports_command(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"lint-imports failed ({proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    )
    assert "0 broken" in proc.stdout, proc.stdout[-8000:]


# peers.wire.signing: the platform signs round plans with the same Ed25519 code peers verify with
# peers.acl: the platform grants a node's exchange user exactly the rights the transport uses
# peers.evidence: the platform recomputes the validator's scores from their evidence (stdlib only)
SHARED_WITH_PLATFORM = {
    "peers.acl",
    "peers.evidence",
    "peers.protocol",
    "peers.topology",
    "peers.spectral",
    "peers.plans",
    "peers.wire.signing",
}


def test_platform_contract_names_every_peers_module():
    """The platform contract forbids peers modules by name: a new one must be listed there (or be
    made one of the shared modules on purpose, with docs/architecture.md saying so)."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    contract = config["importlinter:contract:platform-without-peer-runtime"]
    assert set(contract["source_modules"].split()) == set(PLATFORM_APPS)
    forbidden = set(contract["forbidden_modules"].split())
    assert "torch" in forbidden
    children = {f"peers.{info.name}" for info in pkgutil.iter_modules([str(ROOT / "peers")]) if info.name != "wire"}
    children |= {f"peers.wire.{info.name}" for info in pkgutil.iter_modules([str(ROOT / "peers" / "wire")])}
    assert children >= SHARED_WITH_PLATFORM
    assert not SHARED_WITH_PLATFORM & forbidden
    unlisted = children - SHARED_WITH_PLATFORM - forbidden
    assert not unlisted, f"add these to the platform contract's forbidden_modules in .importlinter: {sorted(unlisted)}"
    # the embedded demo is the only exemption
    assert contract["ignore_imports"].split() == ["jobs.management.commands.demo", "->", "peers.**"]


def test_orchestration_queues_tasks_it_does_not_import():
    """jobs.orchestration queues Celery tasks through jobs.queue by name, without importing
    jobs.tasks or ledger.tasks (which import it); each name resolves to the registered task."""
    out = run_python(
        "import json, sys, django\n"
        "django.setup()\n"
        "from jobs import orchestration, queue\n"
        "before = sorted(m for m in ('jobs.tasks', 'ledger.tasks') if m in sys.modules)\n"
        "names = [queue.START_JOB, queue.CLOSE_ROUND, queue.SETTLE_JOB]\n"
        "print(json.dumps({'before': before, 'names': names, 'resolved': [queue.task(n).name for n in names]}))",
        DJANGO_SETTINGS_MODULE="hub.settings",
        PYTHONPATH=os.pathsep.join(["platform", "."]),
        SECRET_KEY="layout-test",
        PLATFORM_SIGNING_KEY="11" * 32,
    )
    assert out["before"] == [], f"importing orchestration loaded {out['before']}"
    assert (
        out["resolved"]
        == out["names"]
        == ["jobs.tasks.start_job", "jobs.tasks.close_round_task", "ledger.tasks.settle_job"]
    )
