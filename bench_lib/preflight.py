"""What `make gpu-check` needs from the machine's own Python, checked before anything runs.

Standard library only, and runnable as a script (`python bench_lib/preflight.py --device cuda`),
so that a missing or too old package is one precise line rather than an import error halfway
through a run. Each requirement is one `Finding`; a missing required one (or torch, numpy or
pandas older than its lower bound) stops the run (exit 2); a missing optional one, another one
older than its lower bound, or one newer than the tested upper bound, is a warning. Version bounds come from `pyproject.toml`, the one place they are written.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIN_PYTHON = (3, 11)
# packages a gpu-check can do without, and what their absence costs
OPTIONAL = {
    "nvidia-ml-py": "no GPU telemetry or energy, so the energy check fails",
    "matplotlib": "the HTML report has no plots",
    "tabulate": "no Markdown report",
    "scipy": "not used by gpu-check (the gate's significance test needs it)",
    "sqlalchemy": "not used by gpu-check (the results history needs it)",
    "psycopg": "not used by gpu-check (a PostgreSQL results history needs it)",
}


# packages whose lower bound is a hard one: the suite's code uses what older versions lack
CORE = ("torch", "numpy", "pandas")


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str
    required: bool = True

    def line(self) -> str:
        status = "ok" if self.ok else ("MISSING" if self.required else "warning")
        return f"preflight: {status:8s}{self.name}: {self.detail}"


def _version_tuple(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: "2.11.0+cu130" -> (2, 11, 0)."""
    parts = []
    for piece in re.split(r"[.+-]", text):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.group() != piece:
            break
    return tuple(parts)


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[tuple[str, str | None, str | None]]:
    """(distribution, lower bound or None, exclusive upper bound or None) of each dependency."""
    import tomllib  # Python >= 3.11, checked before this is called

    out = []
    for spec in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", spec.strip())
        if not name:
            continue
        low = re.search(r">=\s*([0-9][0-9.]*)", spec)
        high = re.search(r"<\s*([0-9][0-9.]*)", spec)
        out.append((name.group(), low.group(1) if low else None, high.group(1) if high else None))
    return out


def package_finding(name: str, low: str | None, high: str | None, installed: str | None) -> Finding:
    bounds = (
        " and ".join(b for b in (f">= {low}" if low else "", f"< {high}" if high else "") if b)
        or "any version"
    )
    required = name not in OPTIONAL
    why = "" if required else f" ({OPTIONAL[name]})"
    if installed is None:
        return Finding(name, False, f"not installed, needs {bounds}{why}", required)
    version = _version_tuple(installed)
    if low and version < _version_tuple(low):
        if name in CORE or not required:
            return Finding(name, False, f"{installed} installed, needs {bounds}{why}", required)
        # older than tested: the one GPU run is not given up for a bound that may not matter;
        # a step that then fails says so in its own line
        return Finding(name, False, f"{installed} installed, older than tested ({bounds}): going on", False)
    if high and version >= _version_tuple(high):  # newer than the suite was tested with: may well work
        return Finding(name, False, f"{installed} installed, newer than tested ({bounds}): going on", False)
    return Finding(name, True, f"{installed} ({bounds})", required)


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvml_driver() -> Finding:
    """The NVIDIA driver version, by NVML (optional: without it no telemetry or energy)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
    except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, DriverNotLoaded
        return Finding("NVIDIA driver (NVML)", False, f"not readable ({type(exc).__name__}: {exc}): "
                       "no GPU telemetry or energy, so the energy check fails", required=False)  # fmt: skip
    return Finding(
        "NVIDIA driver (NVML)", True, driver.decode() if isinstance(driver, bytes) else str(driver)
    )


def compile_problem(kind: str) -> str | None:
    """Why `torch.compile` (inductor) cannot build kernels for this device kind here, or None.

    On CUDA inductor generates Triton kernels, and Triton builds a small C launcher with the
    system's C compiler against Python's headers; on the CPU inductor compiles C++.
    """
    if kind == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs Triton, which is not installed"
        if not (os.environ.get("CC") or any(shutil.which(c) for c in ("cc", "gcc", "clang"))):
            return (
                "torch.compile on CUDA needs a C compiler for Triton (no cc, gcc or clang on PATH; or set CC)"
            )
        include = sysconfig.get_paths().get("include", "")
        if not Path(include, "Python.h").is_file():
            return f"torch.compile on CUDA needs Python's C headers for Triton (no Python.h in {include})"
    elif not (os.environ.get("CXX") or any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
        return "torch.compile on the CPU needs a C++ compiler (no c++, g++ or clang++ on PATH; or set CXX)"
    return None


def preflight(device: str, version: tuple[int, ...] | None = None) -> list[Finding]:
    """Every requirement of a gpu-check on `device` ("cuda" or "cpu"), in order."""
    version = tuple(sys.version_info[:3]) if version is None else version
    python = ".".join(map(str, version))
    if version < MIN_PYTHON:
        return [Finding("python", False, f"{python} ({sys.executable}), needs >= 3.11")]
    found = [Finding("python", True, f"{python} ({sys.executable})")]
    found += [package_finding(n, low, high, installed_version(n)) for n, low, high in requirements()]
    if device == "cuda":
        found.append(nvml_driver())
        problem = compile_problem("cuda")
        found.append(Finding("torch.compile toolchain", problem is None, problem or "Triton, C compiler, Python.h",
                             required=False))  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench_lib/preflight.py", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args, _ = p.parse_known_args(argv)  # gpu-check's other options are its own
    findings = preflight(args.device)
    for f in findings:
        print(f.line(), file=sys.stderr if f.required and not f.ok else sys.stdout)
    return 2 if any(f.required and not f.ok for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
