"""Celery app: orchestration tasks (cohorts, round deadlines, settlement)."""

import os
import sys
from pathlib import Path

_platform_dir = str(Path(__file__).resolve().parents[1])
if _platform_dir not in sys.path:
    sys.path.insert(0, _platform_dir)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hub.settings")

from celery import Celery  # noqa: E402

app = Celery("hub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
