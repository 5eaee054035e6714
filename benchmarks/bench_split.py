"""Benchmark `nb2prod split` against `jupyter nbconvert --to script` on a big notebook.

Both run as whole processes in the same run, several repeats; prints medians
and the ratio (target: split within 1.0x of nbconvert), plus the wall time of
`nb2prod --help` (target: under 0.25 s).

Usage: python benchmarks/bench_split.py [--cells 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_notebook(path: Path, cells: int) -> None:
    """A tagged notebook: imports, parameters, then stages of a few cells each."""
    nb_cells = [
        {"cell_type": "code", "source": "n = 10", "metadata": {"tags": ["parameters"]}},
        {"cell_type": "code", "source": "import math\nimport json",
         "metadata": {"tags": ["imports"]}},
    ]
    stage = 0
    for i in range(cells - 3):
        tags = []
        if i % 50 == 0:
            stage += 1
            tags = [f"stage:s{stage}"]
        prev = f"v{i - 1}" if i else "n"
        source = f"v{i} = [math.sqrt(x) for x in range({prev} if isinstance({prev}, int) else 3)]"
        if i % 7 == 0:
            source += f"\nv{i}.append(len(json.dumps(v{i})))"
        source = source.replace(f"range({prev} if isinstance({prev}, int) else 3)",
                                f"range(len({prev}) if isinstance({prev}, list) else {prev})")
        nb_cells.append({"cell_type": "code", "source": source, "metadata": {"tags": tags}})
    nb_cells.append({"cell_type": "code", "source": "def predict(payload):\n    return v0",
                     "metadata": {"tags": ["serve"]}})
    for i, cell in enumerate(nb_cells):
        cell.update(id=f"c{i}", outputs=[], execution_count=None)
    nb = {"cells": nb_cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}}}
    path.write_text(json.dumps(nb))


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    nb2prod = shutil.which("nb2prod") or sys.exit("nb2prod is not installed")
    jupyter = shutil.which("jupyter") or sys.exit("jupyter is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_notebook(work / "big.ipynb", args.cells)
        split_times, convert_times, help_times = [], [], []
        for i in range(args.repeats):
            split_times.append(timed([nb2prod, "split", "big.ipynb", "-o", f"out{i}"], work))
            convert_times.append(timed([jupyter, "nbconvert", "--to", "script", "big.ipynb",
                                        "--output", f"script{i}"], work))
            help_times.append(timed([nb2prod, "--help"], work))
    split_med = statistics.median(split_times)
    convert_med = statistics.median(convert_times)
    print(f"notebook: {args.cells} cells, {args.repeats} repeats")
    print(f"nb2prod split           median {split_med:.3f} s")
    print(f"jupyter nbconvert script median {convert_med:.3f} s")
    print(f"ratio split/nbconvert   {split_med / convert_med:.2f}x (target <= 1.0x)")
    print(f"nb2prod --help          median {statistics.median(help_times):.3f} s (target < 0.25 s)")


if __name__ == "__main__":
    main()
