"""Dispatcher: ``python -m bench NAME [ARGS...]`` imports ``bench.NAME`` and calls ``main(ARGS)``."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path


def available() -> list[str]:
    here = str(Path(__file__).resolve().parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m bench NAME [--quick] [--device cpu|cuda]\nbenchmarks: {', '.join(names) or 'none'}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(names) or 'none'}", file=sys.stderr)
        return 2
    # Run the peers' code as `python -m peers` runs it: idle OpenMP threads sleep instead of
    # spinning (set before torch is imported). With spinning threads a sum over a model after an
    # idle moment took up to 6 ms instead of 0.1 ms while another process used the other core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module = importlib.import_module(f"bench.{name}")
    if not callable(getattr(module, "main", None)):
        print(f"bench.{name} has no main(argv)", file=sys.stderr)
        return 2
    rc = module.main(rest)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
