"""Running one stage: papermill in a working directory, retries, the verdict for
Kubernetes, and the `python -m nb2prod_runtime` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .cache import cached_result, cached_stage, read_plan, remember
from .errors import ArtifactError, _one_line
from .files import prepare_workdir, record_files
from .kernel import (
    _KERNEL_START_FAILURES,
    HtmlRenderer,
    _cell_line,
    _hide_slow_format_checker,
    _KernelHead,
    _source_cell,
    _stage_executable,
    _stage_params,
)
from .metrics import promote
from .runs import _failure_reason, read_run_metrics, record_run
from .stage_env import _base_context, _env, _stage_dir
from .stores import DEFAULT_STORE, RESULT, _stage_prefix, open_store, write_json
from .values import _write_context


def execute_in_workdir(stage_dir: Path, executable: str, out: Path, params: dict,
                       work: Path, render_html: bool = True,
                       kernel: _KernelHead | None = None) -> dict:
    """`execute_notebook` with the working directory laid out before and recorded after."""
    import time

    started = time.time()
    try:
        before = prepare_workdir(work, stage_dir)
    except (ArtifactError, OSError) as exc:  # a missing or corrupt file fails the stage
        return {"status": "failed", "ename": type(exc).__name__, "evalue": _one_line(exc),
                "cell": None, "started": started, "finished": time.time()}
    result = execute_notebook(stage_dir, executable, out, params, render_html, cwd=work,
                              kernel=kernel)
    if result["status"] == "succeeded":
        try:
            result["files"] = record_files(work, before)
        except (ArtifactError, OSError) as exc:
            result.update(status="failed", ename=type(exc).__name__, evalue=_one_line(exc),
                          cell=None)
    return result


def execute_notebook(stage_dir: Path, executable: str, work: Path, params: dict,
                     render_html: bool = True, cwd: Path | None = None,
                     kernel: _KernelHead | None = None) -> dict:
    """Run a stage notebook with papermill into `work`, plus its HTML rendering (nbconvert).

    Shared by in-cluster stages (`run-stage`) and `nb2prod run`'s per-stage
    processes (which leave the HTML to the runner: ``render_html=False``).
    Returns the result record (status, timings, failing cell and exception);
    notebook errors are reported there, never raised.  The kernel runs in `cwd`
    (default: the stage directory) with the stage directory on its import path,
    so `nb2prod_runtime` and the local modules split copied there import.
    `kernel`: one from `start_kernel`, booted ahead (it is shut down here).
    """
    cwd = cwd or stage_dir
    kernel = kernel or start_kernel(stage_dir, cwd)
    try:
        return _execute_with(kernel, stage_dir, executable, work, params, render_html, cwd)
    finally:
        kernel.shutdown()


def start_kernel(stage_dir: Path, cwd: Path | None = None) -> _KernelHead:
    """The stage's kernel, started now in `cwd` with the stage directory importable."""
    cwd = cwd or stage_dir
    os.environ.update(kernel_environ(stage_dir, cwd, os.environ))
    return _KernelHead(cwd)


def kernel_environ(stage_dir: Path, cwd: Path, environ: Any) -> dict[str, str]:
    """What the stage kernel's environment adds to `environ`: the stage directory and
    the pipeline's runtime on PYTHONPATH, NB2PROD_STAGE_DIR when it runs elsewhere.

    Also used by `nb2prod run` for a warm kernel of the stage worker, which gets
    these values before the notebook runs instead of at its start.
    """
    here = Path(stage_dir).resolve()
    # The stage's own modules, then the pipeline's nb2prod_runtime/ (beside the stage
    # dirs locally; in a pod it was copied into the stage dir).
    wanted = [str(here)] + [str(d) for d in (here.parent,) if (d / "nb2prod_runtime").is_dir()]
    path = environ.get("PYTHONPATH")
    entries = path.split(os.pathsep) if path else []
    added = {}
    if entries[:len(wanted)] != wanted:
        added["PYTHONPATH"] = os.pathsep.join(wanted + entries)
    if Path(cwd).resolve() != here:
        added["NB2PROD_STAGE_DIR"] = str(here)
    return added


