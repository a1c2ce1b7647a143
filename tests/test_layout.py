"""Source layout: `platform/` is a source root that never shadows the stdlib `platform` module,
peers never pull in Django, the control plane never pulls in torch, and the wire protocol
depends only on the standard library and msgpack."""
import ast
import json
import os
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


def test_peers_never_load_django():
    out = run_python(
        "import json, sys\n"
        "import peers, peers.worker, peers.protocol, peers.transport.redis, peers.__main__\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))))"
    )
    assert out == [], f"peers imported Django modules: {out[:10]}"


def test_control_plane_never_loads_torch():
    modules = []
    for app in ("accounts", "nodes", "jobs", "ledger", "live", "hub"):
        for name in ("models", "views", "urls", "consumers", "tasks", "orchestration", "api", "api_urls",
                     "forms", "routing", "broadcast", "snapshot", "services", "chain", "admin", "hardware"):
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
