"""The edit-run loop on wine_parallel: first run vs unchanged re-run vs a run after editing
only the last batch stage, same session, plus papermill on the whole notebook.

Each repeat starts from a fresh copy of `example_notebooks/wine_parallel.ipynb` and
its own store, then times whole processes, one after the other:

  first run          `nb2prod run wine_parallel.ipynb --no-serve` (split included)
  unchanged re-run   the same command again: every batch stage comes from the cache
  last stage edited  a line appended to the `evaluate` cell of the notebook, run again:
                     only `evaluate` executes
  papermill          `papermill wine_parallel.ipynb out.ipynb` (the whole notebook, one
                     kernel): the baseline of the per-stage-overhead target
  first run, no worker  the first run with NB2PROD_WORKER=0 (a process per stage, as
                     before the stage worker), fresh copy; alternately before/after

The stage worker gets a runtime dir of this benchmark; an untimed run first starts it
(as any earlier run within its idle timeout would have), and it is stopped at the end.

Targets: unchanged re-run <= 0.1x the first run; first run <= 1.2x papermill.

`--other-tree DIR` also times the first run with another nb2prod source tree first
on PYTHONPATH (e.g. `git archive REV | tar -x -C DIR`), to compare two versions in
the same session.

Usage: python benchmarks/bench_cache.py [--repeats 3] [--other-tree DIR]
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
from pathlib import Path

from _common import machine, run_timed, settle

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "example_notebooks" / "wine_parallel.ipynb"


#: The stage worker's runtime dir for this benchmark (its own daemon, stopped at the end).
RUNTIME = Path(tempfile.mkdtemp(prefix="nb2b-")) / "rt"


def timed(args: list[str], cwd: Path, tree: Path = ROOT, use_worker: bool = True
          ) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NB2PROD_")}
    env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(NB2PROD_RUNTIME_DIR=str(RUNTIME), NB2PROD_WORKER="1" if use_worker else "0")
    return run_timed(args, cwd, env)


def worker_env() -> dict[str, str]:
    return {**os.environ, "NB2PROD_RUNTIME_DIR": str(RUNTIME),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def edit_last_stage(notebook: Path) -> None:
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "stage:evaluate" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    cell["source"] = source.rstrip("\n") + "\nprint('edited', best_name)\n"
    notebook.write_text(json.dumps(nb, indent=1))


def one_repeat(work: Path, other: Path | None, other_first: bool) -> dict[str, float]:
    nb2prod = [sys.executable, "-m", "nb2prod", "run", NOTEBOOK.name, "--no-serve"]
    times: dict[str, float] = {}

    def other_run() -> None:
        (work / "other").mkdir()
        shutil.copy(NOTEBOOK, work / "other" / NOTEBOOK.name)
        times["first run, other tree"], _ = timed(nb2prod, work / "other", other)

    def own_processes() -> None:
        (work / "own").mkdir()
        shutil.copy(NOTEBOOK, work / "own" / NOTEBOOK.name)
        times["first run, no worker"], _ = timed(nb2prod, work / "own", use_worker=False)

    if other_first:
        own_processes()
    if other is not None and other_first:
        other_run()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    times["first run"], _ = timed(nb2prod, work)
    settle(sys.executable, worker_env())
    if other is not None and not other_first:
        other_run()
    if not other_first:
        own_processes()
    times["unchanged re-run"], out = timed(nb2prod, work)
    assert "4 of 4 stage(s) cached" in out, out
    edit_last_stage(work / NOTEBOOK.name)
    times["last stage edited"], out = timed(nb2prod, work)
    assert "3 of 4 stage(s) cached" in out, out
    times["papermill"], _ = timed([sys.executable, "-m", "papermill", "--no-progress-bar",
                                   NOTEBOOK.name, "out.ipynb"], work)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--other-tree", type=Path, help="another nb2prod source tree to time")
    args = parser.parse_args()
    print(machine())
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="nb2prod-bench-cache-") as tmp:
        shutil.copy(NOTEBOOK, Path(tmp) / NOTEBOOK.name)  # not timed: the worker starts
        timed([sys.executable, "-m", "nb2prod", "run", NOTEBOOK.name, "--no-serve"], Path(tmp))
        settle(sys.executable, worker_env())
    try:
        repeat(args, rows)
    finally:
        subprocess.run([sys.executable, "-m", "nb2prod", "worker", "stop"], check=False,
                       env=worker_env(), stdout=subprocess.DEVNULL)
        shutil.rmtree(RUNTIME.parent, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n{'measure':<22} median")
    for name, value in med.items():
        print(f"{name:<22} {value:6.2f} s")
    print(f"unchanged re-run / first run   {med['unchanged re-run'] / med['first run']:.3f}x "
          "(target <= 0.1x)")
    print(f"last stage edited / first run  {med['last stage edited'] / med['first run']:.3f}x")
    print(f"first run / papermill          {med['first run'] / med['papermill']:.2f}x "
          "(target <= 1.2x; stage worker warm)")
    print(f"first run, no worker / papermill {med['first run, no worker'] / med['papermill']:.2f}x"
          " (NB2PROD_WORKER=0: a process per stage)")
    if args.other_tree:
        print(f"first run / other tree's       {med['first run'] / med['first run, other tree']:.2f}x")
    print(machine())


def repeat(args: argparse.Namespace, rows: dict[str, list[float]]) -> None:
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="nb2prod-bench-cache-") as tmp:
            for name, took in one_repeat(Path(tmp), args.other_tree, i % 2 == 0).items():
                rows.setdefault(name, []).append(took)
        print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in rows.items()),
              flush=True)


if __name__ == "__main__":
    main()