def _execute_with(kernel: _KernelHead, stage_dir: Path, executable: str, work: Path,
                  params: dict, render_html: bool, cwd: Path) -> dict:
    import time

    _hide_slow_format_checker()
    try:
        import papermill
        from papermill.exceptions import PapermillExecutionError
    except ImportError as exc:
        raise ArtifactError(f"papermill is not installed: {exc}") from None
    html = HtmlRenderer() if render_html else None
    work.mkdir(parents=True, exist_ok=True)
    stem = Path(executable).stem
    output = work / f"{stem}.ipynb"
    result: dict[str, Any] = {"status": "succeeded", "started": time.time()}
    for attempt in (1, 2):
        try:
            papermill.execute_notebook(
                str(stage_dir / executable), str(output), parameters=params,
                cwd=str(cwd), kernel_name="python3", progress_bar=False, log_output=True,
                **kernel.take())
        except PapermillExecutionError as exc:
            executed = json.loads(output.read_text()) if output.is_file() else {}
            result.update(status="failed", ename=exc.ename, evalue=str(exc.evalue),
                          stage_cell=exc.cell_index, cell=_source_cell(executed, exc.cell_index),
                          cell_line=_cell_line(executed, exc.cell_index))
        except Exception as exc:  # noqa: BLE001 - kernel died, bad notebook...: report it
            if attempt == 1 and any(m in str(exc) for m in _KERNEL_START_FAILURES):
                # Not the notebook's fault (kernels started at the same moment can race
                # for ports; a loaded machine can be slow): one more kernel, same notebook.
                print(f"nb2prod: the kernel did not start ({exc}); starting another",
                      file=sys.stderr, flush=True)
                continue
            result.update(status="failed", ename=type(exc).__name__, evalue=str(exc), cell=None)
        break
    result["finished"] = time.time()
    kernel.shutdown_soon()
    if html is not None and output.is_file():
        error = html.render(output, work / f"{stem}.html")
        if error:
            result["html_error"] = error
    return result


def run_stage(params: dict | None = None, output_dir: str | os.PathLike[str] | None = None
              ) -> dict:
    """Execute this stage's notebook with papermill and upload what it produced.

    The in-cluster (and any process-per-stage) entry point: the cwd is the stage
    directory, ``NB2PROD_*`` say where results go.  The notebook runs in a fresh
    working directory (``NB2PROD_WORKDIR``, else a temp dir removed afterwards)
    laid out like the notebook's (`prepare_workdir`).  The executed notebook, its
    HTML rendering (when nbconvert is importable) and ``result.json`` (status,
    failing cell, exception) land in ``<store>/<pipeline>/runs/<run>/<stage>/``,
    so a failed pod leaves its evidence in the store, not only in its log.
    Notebook errors are returned in the record, never raised.

    With a cache plan beside config.ini (an in-cluster run with the stage cache on:
    `[schedule] CACHE = true`), a stage whose key matches a successful earlier run
    in the store is not executed: its outputs are reused and the record says
    `cached_from`; after a successful execution the key is remembered.
    """
    import tempfile

    ctx = _write_context("run the stage")
    stage_dir = _stage_dir()
    executable = _stage_executable(stage_dir, ctx.stage)
    store = open_store(ctx.store)
    prefix = _stage_prefix(ctx.pipeline, ctx.run_id, ctx.stage)
    plan = read_plan(stage_dir)
    key, hit = cached_stage(store, ctx.pipeline, ctx.stage, ctx.run_id,
                            _env("NB2PROD_INPUT_RUN_ID") or ctx.run_id, plan) if plan else (None, None)
    if hit is not None:
        result: dict[str, Any] = cached_result(ctx.pipeline, ctx.stage, ctx.run_id,
                                               hit["run_id"])
        write_json(store, f"{prefix}/{RESULT}", result, atomic=True)
        return result
    params = _stage_params(os.environ.get("NB2PROD_PARAMS")) if params is None else params
    work = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="nb2prod-stage-"))
    cwd = Path(_env("NB2PROD_WORKDIR") or tempfile.mkdtemp(prefix="nb2prod-work-"))
    try:
        executed = execute_in_workdir(stage_dir, executable, work, params, cwd)
    finally:
        if not _env("NB2PROD_WORKDIR"):
            import shutil

            shutil.rmtree(cwd, ignore_errors=True)
    result = {"stage": ctx.stage, "run_id": ctx.run_id, "pipeline": ctx.pipeline, **executed}
    stem = Path(executable).stem
    files = [work / f"{stem}.ipynb", work / f"{stem}.html"]
    for path in files:
        if path.is_file():
            store.upload(f"{prefix}/{path.name}", path)
    write_json(store, f"{prefix}/{RESULT}", result, atomic=True)
    if key is not None and result["status"] == "succeeded":
        with contextlib.suppress(Exception):  # the next run just runs the stage again
            remember(store, ctx.pipeline, ctx.stage, key, ctx.run_id)
    return result


