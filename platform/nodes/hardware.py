"""Validation of the hardware report a peer prints with `python -m peers hw`."""
import json


class HardwareError(ValueError):
    pass


def parse_hardware(raw) -> dict:
    """Accept a JSON string or dict; return a cleaned report or raise HardwareError."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HardwareError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise HardwareError("expected a JSON object as printed by `python -m peers hw`")
    report = {}
    try:
        report["cpu"] = str(raw.get("cpu", ""))[:200]
        report["cores"] = int(raw["cores"])
        report["ram_gb"] = float(raw["ram_gb"])
        gpus = raw.get("gpus", [])
        if not isinstance(gpus, list):
            raise HardwareError("'gpus' must be a list")
        report["gpus"] = [
            {
                "name": str(g.get("name", ""))[:200],
                "vram_gb": float(g.get("vram_gb", 0)),
                "cuda_capability": str(g.get("cuda_capability", ""))[:16],
            }
            for g in gpus
            if isinstance(g, dict)
        ]
        report["cuda"] = bool(raw.get("cuda", bool(report["gpus"])))
        for key in ("torch", "os"):
            if key in raw:
                report[key] = str(raw[key])[:200]
    except KeyError as exc:
        raise HardwareError(f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, HardwareError):
            raise
        raise HardwareError(f"bad value: {exc}") from None
    if report["cores"] < 1 or report["ram_gb"] <= 0:
        raise HardwareError("cores must be >= 1 and ram_gb > 0")
    return report
