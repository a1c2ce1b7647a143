#!/usr/bin/env python
"""Django's command-line utility. platform/ is a source root (never a package)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> None:
    sys.path.insert(0, str(ROOT / "platform"))
    sys.path.insert(1, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hub.settings")
    if sys.argv[1:2] == ["demo"]:
        os.environ.setdefault("DFL_EMBEDDED", "1")  # the demo is the embedded stack by definition
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