def _termination_message(record: dict) -> None:
    """Leave a JSON verdict as the container's termination message (in-cluster runs).

    ``NB2PROD_TERMINATION_LOG`` names the container's terminationMessagePath;
    `nb2prod history` reads the failing stage and reason from there.
    """
    path = os.environ.get("NB2PROD_TERMINATION_LOG")
    if not path:
        return
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps(record, sort_keys=True, default=str)[:4000],
                              encoding="utf-8")


def _on_sigterm(stage: str, timeout: float | None) -> None:
    """SIGTERM (pod deleted, or `timeout` at MAX_COMPLETION_TIME_SECONDS): say why, exit 143."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        reason = (f"exceeded MAX_COMPLETION_TIME_SECONDS ({timeout:g}s)" if timeout
                  else "terminated (SIGTERM)")
        print(f"nb2prod: stage '{stage}' {reason}", file=sys.stderr, flush=True)
        _termination_message({"stage": stage, "status": "failed", "reason": reason})
        os._exit(143)

    signal.signal(signal.SIGTERM, handler)


#: Log lines that say nothing about the stage: papermill's per-cell banners and paths (its
#: cell count is not the notebook's), and jupyter_client's remark on a stopped kernel.
_LOG_NOISE = ("Executing Cell ", "Ending Cell ", "Input Notebook:", "Output Notebook:",
              "Working directory:", "Executing notebook with kernel:",
              "Could not destroy zmq context")


def log_stage_output() -> None:
    """Send each cell's output (papermill logs it: log_output=True) to stdout, the stage log."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logging.getLogger("papermill").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not str(record.getMessage()).startswith(_LOG_NOISE))


def _run_stage_main(args: argparse.Namespace) -> int:
    log_stage_output()
    stage = os.environ.get("NB2PROD_STAGE") or "?"
    _on_sigterm(stage, args.timeout)
    attempts = max(0, args.retries) + 1
    for attempt in range(1, attempts + 1):
        try:
            params = _stage_params(args.params) if args.params is not None else None
            result = run_stage(params, args.output_dir)
        except Exception as exc:  # noqa: BLE001 - one line, no traceback, exit 1
            message = _one_line(exc)
            print(f"nb2prod: error: run-stage: {message}", file=sys.stderr, flush=True)
            _termination_message({"stage": stage, "status": "failed", "attempts": attempt,
                                  "reason": message})
            return 1
        seconds = result["finished"] - result["started"]
        if result.get("cached_from"):
            print(f"nb2prod: stage '{result['stage']}' cached (run {result['cached_from']}): "
                  "its outputs are reused, the notebook did not run", flush=True)
            _termination_message({"stage": result["stage"], "status": "succeeded",
                                  "attempts": 0, "cached_from": result["cached_from"]})
            return 0
        if result["status"] == "succeeded":
            print(f"nb2prod: stage '{result['stage']}' succeeded in {seconds:.1f}s", flush=True)
            _termination_message({"stage": result["stage"], "status": "succeeded",
                                  "attempts": attempt, "seconds": round(seconds, 1)})
            return 0
        reason = _failure_reason(result)
        if attempt < attempts:
            print(f"nb2prod: stage '{result['stage']}' attempt {attempt}/{attempts} {reason}; "
                  "retrying", file=sys.stderr, flush=True)
            continue
        print(f"nb2prod: stage '{result['stage']}' {reason}", file=sys.stderr, flush=True)
        _termination_message({"stage": result["stage"], "status": "failed", "attempts": attempt,
                              "reason": reason, "cell": result.get("cell")})
    return 1


