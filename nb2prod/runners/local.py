"""`nb2prod run`: the pipeline on this machine.

Batch stages run with papermill in DAG order, each in a warm process of the
stage worker (`nb2prod.worker`, `runners.worker_stage`) or, when that is off or
not available, in a process of its own (`runners.execute`, started ahead), as
many at once as `jobs` allows; a failure skips the failed stage's
descendants while independent branches finish.  Every run gets an id and a
`run.json` in the artifact store; `latest.json` moves only when every batch
stage succeeded and the promotion gate passed.  The service stages are
started afterwards by `runners.services`.

Nothing outlives the runner: stage processes and gunicorn get its lifeline
(`nb2prod.lifeline`; for a worker's process, the runner's connection) and stop
themselves, kernels included, when it is gone, however it went; SIGTERM is handled like Ctrl-C (`runners.interrupts`); a stage gets
MAX_COMPLETION_TIME_SECONDS.  `run.json` names the runner process, so a run left
"running" by a runner that died shows as `interrupted` (`displayed_status`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from nb2prod import artifacts, cache, dag, lifeline, workdir, worker
from nb2prod.errors import Problem, UserError
from nb2prod.pipeline import Pipeline, StageSpec
from nb2prod.run_verdict import promotion_verdict
from nb2prod.runners import worker_stage
from nb2prod.runners.interrupts import shielded, stop_note, stopped_text
from nb2prod.runners.stage_process import StageProcess
from nb2prod.runners.worker_stage import WorkerStage

Event = dict
OnEvent = Callable[[Event], None]
OK_STATES = ("done", "cached")



def process_start(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (/proc), to tell reused pids apart."""
    fields = lifeline.stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def runner_identity(pid: int | None = None) -> dict:
    """Who runs this run (default: this process), recorded in run.json while it runs."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "start": process_start(pid)}


def runner_alive(identity: object) -> bool | None:
    """Whether the runner named in a run.json still runs; None when that is unknowable."""
    if not isinstance(identity, dict) or identity.get("host") != socket.gethostname():
        return None
    pid = identity.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = lifeline.stat_fields(pid)
    if fields is not None and fields[0] in ("Z", "X"):
        return False  # exited, not reaped yet (e.g. orphaned where PID 1 does not reap)
    start = identity.get("start")
    return start is None or process_start(pid) in (None, start)


def displayed_status(record: dict) -> str:
    """A run's status for `nb2prod runs`: "running" with its runner gone is "interrupted"."""
    status = record.get("status", "?")
    if status == "running" and runner_alive(record.get("runner")) is False:
        return "interrupted"
    return status if isinstance(status, str) else "?"


def run_status_line(record: dict) -> str:
    """A run's status as `nb2prod runs` prints it: `succeeded, not promoted: accuracy =
    0.71 < minimum 0.9 (stage train)`, `stopped by NAME (JupyterLab) at ...`."""
    status = displayed_status(record)
    if status == "stopped" and record.get("reason"):
        return str(record["reason"])  # stopped by whom, when
    verdict = promotion_verdict(record)
    if not verdict:
        return status
    # an in-cluster run's record says "not_promoted": its stages succeeded all the same
    return f"succeeded, {verdict}"


@dataclass
class StageState:
    """Progress of one stage within a run."""

    name: str
    state: str = "waiting"  # waiting | running | done | cached | failed | skipped | serving
    started: float | None = None
    finished: float | None = None
    message: str = ""
    result: dict = field(default_factory=dict)
    cached_from: str | None = None

    @property
    def ok(self) -> bool:
        """Finished with outputs: executed, or reused from an earlier run."""
        return self.state in OK_STATES

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def record(self) -> dict:
        return {"status": self.state, "started": self.started, "finished": self.finished,
                "seconds": round(self.elapsed, 3), "message": self.message, **{
                    k: self.result[k] for k in ("cell", "ename", "evalue") if k in self.result},
                **({"cached_from": self.cached_from} if self.cached_from else {})}


Stage = StageProcess | WorkerStage


