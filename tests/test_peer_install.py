"""The `peer` extra alone runs a peer: a participant installs no Django, Channels, Celery or chain tooling.

The slow test builds a fresh virtualenv (no --system-site-packages: that would hide a missing
dependency), installs a copy of the project with ``pip install -c constraints.txt ".[peer]"`` (a real
install with dependencies, from pip's usual indexes, wheel directory and cache) and runs the peer's
command line from a directory outside the checkout. The venv (~1 GB with torch) is removed at the
end rather than left among pytest's retained temporary directories. Deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLATFORM_ONLY = ("django", "web3", "celery", "channels")


def _clean_env() -> dict[str, str]:
    """The environment minus anything that would let the venv see the checkout or the main venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "PYTHONSTARTUP")
    }
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(cmd, cwd, env, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def peer_venv(tmp_path):
    python311 = shutil.which("python3.11")
    if python311 is None:
        pytest.skip("python3.11 not on PATH")
    src = tmp_path / "src"
    src.mkdir()
    # What the Dockerfile's install layer copies: enough to build the wheel, nothing of platform/.
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "peers", src / "peers", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    env = _clean_env()
    try:
        made = _run([python311, "-m", "venv", str(venv)], cwd=tmp_path, env=env, timeout=300)
        assert made.returncode == 0, made.stderr
        py = venv / "bin" / "python"
        # --no-compile: byte-compiling torch would double the time and the disk written, and prove nothing.
        pip = _run(
            [str(py), "-m", "pip", "install", "--quiet", "--no-compile", "-c", "constraints.txt", ".[peer]"],
            cwd=src,
            env=env,
        )
        assert pip.returncode == 0, f"pip install .[peer] failed:\n{pip.stdout}\n{pip.stderr}"
        yield py
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_peer_extra_runs_peers_without_the_platform_stack(peer_venv, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # not the checkout: `peers` must come from site-packages
    elsewhere.mkdir()
    env = _clean_env()

    where = _run([str(peer_venv), "-c", "import peers; print(peers.__file__)"], cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(peer_venv.parent.parent), where.stdout

    helped = _run([str(peer_venv), "-m", "peers", "join", "--help"], cwd=elsewhere, env=env, timeout=300)
    assert helped.returncode == 0, helped.stderr
    assert "--server" in helped.stdout

    hw = _run([str(peer_venv), "-m", "peers", "hw"], cwd=elsewhere, env=env, timeout=300)
    assert hw.returncode == 0, hw.stderr
    assert isinstance(json.loads(hw.stdout), dict)

    for module in PLATFORM_ONLY:
        imported = _run([str(peer_venv), "-c", f"import {module}"], cwd=elsewhere, env=env, timeout=120)
        assert imported.returncode != 0, f"{module} is importable in a peer-only install"
        assert "ModuleNotFoundError" in imported.stderr, imported.stderr


_LOADED_AFTER_JOIN_HELP = """
import json, runpy, sys
sys.argv = ["peers", "join", "--help"]
try:
    runpy.run_module("peers", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    assert not exc.code, exc.code
print("\\0" + json.dumps(sorted(sys.modules)))
"""


def test_peer_cli_imports_nothing_of_the_platform():
    """`python -m peers join --help` loads no platform module even where the platform is importable
    (the development venv, with platform/ on the path)."""
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), str(ROOT)])
    done = _run([sys.executable, "-c", _LOADED_AFTER_JOIN_HELP], cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.rsplit("\0", 1)[1])
    platform_apps = [p.name for p in (ROOT / "platform").iterdir() if (p / "__init__.py").exists()]
    forbidden = (
        set(PLATFORM_ONLY)
        | {"channels_redis", "daphne", "eth_tester", "eth", "psycopg", "plotly", "whitenoise", "dj_database_url"}
        | set(platform_apps)
    )
    leaked = sorted(m for m in loaded if m.split(".")[0] in forbidden)
    assert not leaked, f"`python -m peers join --help` imported platform-side modules: {leaked}"
