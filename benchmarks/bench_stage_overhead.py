"""Per-stage overhead of `nb2prod run --no-serve` vs `python` running the same code.

A one-stage pipeline (a parameters cell and one `stage:work` cell computing a sum, plus
a metrics cell) is run with `nb2prod run --no-serve --no-cache` (without --no-cache every
run after the first would be a cache hit); the baseline is `python work.py`
with the same code.  Both are whole processes, timed in the same run, several repeats,
medians.  Then the pieces of the stage run are timed separately, each in a fresh
process so that imports are paid as they are in a real run:

  python start            `python -c pass`
  CLI start               `python -m nb2prod --help` (click; nothing heavy imported)
  stage process, total    `python -m nb2prod.runners.execute ...` (what the runner spawns:
                          kernel started first, papermill imported while it boots)
    the pieces below are each timed alone, one after the other; the run overlaps them:
    import rfc3987_syntax pulled in by papermill -> nbformat -> jsonschema when installed
                          (it builds a Lark grammar at import); the stage process hides it
    import papermill      the rest of papermill's imports
    kernel start          jupyter_client.start_new_kernel (an ipykernel process) + shutdown
    papermill execute     execute_notebook on the stage notebook (kernel start included)
    import nbconvert      + HTMLExporter
    HTML rendering        HTMLExporter().from_notebook_node on the executed notebook
  runner bookkeeping      run total - CLI start - stage process (split read, run.json, the
                          HTML report (nbconvert imported and warmed in the runner while the
                          stage runs), uploads of notebook/HTML/log, metrics, latest.json)

`nb2prod run` is timed twice per repeat: with the stage worker (its own runtime dir,
started by an untimed run first, as any run within its idle timeout leaves it; stopped
at the end) and with NB2PROD_WORKER=0 (a process per stage, what the pieces describe).

Target: overhead (run - script) <= 0.5 s.

Usage: python benchmarks/bench_stage_overhead.py [--repeats 5] [--n 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from _common import machine, settle

CODE = "total = sum(i * i for i in range(n))"

PHASES = textwrap.dedent('''
    import json, os, sys, time
    stage_dir, executable, out = sys.argv[1:4]
    # the kernel imports the pipeline's nb2prod_runtime/ (beside the stage dir), as in a run
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.abspath(stage_dir)), os.environ.get("PYTHONPATH", "")])
    t = {}
    t0 = time.perf_counter()
    try:  # jsonschema's optional "iri" format checker; nbformat imports jsonschema
        import rfc3987_syntax
    except ImportError:
        pass
    t["import rfc3987_syntax"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import papermill
    t["import papermill (rest)"] = time.perf_counter() - t0

    from jupyter_client.manager import start_new_kernel
    t0 = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3")
    t["kernel start (alone)"] = time.perf_counter() - t0
    kc.stop_channels()
    km.shutdown_kernel(now=True)

    t0 = time.perf_counter()
    papermill.execute_notebook(f"{stage_dir}/{executable}", f"{out}/executed.ipynb",
                               cwd=stage_dir, kernel_name="python3", progress_bar=False,
                               log_output=True)
    t["papermill execute (kernel start incl.)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    import nbformat
    from nbconvert import HTMLExporter
    t["import nbconvert"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    nb = nbformat.read(f"{out}/executed.ipynb", as_version=4)
    HTMLExporter().from_notebook_node(nb)
    t["HTML rendering"] = time.perf_counter() - t0
    print(json.dumps(t))
''')


def notebook(n: int) -> dict:
    cells = [
        ({"tags": ["parameters"]}, f"n = {n}"),
        ({"tags": ["stage:work"]}, CODE),
        ({"tags": ["metrics"]}, "total"),
    ]
    return {
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": meta, "source": src,
                   "outputs": [], "execution_count": None}
                  for i, (meta, src) in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=200_000, help="size of the stage's loop")
    args = parser.parse_args()
    py = sys.executable
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="nb2prod-bench-stage-") as tmp:
        work = Path(tmp)
        (work / "one.ipynb").write_text(json.dumps(notebook(args.n)))
        (work / "work.py").write_text(f"n = {args.n}\n{CODE}\nprint(total)\n")
        subprocess.run([py, "-m", "nb2prod", "split", "one.ipynb", "-o", "pl"], cwd=work,
                       check=True, stdout=subprocess.DEVNULL)
        stage_dir = next((work / "pl").glob("stage-*-work"))
        env = dict(os.environ, NB2PROD_STORE=f"file://{work / 'scratch'}",
                   NB2PROD_PIPELINE="one", NB2PROD_STAGE="work", NB2PROD_RUN_ID="bench")
        (work / "params.json").write_text("{}")
        samples: dict[str, list[float]] = {}

        def add(name: str, value: float) -> None:
            samples.setdefault(name, []).append(value)

        runtime = work / "rt"  # the stage worker of this benchmark, stopped at the end
        with_worker = dict(os.environ, NB2PROD_RUNTIME_DIR=str(runtime), NB2PROD_WORKER="1")
        without = dict(with_worker, NB2PROD_WORKER="0")
        run = [py, "-m", "nb2prod", "run", "pl", "--no-serve", "--no-cache"]  # every run executes
        timed(run, work, with_worker)  # not timed: starts the worker (as an earlier run would)
        settle(py, with_worker)
        try:
            measure(args, py, work, stage_dir, env, run, with_worker, without, add)
        finally:
            subprocess.run([py, "-m", "nb2prod", "worker", "stop"], env=with_worker,
                           check=False, stdout=subprocess.DEVNULL)

    med = {name: statistics.median(values) for name, values in samples.items()}
    print(f"one-stage pipeline, loop n={args.n}, {args.repeats} repeats, medians:")
    for name in ("python work.py", "nb2prod run --no-serve", "run, no worker"):
        print(f"  {name:42s} {med[name]:6.2f} s")
    for name, label in (("nb2prod run --no-serve", "overhead (run - script)"),
                        ("run, no worker", "overhead, no worker (NB2PROD_WORKER=0)")):
        overhead = med[name] - med["python work.py"]
        print(f"  {label:42s} {overhead:6.2f} s  (target <= 0.5 s; "
              f"{med[name] / med['python work.py']:.1f}x the script)")
    print("where the time goes without the worker (each piece in a fresh process):")
    for name in ("python start", "CLI start (nb2prod --help)", "stage process, total",
                 "import rfc3987_syntax", "import papermill (rest)", "kernel start (alone)",
                 "papermill execute (kernel start incl.)", "import nbconvert", "HTML rendering"):
        indent = "    " if name in ("import rfc3987_syntax", "import papermill (rest)",
                                    "kernel start (alone)",
                                    "papermill execute (kernel start incl.)",
                                    "import nbconvert", "HTML rendering") else "  "
        print(f"{indent}{name:{44 - len(indent)}s} {med[name]:6.2f} s")
    bookkeeping = (med["run, no worker"] - med["CLI start (nb2prod --help)"]
                   - med["stage process, total"])
    print(f"  {'runner bookkeeping (rest of the run)':42s} {bookkeeping:6.2f} s")
    print(f"machine at the end: {machine()}")


def measure(args: argparse.Namespace, py: str, work: Path, stage_dir: Path,
            env: dict[str, str], run: list[str], with_worker: dict[str, str],
            without: dict[str, str], add: Callable[[str, float], None]) -> None:
    """One round per repeat: script, run with the (warm) worker, run without it, pieces."""
    for i in range(args.repeats):
        add("python work.py", timed([py, "work.py"], work))
        add("nb2prod run --no-serve", timed(run, work, with_worker))
        settle(py, with_worker)  # its replacement warm processes booted: not timed
        add("run, no worker", timed(run, work, without))
        add("python start", timed([py, "-c", "pass"], work))
        add("CLI start (nb2prod --help)", timed([py, "-m", "nb2prod", "--help"], work))
        add("stage process, total", timed(
            [py, "-m", "nb2prod.runners.execute", str(stage_dir), "work.ipynb",
             str(work / f"exec{i}"), str(work / "params.json")], work, env))
        out = work / f"phases{i}"
        out.mkdir()
        phases = subprocess.run([py, "-c", PHASES, str(stage_dir), "work.ipynb", str(out)],
                                cwd=work, env=env, check=True, capture_output=True,
                                text=True).stdout
        for name, value in json.loads(phases.strip().splitlines()[-1]).items():
            add(name, value)


if __name__ == "__main__":
    main()
