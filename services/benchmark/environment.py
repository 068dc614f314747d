"""What a run ran on: the benchmark host's CPU and the versions of the software that shapes results."""

from __future__ import annotations

import os
import platform
from functools import cache
from importlib import metadata
from pathlib import Path

# Packages whose versions change measured numbers (kernels, tokenizers, quantization, transport).
SOFTWARE_PACKAGES = ("modelyard", "torch", "transformers", "sentence-transformers", "numpy", "grpcio")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else whatever `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@cache
def software_versions() -> dict[str, str]:
    """Installed versions, read from package metadata: nothing is imported."""
    versions = {"python": platform.python_version()}
    for package in SOFTWARE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def host_conditions() -> dict[str, str]:
    """Conditions keys describing the benchmark host, recorded with every run."""
    return {
        "host.cpu_model": cpu_model(),
        "host.cpu_cores": str(usable_cores()),
        "host.machine": f"{platform.system()} {platform.machine()}",
        "host.name": platform.node(),
        **{f"software.{name}": value for name, value in software_versions().items()},
    }


def hardware_summary(worker_device: str) -> str:
    """One line for the run's `hardware` field, e.g. `cpu (Intel Xeon ..., 2 cores)`."""
    return f"{worker_device or 'unknown device'} ({cpu_model()}, {usable_cores()} cores)"
