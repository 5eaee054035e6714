"""Helpers shared by the benchmark scripts (imported as a sibling module: a script run by
path has its own directory first on ``sys.path``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def machine() -> str:
    """One line describing the machine: CPU count and model, Python version, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    return f"{os.cpu_count()} CPUs, {cpu}, Python {platform.python_version()}, {load}"


def settle(py: str, env: dict[str, str], timeout: float = 120) -> None:
    """Wait until the worker's processes are all warm (idle), so that the kernels it
    boots after a run do not share the CPUs with the next measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([py, "-m", "nb2prod", "worker", "status"], env=env,
                                capture_output=True, text=True, check=False).stdout
        if "booting" not in status and "running stage" not in status:
            return
        time.sleep(0.2)


def run_timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, stdout) of one process run to completion; a failure ends the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return took, done.stdout
