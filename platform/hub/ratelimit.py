"""Fixed-window rate limits counted in the shared cache (Redis in production, so every server
process counts together). Limits live in settings as "N/s", "N/m" or "N/h", so tests and
benchmarks can raise them."""

import time
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse

PERIODS = {"s": 1, "m": 60, "h": 3600}


def parse_limit(limit: str) -> tuple[int, int]:
    """ "10/m" -> (10, 60)."""
    count, _, period = limit.partition("/")
    if not count.isdigit() or period not in PERIODS:
        raise ValueError(f"rate limit {limit!r} is not N/s, N/m or N/h")
    return int(count), PERIODS[period]


def allow(bucket: str, limit: str) -> bool:
    """Count one hit in ``bucket``; False once the limit for the current window is used up."""
    count, period = parse_limit(limit)
    key = f"ratelimit:{bucket}:{int(time.time() // period)}"
    cache.add(key, 0, timeout=period + 1)
    return cache.incr(key) <= count


def client_address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def limited(setting: str, bucket: Callable[[HttpRequest], str], methods=("POST",), json: bool = False):
    """Refuse with 429 a request over ``settings.<setting>`` for its ``bucket``."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method in methods and not allow(f"{setting}:{bucket(request)}", getattr(settings, setting)):
                message = "too many requests: slow down and try again in a minute"
                if json:
                    return JsonResponse({"error": message}, status=429)
                return HttpResponse(message, status=429, content_type="text/plain")
            return view(request, *args, **kwargs)

        return wrapper

    return decorate
