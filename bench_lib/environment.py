"""The machine fingerprint recorded in every report row, and the `machine_id` derived from it."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from bench_lib import telemetry

# The fields that identify the hardware and software a latency was measured on. Run settings
# (threads, allocator) are recorded beside them; the gate compares those separately.
MACHINE_ID_FIELDS = (
    "cpu_model",
    "cpu_count",
    "memory_total_bytes",
    "gpu_name",
    "gpu_count",
    "cuda_version",
    "torch_version",
    "python_version",
)


@dataclass(frozen=True)
class Environment:
    machine_id: str
    hostname: str
    cpu_model: str
    cpu_count: int
    memory_total_bytes: int
    torch_threads: int
    gpu_name: str
    gpu_count: int
    gpu_driver: str
    gpu_memory_total_bytes: int | None
    cuda_version: str
    cudnn_version: str
    torch_version: str
    python_version: str
    platform: str
    git_commit: str
    cpu_malloc: str

    def columns(self) -> dict[str, object]:
        return asdict(self)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(path: Path | None = None) -> str:
    """HEAD of the checkout holding this package, with "-dirty" for uncommitted changes; "" if none."""
    cwd = path or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def cudnn_version() -> str:
    """cuDNN's version as torch reports it (e.g. 91002), "" where torch has no cuDNN."""
    try:
        version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:  # a cuDNN that fails to load
        version = None
    return str(version) if version else ""


def machine_id(fields: dict[str, object]) -> str:
    """A stable 12-hex-digit hash of the hardware and software fingerprint (not the hostname)."""
    text = "|".join(f"{k}={fields.get(k, '')}" for k in MACHINE_ID_FIELDS)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def collect_environment(cpu_malloc: str = "default", nvml: object | None = None) -> Environment:
    """Read the fingerprint of this machine and process. GPU fields come from NVML and are empty
    (never guessed) without a GPU or NVML."""
    gpus = telemetry.gpu_inventory(nvml)
    fields: dict[str, object] = {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "memory_total_bytes": psutil.virtual_memory().total,
        "torch_threads": torch.get_num_threads(),
        "gpu_name": gpus[0].name if gpus else "",
        "gpu_count": len(gpus),
        "gpu_driver": gpus[0].driver if gpus else "",
        "gpu_memory_total_bytes": gpus[0].memory_total_bytes if gpus else None,
        "cuda_version": torch.version.cuda or "",
        "cudnn_version": cudnn_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "cpu_malloc": cpu_malloc,
    }
    return Environment(machine_id=machine_id(fields), **fields)  # type: ignore[arg-type]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block (None leaves them), restoring them after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