@dataclass
class RunResult:
    """What a run did: for the CLI's summary and exit code."""

    run_id: str
    status: str  # succeeded | failed
    promoted: bool
    reason: str
    stages: dict[str, StageState]
    metrics: dict[str, dict]


class LocalRunner:
    """Runs one pipeline's batch stages for one run id."""

    def __init__(self, pipeline: Pipeline, store_uri: str, params: dict, jobs: int,
                 on_event: OnEvent | None = None, use_cache: bool = True) -> None:
        self.pipeline = pipeline
        self.store_uri = store_uri
        self.store = artifacts.open_store(store_uri)
        self.params = params
        self.jobs = max(1, jobs)
        self.use_cache = use_cache
        self.on_event = on_event or (lambda event: None)
        self.run_id = artifacts.new_run_id()
        self.states: dict[str, StageState] = {}
        self.lock = threading.Lock()
        self.processes: dict[str, Stage] = {}
        self.ahead: dict[str, StageProcess | None] = {}  # started ahead, waiting for `go`
        self.interrupted = False
        self.stopped: dict | None = None  # the stop note of a deliberate stop (Stop button)
        self.started: float | None = None  # kept in every run.json write
        self.recorded: str | None = None  # the status of the last run.json write
        self.record_lock = threading.Lock()  # one run.json write at a time, in order
        self._html: artifacts.HtmlRenderer | None = None
        self._files: dict[str, dict[str, Path]] | None = None
        self.use_worker = worker_stage.enabled(pipeline.value("run", "WORKER"))
        self.finishing: list[Future] = []  # reports rendered and uploaded after "done"
        self.finisher = ThreadPoolExecutor(max_workers=self.jobs,
                                           thread_name_prefix="nb2prod-report")

    @property
    def html(self) -> artifacts.HtmlRenderer:
        """The HTML renderer for executed stage notebooks, warming from first use."""
        with self.lock:
            if self._html is None:
                self._html = artifacts.HtmlRenderer()
            return self._html

    # -- environment ------------------------------------------------------------------
    def lay_out(self, name: str, work: Path) -> dict[str, str]:
        """The stage's working directory under `work`: its input files copied in.

        Returns the environment that tells the stage process where it is and
        whose written files to restore there (DESIGN.md "Files and local code").
        """
        cwd = work / "cwd"
        cwd.mkdir()
        workdir.copy_into(self.files[name], cwd)
        plan = work / workdir.FILES_PLAN
        plan.write_bytes(workdir.files_plan(self.pipeline, name))
        return {"NB2PROD_WORKDIR": str(cwd), "NB2PROD_FILES_PLAN": str(plan)}

    @property
    def files(self) -> dict[str, dict[str, Path]]:
        """Every stage's input files, found once per run (a missing one is a UserError)."""
        if self._files is None:
            self._files = {name: workdir.stage_files(self.pipeline, name)
                           for name in self.pipeline.stages}
        return self._files

    def stage_env(self, stage: StageSpec, input_run_id: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(NB2PROD_STORE=self.store_uri, NB2PROD_PIPELINE=self.pipeline.name,
                   NB2PROD_STAGE=stage.name, NB2PROD_RUN_ID=self.run_id,
                   PYTHONUNBUFFERED="1")
        env.pop("MODEL_RUN_ID", None)
        env["NB2PROD_INPUT_RUN_ID"] = input_run_id or self.run_id
        return env

    def key(self, *parts: str) -> str:
        return "/".join((artifacts.run_prefix(self.pipeline.name, self.run_id),) + parts)

    def location(self, key: str) -> str:
        """Where a user can open a stored file: a local path, or the store URL."""
        return self.store.url(key)

    # -- events ---------------------------------------------------------------------
    def set_state(self, name: str, state: str, message: str = "") -> None:
        with self.lock:
            st = self.states[name]
            st.state = state
            st.message = message
            now = time.time()
            if state == "running":
                st.started = now
            elif state in ("done", "cached", "failed") and st.started is not None:
                st.finished = now
        self.on_event({"stage": name, "state": state, "message": message,
                       "elapsed": round(st.elapsed, 3), "run_id": self.run_id})
        # run.json follows the stages while the run runs, so whoever reads it (`nb2prod
        # runs`, the JupyterLab panel, after a tab or server restart) sees them live
        self.write_run("running", only_if_running=True)

    def write_run(self, status: str, only_if_running: bool = False, **extra: object) -> None:
        """Write run.json; `only_if_running`: unless the run already has its final record."""
        with self.record_lock:
            if only_if_running and self.recorded != "running":
                return
            with self.lock:
                stages = {n: s.record() for n, s in self.states.items()}
            record = {
                "run_id": self.run_id, "pipeline": self.pipeline.name, "status": status,
                "params": self.params, "store": self.store_uri, "started": self.started,
                "stages": stages, **extra,
            }
            if status == "running":
                record["runner"] = runner_identity()
            artifacts.write_json(self.store, self.key("run.json"), record)
            self.recorded = status

    # -- one stage --------------------------------------------------------------------
    def spawn(self, name: str, input_run_id: str | None, wait: bool) -> Stage:
        """Start the stage: in the stage worker when it can, else in a process of its own;
        with `wait` (own process only) it boots its kernel and waits for `go`."""
        stage = self.pipeline.stages[name]
        work = Path(tempfile.mkdtemp(prefix=f"nb2prod-{name}-"))
        try:
            env = {**self.stage_env(stage, input_run_id), **self.lay_out(name, work)}
            if self.use_worker and not wait:
                started = self.submit(name, work, env)
                if started is not None:
                    with self.lock:
                        self.processes[name] = started
                    return started
            params_file = work / "params.json"
            params_file.write_text(json.dumps(self.params))
            env.update(lifeline.runner().child_env())
            with open(work / "log.txt", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "nb2prod.runners.execute", str(stage.directory),
                     stage.executable, str(work / "out"), str(params_file),
                     *(["--wait"] if wait else [])],
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                    stdin=subprocess.PIPE if wait else subprocess.DEVNULL,
                    start_new_session=True, pass_fds=lifeline.runner().pass_fds,
                )
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        started = StageProcess(proc, work)
        with self.lock:
            self.processes[f"{name}{' (ahead)' if wait else ''}"] = started
        return started

    def submit(self, name: str, work: Path, env: dict[str, str]) -> WorkerStage | None:
        """The stage handed to the stage worker; None (said once) when it cannot be used."""
        from nb2prod.runtime.stage import kernel_environ

        stage = self.pipeline.stages[name]
        identity = worker.identity_env(env)
        env = {**env, **kernel_environ(stage.directory, Path(env["NB2PROD_WORKDIR"]), env)}
        with self.lock:
            upcoming = sum(st.state == "waiting" for st in self.states.values())
        try:
            return worker_stage.submit(name, stage.directory, stage.executable, work,
                                       self.params, env, identity, len(self.states), upcoming)
        except worker_stage.WorkerUnavailable as exc:
            with self.lock:
                if self.use_worker:
                    print(f"nb2prod: the stage worker is not available ({exc}); running "
                          "each stage in a process of its own", file=sys.stderr, flush=True)
                self.use_worker = False
            return None

    def start_ahead(self, executing: str, input_run_id: str | None) -> None:
        """`executing` missed the cache and runs: boot the kernels of the stages after it.

        A stage waiting only on stages that are running or finished gets its
        process now (kernel booting, papermill importing) and is told `go` when
        its inputs are there; at most `jobs` such processes wait at a time.  Not with
        the stage worker: its stage processes are warm already.
        """
        if self.use_worker:
            return
        with self.lock:
            candidates = [
                n for n in self.states if n not in self.ahead and self.states[n].state == "waiting"
                and executing in self.preds(n)
                and all(self.states[p].state in ("running", *OK_STATES) for p in self.preds(n))]
            candidates = candidates[:max(0, self.jobs - len(self.ahead))]
            for name in candidates:
                self.ahead[name] = None  # reserved
        for name in candidates:
            started = self.spawn(name, input_run_id, wait=True)
            with self.lock:
                self.ahead[name] = started

    def take_ahead(self, name: str) -> StageProcess | None:
        with self.lock:
            started = self.ahead.pop(name, None)
            if started is not None:
                self.processes[name] = self.processes.pop(f"{name} (ahead)")
            return started

    def stop_ahead(self, name: str, started: StageProcess | None = None) -> None:
        """A process started ahead that will not run its stage: let it exit cleanly."""
        started = started or self.take_ahead(name)
        if started is None:
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            started.proc.communicate(b"stop\n", timeout=30)
        if started.proc.poll() is None:
            lifeline.kill_tree(started.proc.pid)  # its kernel leads a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.proc.pid, signal.SIGKILL)
            started.proc.wait()
        with self.lock:
            self.processes.pop(name, None)
        shutil.rmtree(started.work, ignore_errors=True)

    def preds(self, name: str) -> list[str]:
        return [a for a, b in self.pipeline.edges if b == name and a in self.states]

    def run_stage(self, name: str, input_run_id: str | None = None) -> StageState:
        """Execute one batch stage in a subprocess and upload what it produced."""
        stage = self.pipeline.stages[name]
        self.set_state(name, "running")
        key, hit = self.cache_lookup(stage, input_run_id or self.run_id)
        started = self.take_ahead(name)
        if hit is not None:
            self.stop_ahead(name, started)
            return self.reuse(name, stage, hit)
        if started is None:
            started = self.spawn(name, input_run_id, wait=False)
        else:
            with contextlib.suppress(OSError):  # it may have died booting: reported below
                started.proc.stdin.write(b"go\n")
                started.proc.stdin.close()
        if self.interrupted:  # a stop while it was being started: `interrupt` missed it
            started.interrupt()
        else:
            self.start_ahead(name, input_run_id)
        work = started.work
        limit = stage.number("batch", "MAX_COMPLETION_TIME_SECONDS", 1800)
        timed_out = False
        try:
            try:
                code = started.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                code = started.stop()
            with self.lock:
                self.processes.pop(name, None)
            result_file = work / "out" / "result.json"
            result = json.loads(result_file.read_text()) if result_file.is_file() else \
                self.unfinished(started)
            if timed_out:
                result.update(status="failed", ename="TimeoutError", evalue=(
                    f"exceeded MAX_COMPLETION_TIME_SECONDS ({limit:g}s) and was stopped"))
            if result.get("status") != "succeeded":  # the log ends saying why
                with open(work / "log.txt", "a", encoding="utf-8") as log:
                    log.write(f"\nnb2prod: {_failure_text(result)}\n")
            ok = not self.interrupted and result.get("status") == "succeeded" and code == 0
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if ok:  # the report is rendered and everything uploaded while later stages run
            self.states[name].result = result
            self.set_state(name, "done")
            self.finishing.append(self.finisher.submit(self.finish, name, started, result, key))
            return self.states[name]
        self.finish(name, started, result, None)
        if self.stopped is not None:
            self.set_state(name, "stopped", stopped_text(self.stopped))
        elif self.interrupted:
            self.set_state(name, "failed", "interrupted")
        else:
            self.set_state(name, "failed", self.failure_message(name))
        return self.states[name]

    def unfinished(self, started: Stage) -> dict:
        """The result record of a stage that ended without writing one: stopped or
        interrupted when this run was (its process died because of that), else lost."""
        if self.stopped is not None:
            return {"status": "failed", "ename": "Stopped", "evalue": stopped_text(self.stopped)}
        if self.interrupted:
            return {"status": "failed", "ename": "Interrupted",
                    "evalue": "the run was interrupted (Ctrl-C or SIGTERM)"}
        return started.lost()

    def finish(self, name: str, started: Stage, result: dict, key: str | None) -> None:
        """The HTML report, the uploads of notebook, report and log, then the cache entry
        (which lists every file the stage left, so it comes last)."""
        stage = self.pipeline.stages[name]
        try:
            executed = started.work / "out" / f"{Path(stage.executable).stem}.ipynb"
            if executed.is_file():
                error = started.report(executed, lambda: self.html)
                if error:
                    result["html_error"] = error
            uploaded = self.upload(name, started.work, stage)
            self.states[name].result = {**result, **uploaded}
        finally:
            shutil.rmtree(started.work, ignore_errors=True)
        if key is not None:
            cache.remember(self.store, self.pipeline.name, name, key, self.run_id)

    def cache_lookup(self, stage: StageSpec, input_run: str) -> tuple[str | None, dict | None]:
        """(cache key, verified hit or None); a stage tagged no-cache has neither.

        Any trouble reading the cache is a miss: caching may only make runs faster.
        """
        if not cache.enabled(stage):
            return None, None
        try:
            key = cache.key_for(self.store, self.pipeline, stage, self.params, input_run)
            if key is None or not self.use_cache:
                return key, None
            hit = cache.lookup(self.store, self.pipeline.name, stage.name, key)
            if hit is not None:
                cache.reuse(self.store, self.pipeline.name, stage.name, hit, self.run_id)
            return key, hit
        except Exception:  # noqa: BLE001 - a broken cache entry never fails a run
            return None, None

    def reuse(self, name: str, stage: StageSpec, hit: dict) -> StageState:
        """A cache hit: the stage's outputs (and reports) of run `hit` are this run's now."""
        stem = Path(stage.executable).stem
        state = self.states[name]
        state.cached_from = hit["run_id"]
        state.result = {"status": "succeeded", **{
            label: self.location(self.key(name, file)) for label, file in (
                ("notebook", f"{stem}.ipynb"), ("html", f"{stem}.html"), ("log", "log.txt"))
            if file in hit["files"]}}
        self.set_state(name, "cached", f"run {hit['run_id']}")
        return state

    def upload(self, name: str, work: Path, stage: StageSpec) -> dict:
        """Copy executed notebook, HTML and log into the store; return their locations."""
        found = {}
        stem = Path(stage.executable).stem
        for label, path in (("notebook", work / "out" / f"{stem}.ipynb"),
                            ("html", work / "out" / f"{stem}.html"),
                            ("log", work / "log.txt")):
            if path.is_file():
                key = self.key(name, path.name)
                artifacts.upload_file(self.store, key, path)
                found[label] = self.location(key)
        return found

    def failure_message(self, name: str) -> str:
        result = self.states[name].result
        see = result.get("html") or result.get("notebook") or result.get("log", "")
        return f"stage '{name}' {_failure_text(result)} (see {see})"

    # -- the DAG ------------------------------------------------------------------------
    def run(self, stages: list[str], input_run_id: str | None = None) -> dict[str, StageState]:
        """Run `stages` respecting the DAG, `jobs` at a time; skip descendants of failures."""
        edges = [(a, b) for a, b in self.pipeline.edges if a in stages and b in stages]
        _ = self.files  # every FILES entry must exist before anything runs
        self.states = {name: StageState(name) for name in stages}
        for name in stages:
            self.on_event({"stage": name, "state": "waiting", "message": "", "elapsed": 0.0,
                           "run_id": self.run_id})
        self.started = time.time()
        if not self.use_worker:
            _ = self.html  # start importing nbconvert while the first stages run
        self.write_run("running")
        try:
            return self._run(stages, edges, input_run_id)
        finally:
            for name in list(self.ahead):
                self.stop_ahead(name)
            for future in self.finishing:
                future.result()  # every report kept before the run is recorded
            self.finisher.shutdown()

    def _run(self, stages: list[str], edges: list[dag.Edge], input_run_id: str | None
             ) -> dict[str, StageState]:
        running: dict[Future, str] = {}
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            while True:
                for name in stages:
                    st = self.states[name]
                    if st.state != "waiting" or len(running) >= self.jobs or self.interrupted:
                        continue
                    preds = [a for a, b in edges if b == name]
                    if any(self.states[p].state in ("failed", "skipped") for p in preds):
                        self.set_state(name, "skipped", "an upstream stage failed")
                        continue
                    if all(self.states[p].ok for p in preds):
                        running[pool.submit(self.run_stage, name, input_run_id)] = name
                if not running:
                    break
                try:
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    self.interrupt()
                    raise
                for future in done:
                    name = running.pop(future)
                    future.result()
                    if self.states[name].state == "failed":
                        for child in dag.descendants(name, edges):
                            if self.states[child].state == "waiting":
                                self.set_state(child, "skipped", f"'{name}' failed")
        for st in self.states.values():
            if st.state == "waiting":
                st.state = "skipped"
        return self.states

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: stop every running stage (and its kernel) now.

        Each stage process kills its kernel on SIGTERM (`runners.execute`) or when its
        connection closes (the stage worker's); the threads waiting for them then
        record the stages as interrupted (as stopped, by whom, when a stop note says it
        was a deliberate stop: `interrupts.stop_note`).
        """
        self.stopped = stop_note()
        self.interrupted = True
        with self.lock:
            started = list(self.processes.values())
        for stage in started:
            stage.interrupt()


def _failure_text(result: dict) -> str:
    """`failed in cell 5 ("first line"): ValueError: ...` from a stage's result record."""
    cell = result.get("cell")
    where = f" in {artifacts.cell_label(cell, result.get('cell_line'))}" if cell is not None else ""
    what = f"{result.get('ename', 'Error')}: {result.get('evalue', '')}".strip()
    return f"failed{where}: {what}"


def run_batch(pipeline: Pipeline, *, store_uri: str, params: dict, jobs: int,
              on_event: OnEvent | None = None, only: str | None = None,
              runner: LocalRunner | None = None) -> RunResult:
    """Run the batch DAG (or one stage), record the run, promote on success."""
    runner = runner or LocalRunner(pipeline, store_uri, params, jobs, on_event)
    input_run_id = None
    if only is not None:
        latest = artifacts.read_latest(runner.store, pipeline.name)
        if latest is None and pipeline.predecessors(only):
            raise UserError(Problem(f"--stage {only}: its inputs come from the latest successful "
                                    "run and there is none yet; run the whole pipeline first"))
        input_run_id = latest["run_id"] if latest else None
        stages = [only]
    else:
        stages = pipeline.batch
    try:
        states = runner.run(stages, input_run_id)
    except KeyboardInterrupt:
        with shielded():
            note = runner.stopped or stop_note()
            if note is not None:
                runner.write_run("stopped", finished=time.time(), stopped=note,
                                 reason=stopped_text(note))
            else:
                runner.write_run("interrupted", finished=time.time(),
                                 reason="interrupted (Ctrl-C or SIGTERM)")
        raise
    failed = [s for s in stages if not states[s].ok]
    metrics = artifacts.read_run_metrics(runner.store, pipeline.name, runner.run_id)
    promoted, reason = False, ""
    if failed:
        status = "failed"
        reason = "; ".join(states[s].message for s in failed if states[s].state == "failed")
    elif only is not None:
        status, reason = "succeeded", "a single-stage run is never promoted"
    else:
        status = "succeeded"
        metric = pipeline.value("promotion", "METRIC") or None
        minimum = pipeline.value("promotion", "MIN")
        try:
            floor = float(minimum) if minimum else None
        except ValueError:
            raise UserError(Problem(f"[promotion] MIN = {minimum!r} is not a number",
                                    file=str(pipeline.root / "nb2prod.ini"))) from None
        promoted, reason = artifacts.promotion_passes(metrics, metric, floor)
    runner.write_run(status, finished=time.time(), metrics=metrics, promoted=promoted,
                     reason=reason)
    if promoted:
        artifacts.write_latest(runner.store, pipeline.name, runner.run_id)
    return RunResult(runner.run_id, status, promoted, reason, states, metrics)
