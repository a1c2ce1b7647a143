"""Validation of the hardware report a peer prints with `python -m peers hw`."""

import json
import math
from typing import Any

from . import safejson

MAX_CORES = 1_000_000  # far above any machine, far below the database column's limit


class HardwareError(ValueError):
    pass


def _text(value, limit: int) -> str:
    text = str(value)[:limit]
    if "\x00" in text:
        raise HardwareError("text fields must not contain NUL characters")
    return text


def _number(name: str, value) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise HardwareError(f"{name} must be a finite number")
    return number


def parse_hardware(raw) -> dict:
    """Accept a JSON string or dict; return a cleaned report or raise HardwareError."""
    if isinstance(raw, str):
        try:
            raw = safejson.loads(raw)
        except json.JSONDecodeError as exc:
            raise HardwareError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except (ValueError, RecursionError) as exc:
            raise HardwareError(f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise HardwareError("expected a JSON object as printed by `python -m peers hw`")
    report: dict[str, Any] = {}
    try:
        report["cpu"] = _text(raw.get("cpu", ""), 200)
        report["cores"] = int(raw["cores"])
        report["ram_gb"] = _number("ram_gb", raw["ram_gb"])
        gpus = raw.get("gpus", [])
        if not isinstance(gpus, list):
            raise HardwareError("'gpus' must be a list")
        report["gpus"] = [
            {
                "name": _text(g.get("name", ""), 200),
                "vram_gb": _number("vram_gb", g.get("vram_gb", 0)),
                "cuda_capability": _text(g.get("cuda_capability", ""), 16),
            }
            for g in gpus
            if isinstance(g, dict)
        ]
        report["cuda"] = bool(raw.get("cuda", bool(report["gpus"])))
        for key in ("torch", "os"):
            if key in raw:
                report[key] = _text(raw[key], 200)
    except KeyError as exc:
        raise HardwareError(f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, HardwareError):
            raise
        raise HardwareError(f"bad value: {exc}") from None
    if not 1 <= report["cores"] <= MAX_CORES or report["ram_gb"] <= 0:
        raise HardwareError(f"cores must be between 1 and {MAX_CORES} and ram_gb > 0")
    if any(g["vram_gb"] < 0 for g in report["gpus"]):
        raise HardwareError("vram_gb must not be negative")
    return report