# -- CLI -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point for in-cluster use.

    ``promote``: exit 0 promoted, 3 gate failed, 1 error.  ``run-stage``: exit 0
    when the stage notebook ran to the end, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="python -m nb2prod_runtime", description="nb2prod stage runtime commands")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser(
        "promote", help="apply the promotion gate to a run and update latest.json")
    cmd.add_argument("--pipeline", required=True)
    cmd.add_argument("--run-id", required=True)
    cmd.add_argument("--metric", default=None)
    cmd.add_argument("--min", dest="minimum", type=float, default=None)
    cmd.add_argument("--store", default=None,
                     help="store URI (default: NB2PROD_STORE, config.ini, " + DEFAULT_STORE + ")")
    cmd.add_argument("--json", action="store_true",
                     help="also print the verdict as one JSON line (passed, reason, metrics)")
    rec = commands.add_parser(
        "record", help="merge a JSON object into a run's run.json (the roll step's outcome)")
    rec.add_argument("--pipeline", required=True)
    rec.add_argument("--run-id", required=True)
    rec.add_argument("--values", required=True, help="JSON object to merge")
    rec.add_argument("--store", default=None)
    run = commands.add_parser(
        "run-stage", help="execute this stage's notebook (cwd) with papermill and upload "
        "the executed notebook, its HTML and result.json to the store")
    run.add_argument("--params", default=None,
                     help="JSON object of parameter values (default: NB2PROD_PARAMS)")
    run.add_argument("--output-dir", default=None,
                     help="where to keep the executed notebook locally (default: a temp dir)")
    run.add_argument("--retries", type=int, default=0,
                     help="run the notebook again (fresh kernel) up to N times when it fails")
    run.add_argument("--timeout", type=float, default=None,
                     help="the stage's time limit, enforced by the caller (`timeout`): only "
                     "used to explain a SIGTERM")
    args = parser.parse_args(argv)
    if args.command == "run-stage":
        return _run_stage_main(args)
    if args.command == "record":
        try:
            values = json.loads(args.values)
            if not isinstance(values, dict):
                raise TypeError("--values must be a JSON object")
            record_run(args.store or _base_context()[0], args.pipeline, args.run_id, values)
        except Exception as exc:  # noqa: BLE001 - one line, no traceback, exit 1
            message = _one_line(exc)
            print(f"error: record {args.pipeline}/{args.run_id}: {message}", file=sys.stderr)
            return 1
        return 0
    try:
        store = args.store or _base_context()[0]
        passed, reason = promote(store, args.pipeline, args.run_id, args.metric, args.minimum)
    except Exception as exc:  # noqa: BLE001 - any failure: one line, no traceback, exit 1
        message = _one_line(exc)
        print(f"error: promote {args.pipeline}/{args.run_id}: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"passed": False, "reason": f"promote failed: {message}"}))
        return 1
    if args.json:
        metrics = read_run_metrics(store, args.pipeline, args.run_id)
        print(json.dumps({"passed": passed, "reason": reason, "metrics": metrics},
                         sort_keys=True, default=str))
    if passed:
        print(f"promoted run {args.run_id} of {args.pipeline}: {reason}")
        return 0
    print(f"not promoted: run {args.run_id} of {args.pipeline}: {reason}")
    return 3
