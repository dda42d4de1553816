"""Device choices for the Technique panel: automatic, CPU and each NVIDIA GPU found.

Qt-free and torch-free: GPUs are listed with ``nvidia-smi`` (short timeout; absent -> none),
so the module never imports torch in Slicer's process. The engine validates the choice
(a ``resource`` error with a hint when the GPU is missing or the torch build lacks CUDA).
The panel receives a ``DevicesProtocol`` (``LocalDevices`` in Slicer, a fake in tests).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memoryMiB: int = 0


def parseNvidiaSmi(text: str) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0].isdigit():
            continue
        memory = parts[2] if len(parts) > 2 else ""
        digits = "".join(ch for ch in memory if ch.isdigit())
        gpus.append(GpuInfo(int(parts[0]), parts[1], int(digits) if digits else 0))
    return gpus


def listGpus(timeout: float = 5.0) -> list[GpuInfo]:
    executable = shutil.which("nvidia-smi")
    if not executable:
        return []
    try:
        result = subprocess.run([executable, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return parseNvidiaSmi(result.stdout) if result.returncode == 0 else []


def deviceChoices(gpus: list[GpuInfo]) -> list[tuple[str, str]]:
    """(label, job device value) pairs, 'auto' first."""
    choices = [("Automatic (first GPU if present, else CPU)", "auto"), ("CPU", "cpu")]
    for gpu in gpus:
        memory = f", {gpu.memoryMiB / 1024:.0f} GiB" if gpu.memoryMiB else ""
        choices.append((f"GPU {gpu.index}: {gpu.name}{memory}", f"cuda:{gpu.index}"))
    return choices


class DevicesProtocol(Protocol):
    """What the panel needs to fill its device list (a fake lists made-up GPUs in widget tests)."""

    def choices(self) -> list[tuple[str, str]]: ...


class LocalDevices:
    """The devices of this machine (the ``DevicesProtocol`` the module uses)."""

    def choices(self) -> list[tuple[str, str]]:
        return deviceChoices(listGpus())
