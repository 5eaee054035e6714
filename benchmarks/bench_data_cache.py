"""What keying the data behind a path parameter costs: a pipeline whose parameters cell
reads `DATA_DIR` from the environment, run with a 200 MB data directory vs a tiny one,
same session.

The notebook (ours, two small stages: `load` lists the directory and reads one small
file, `fit` sums) is split once per case, each case with its own store; the data is
written first and left alone for longer than `contents.RACY_NS` (a file hashed within
that time of its last change is not memoised: git's racily-clean rule).  Timed, one
after the other, whole `nb2prod run NOTEBOOK --no-serve` processes:

  first run            everything executes; the 200 MB case hashes its data once
  unchanged re-run     both stages cached: the data is stat'ed, not read (the memo)
  re-run, memo cold    the per-user digest file removed first: every file read again

The two cases alternate in going first, repeat by repeat.

Target: unchanged re-run with 200 MB <= 1.1x the one with a tiny directory.

Usage: python benchmarks/bench_data_cache.py [--repeats 5] [--mb 200] [--files 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, run_timed, settle

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = Path(tempfile.mkdtemp(prefix="nb2b-")) / "rt"
CELLS = [
    (["imports"], "import os"),
    (["parameters"], 'DATA_DIR = os.environ.get("BENCH_DATA_DIR", "data")'),
    (["stage:load"], ("names = sorted(os.listdir(DATA_DIR))\n"
                      "with open(os.path.join(DATA_DIR, 'small.txt')) as fh:\n"
                      "    values = [int(x) for x in fh.read().split()]")),
    (["stage:fit"], "total = sum(values) + len(names)"),
    (["metrics"], "total"),
]


def write_notebook(path: Path) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}",
              "metadata": {"tags": tags}, "outputs": [], "source": src}
             for i, (tags, src) in enumerate(CELLS)]
    path.write_text(json.dumps({
        "cells": cells, "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}}}, indent=1))


def write_data(directory: Path, megabytes: int, files: int) -> None:
    directory.mkdir(parents=True)
    (directory / "small.txt").write_text("1 2 3\n")
    size = megabytes * (1 << 20) // max(files, 1)
    for i in range(files if megabytes else 0):
        (directory / f"part-{i:04d}.bin").write_bytes(os.urandom(size))


def env_for(data: Path, cache_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NB2PROD_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(NB2PROD_RUNTIME_DIR=str(RUNTIME), BENCH_DATA_DIR=str(data),
               XDG_CACHE_HOME=str(cache_home))
    return env


def timed(cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    return run_timed([sys.executable, "-m", "nb2prod", "run", "bench.ipynb", "--no-serve"],
                     cwd, env)


def one_repeat(work: Path, megabytes: int, files: int, flip: bool) -> dict[str, float]:
    cases = {"tiny": 0, f"{megabytes} MB": megabytes}
    if flip:  # alternate which case goes first in each step
        cases = dict(reversed(cases.items()))
    envs: dict[str, dict[str, str]] = {}
    for name, size in cases.items():
        case = work / name.replace(" ", "")
        (case / "nb").mkdir(parents=True)
        write_notebook(case / "nb" / "bench.ipynb")
        write_data(case / "data", size, files)
        envs[name] = env_for(case / "data", case / "xdg")
    time.sleep(2.5)  # older than RACY_NS: the first run's digests are memoised
    times: dict[str, float] = {}
    for name in cases:
        times[f"first run, {name}"], _ = timed(work / name.replace(" ", "") / "nb", envs[name])
        settle(sys.executable, envs[name])
    for name in cases:
        took, out = timed(work / name.replace(" ", "") / "nb", envs[name])
        assert "2 of 2 stage(s) cached" in out, out
        times[f"unchanged re-run, {name}"] = took
    for name in cases:
        shutil.rmtree(Path(envs[name]["XDG_CACHE_HOME"]), ignore_errors=True)
        took, out = timed(work / name.replace(" ", "") / "nb", envs[name])
        assert "2 of 2 stage(s) cached" in out, out
        times[f"re-run, memo cold, {name}"] = took
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    print(machine())
    rows: dict[str, list[float]] = {}
    try:
        for i in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="nb2prod-bench-data-") as tmp:
                for name, took in one_repeat(Path(tmp), args.mb, args.files, i % 2 == 1).items():
                    rows.setdefault(name, []).append(took)
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in rows.items()),
                  flush=True)
    finally:
        subprocess.run([sys.executable, "-m", "nb2prod", "worker", "stop"], check=False,
                       env=env_for(Path("."), Path(".")), stdout=subprocess.DEVNULL)
        shutil.rmtree(RUNTIME.parent, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n{'measure':<32} median")
    for name, value in med.items():
        print(f"{name:<32} {value:6.2f} s")
    big = f"{args.mb} MB"
    print(f"unchanged re-run, {big} / tiny     "
          f"{med[f'unchanged re-run, {big}'] / med['unchanged re-run, tiny']:.2f}x "
          "(target <= 1.1x)")
    print(f"re-run memo cold, {big} / tiny     "
          f"{med[f're-run, memo cold, {big}'] / med['re-run, memo cold, tiny']:.2f}x")
    print(f"first run, {big} / tiny            "
          f"{med[f'first run, {big}'] / med['first run, tiny']:.2f}x")
    print(machine())


if __name__ == "__main__":
    main()
