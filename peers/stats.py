"""What a peer tells its operator's console with each heartbeat: what it does (training, idle),
its job and round, steps per second, CPU, RAM and GPU use, bytes moved and its last error.

psutil (in the `peer` extra) measures CPU and RAM; without it /proc and the load average stand
in. nvidia-ml-py is used only where it is installed and a GPU answers (imported lazily, once)."""

from __future__ import annotations

import os
from dataclasses import dataclass

GB = 1024**3
ERROR_CHARS = 300


@dataclass
class Activity:
    """The worker's running account of itself (peers.worker.Peer.activity)."""

    status: str = "idle"
    job: int | None = None
    round: int | None = None
    steps_per_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_error: str = ""

    def begin(self, job: int, round_number: int, role: str) -> None:
        self.status = "validating" if role == "validate" else "training"
        self.job, self.round = job, round_number

    def trained(self, steps: int, seconds: float) -> None:
        if steps and seconds > 0:
            self.steps_per_s = steps / seconds

    def moved(self, sent: int, received: int) -> None:
        self.bytes_sent += sent
        self.bytes_received += received

    def failed(self, error: object) -> None:
        self.last_error = str(error)[:ERROR_CHARS]

    def idle(self) -> None:
        self.status = "idle"


def _ram() -> dict:
    try:
        import psutil

        memory = psutil.virtual_memory()
        return {"ram_used_gb": (memory.total - memory.available) / GB, "ram_percent": float(memory.percent)}
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        total, available = info["MemTotal"], info["MemAvailable"]
        return {"ram_used_gb": (total - available) / GB, "ram_percent": 100.0 * (total - available) / total}
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return {}


def _cpu() -> dict:
    try:
        import psutil

        return {"cpu_percent": float(psutil.cpu_percent(interval=None))}  # since the previous call
    except ImportError:
        pass
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return {}
    return {"cpu_percent": min(100.0, 100.0 * load)}


_nvml: object = None  # None: not tried yet; False: no GPU or no nvidia-ml-py


def _gpu() -> dict:
    global _nvml
    if _nvml is None:
        try:
            import pynvml  # nvidia-ml-py, optional

            pynvml.nvmlInit()
            _nvml = pynvml
        except Exception:  # not installed, no driver, no GPU
            _nvml = False
    if not _nvml:
        return {}
    nvml = _nvml
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(0)  # type: ignore[attr-defined]
        util = nvml.nvmlDeviceGetUtilizationRates(handle)  # type: ignore[attr-defined]
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)  # type: ignore[attr-defined]
    except Exception:
        return {}
    return {
        "gpu_util": float(util.gpu),
        "gpu_mem_used_gb": memory.used / GB,
        "gpu_mem_total_gb": memory.total / GB,
    }


def collect(activity: Activity | None = None) -> dict:
    """The heartbeat's `stats` object (the platform checks it: nodes.stats.parse_stats)."""
    stats: dict = {**_cpu(), **_ram(), **_gpu()}
    if activity is not None:
        stats.update(
            status=activity.status,
            steps_per_s=activity.steps_per_s,
            bytes_sent=activity.bytes_sent,
            bytes_received=activity.bytes_received,
        )
        if activity.job is not None:
            stats.update(job=activity.job, round=activity.round)
        if activity.last_error:
            stats["last_error"] = activity.last_error
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()}
