"""Validation of the stats a peer's heartbeat carries (`peers.stats.collect`). A peer may lie or
send junk: the numbers are only ever displayed, so they are checked to be finite, of the right
type and within bounds, strings are cut short, and anything else is refused (400)."""

import math

MAX_STATS_FIELDS = 32
PEER_STATUSES = ("training", "validating", "idle")

# name: (lowest, highest) for the numbers; None for optional integers (ids) below.
NUMBERS = {
    "steps_per_s": (0.0, 1e7),
    "cpu_percent": (0.0, 100.0),
    "ram_used_gb": (0.0, 1e6),
    "ram_percent": (0.0, 100.0),
    "gpu_util": (0.0, 100.0),
    "gpu_mem_used_gb": (0.0, 1e5),
    "gpu_mem_total_gb": (0.0, 1e5),
    "bytes_sent": (0.0, 1e18),
    "bytes_received": (0.0, 1e18),
}
IDS = ("job", "round")
TEXTS = {"status": 16, "last_error": 300}


class StatsError(ValueError):
    pass


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StatsError(f"{name} must be a number")
    number = float(value)
    low, high = NUMBERS[name]
    if not math.isfinite(number) or not low <= number <= high:
        raise StatsError(f"{name} must be a finite number between {low:g} and {high:g}")
    return number


def parse_stats(raw) -> dict:
    """A cleaned copy of a heartbeat's `stats` object, or StatsError. Absent fields stay absent
    (a peer without a GPU, or without psutil, says less)."""
    if not isinstance(raw, dict):
        raise StatsError("stats must be a JSON object")
    if len(raw) > MAX_STATS_FIELDS:
        raise StatsError("too many stats fields")
    unknown = set(raw) - set(NUMBERS) - set(IDS) - set(TEXTS)
    if unknown:
        raise StatsError(f"unknown stats fields: {', '.join(sorted(str(k)[:40] for k in unknown)[:5])}")
    clean: dict = {}
    for name, value in raw.items():
        if value is None:
            continue
        if name in NUMBERS:
            clean[name] = _number(name, value)
        elif name in IDS:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise StatsError(f"{name} must be a non-negative integer")
            clean[name] = value
        else:
            if not isinstance(value, str):
                raise StatsError(f"{name} must be a string")
            text = value[: TEXTS[name]]
            if "\x00" in text:
                raise StatsError(f"{name} must not contain NUL characters")
            clean[name] = text
    if "status" in clean and clean["status"] not in PEER_STATUSES:
        raise StatsError(f"status must be one of {', '.join(PEER_STATUSES)}")
    return clean
