"""Describe the local machine: CPU, memory, GPUs, torch build."""

from __future__ import annotations

import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)  # kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        return 0.0


def detect_hardware() -> dict:
    """Return a JSON-serialisable summary of this machine's compute resources."""
    import torch  # lazy: keeps `import peers.hw` cheap

    gpus = []
    cuda = bool(torch.cuda.is_available())
    if cuda:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "name": props.name,
                    "vram_gb": round(props.total_memory / 1024**3, 1),
                    "cuda_capability": f"{props.major}.{props.minor}",
                }
            )
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "ram_gb": _ram_gb(),
        "gpus": gpus,
        "cuda": cuda,
        "torch": torch.__version__,
        "os": platform.platform(),
    }
