"""The machine fingerprint recorded in every report row, and the `machine_id` derived from it.

Its GPU fields describe the device the suite measures (torch's `cuda:0`, which every `cuda` case
runs on: under CUDA_VISIBLE_DEVICES or MIG not NVML's GPU 0), found in NVML by its UUID;
`gpu_count` is the number of CUDA devices torch sees. Reading them creates no CUDA context (device
properties only), so the process that runs the suite never shows on the GPU as another process.
"""

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
from typing import Any

import psutil
import torch

from bench_lib.measure import telemetry
from bench_lib.measure.precision import describe_float32, float32_settings

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


# torch's own float32 settings (see `precision.float32_settings`), which no run changes for good:
# machine ids include `float32_defaults` only where an environment differs from them (as with
# TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1), so that ids of ordinary machines stay what they were.
STOCK_FLOAT32 = "matmul highest, cuBLAS TF32 off, cuDNN TF32 on"


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
    gpu_uuid: str
    gpu_mig_mode: str
    float32_defaults: str
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
    keys: tuple[str, ...] = MACHINE_ID_FIELDS
    if fields.get("float32_defaults", STOCK_FLOAT32) not in ("", STOCK_FLOAT32):
        keys = (*keys, "float32_defaults")
    text = "|".join(f"{k}={fields.get(k, '')}" for k in keys)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def gpu_fields(cuda: Any = None, nvml: Any = None) -> dict[str, object]:
    """The fingerprint's GPU fields: torch's `cuda:0` as NVML describes it (found by UUID), and
    how many CUDA devices torch sees. Empty without CUDA; the NVML fields empty (never guessed)
    without NVML or when NVML does not know the device."""
    cuda = cuda if cuda is not None else torch.cuda
    fields: dict[str, object] = {"gpu_name": "", "gpu_count": 0, "gpu_driver": "", "gpu_memory_total_bytes": None,
                                 "gpu_uuid": "", "gpu_mig_mode": ""}  # fmt: skip
    try:
        if not cuda.is_available():
            return fields
        fields["gpu_count"] = int(cuda.device_count())
        uuid = str(cuda.get_device_properties(0).uuid)
    except (AttributeError, RuntimeError):
        return fields
    if nvml is None:
        nvml, _ = telemetry.load_nvml()
    if nvml is None:
        return fields
    location, _ = telemetry.locate_gpu(nvml, uuid)
    if location is None:
        return fields
    info = telemetry.gpu_info(nvml, location)
    return fields | {"gpu_name": info.name, "gpu_driver": info.driver, "gpu_uuid": info.uuid,
                     "gpu_memory_total_bytes": info.memory_total_bytes, "gpu_mig_mode": info.mig_mode}  # fmt: skip


def collect_environment(cpu_malloc: str = "default", nvml: Any = None, cuda: Any = None) -> Environment:
    """Read the fingerprint of this machine and process (see the module docstring for the GPU)."""
    fields: dict[str, object] = {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "memory_total_bytes": psutil.virtual_memory().total,
        "torch_threads": torch.get_num_threads(),
        **gpu_fields(cuda, nvml),
        "float32_defaults": describe_float32(float32_settings()),
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
