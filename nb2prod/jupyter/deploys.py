"""Deploys from JupyterLab: a detached `nb2prod deploy`, followed through its record.

- ``POST /nb2prod/deploy`` checks the cluster (GET /version), splits a
  notebook (as `nb2prod deploy NOTEBOOK` does), then starts ``python -m
  nb2prod deploy DIR --namespace NS ... --events FILE`` as a detached launch
  (`launches.start_detached`): closing the tab, or restarting the jupyter
  server, does not stop it.  The answer is 202 with the first status.
- ``GET /nb2prod/deploy/<id>?path=NB-or-DIR`` is one deploy's status, read
  from disk: the launch record (running or not), the deploy's event log
  (latest state per stage, then its result or error; `stopped`, by whom and
  when, for one stopped from the panel) and, for a deploy
  whose process ended without writing an outcome (killed), the cluster
  itself (`nb2prod status`'s Job states of that run), followed while a Job of
  that run still runs or waits there (the status reads `running`, `following`
  says why), then kept.
- ``GET /nb2prod/deploy?path=NB-or-DIR`` lists the pipeline's deploys, newest
  first: how a reopened panel reattaches to a deploy still in progress.

The record holds the namespace, context and stage names; the command line
names the image, store and parameters.  No credential is in either: the
deploy reads the kubeconfig and the store's credentials from the environment
it inherits, as in a terminal.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jupyter_server.utils import url_path_join
from tornado import web

from nb2prod.jupyter.handlers import authorized, params_option, preflight, refuse
from nb2prod.jupyter.launches import (
    LAUNCH_DIR,
    STOP_NOTE,
    is_running,
    record_of,
    records,
    start_detached,
    tail,
)
from nb2prod.jupyter.runs import _PipelineDirMixin
from nb2prod.runners.interrupts import read_stop_note, stopped_text

#: The deploy's own line naming its run: "run <id>: N batch stage(s), ...".
RUN_LINE = re.compile(r"^run (\S+): \d+ batch stage", re.MULTILINE)
#: What a deploy's stage rows become when the deploy ended without them finishing.
UNFINISHED = {"waiting": ("skipped", "not started: the deploy ended"),
              "running": ("failed", "stopped: the deploy ended")}
#: The same after a deliberate stop (the panel's Stop): stopped, not failed.
STOPPED_UNFINISHED = {"waiting": ("skipped", "not started: the deploy was stopped"),
                      "running": ("stopped", "")}
#: Where a failed stage's message names its cell: `failed in cell N ("first line")`.
CELL_IN_MESSAGE = re.compile(r"\bin cell (\d+) \(")
#: A Job state of `nb2prod status` as a stage state.
JOB_STATES = {"Complete": "done", "Running": "running", "Pending": "waiting",
              "Stopped": "stopped", "Suspended": "stopped"}
#: The promote Job's state in `nb2prod status` as the `(promote)` row's.
PROMOTION_STATES = {"promoted": "done", "running": "running", "pending": "waiting",
                    "not promoted": "skipped", "not promoted / failed": "failed"}
#: Stage states in the cluster that mean the run is not over there.
LIVE_STATES = ("running", "waiting")
#: Seconds a cluster answer about a killed deploy's still running Jobs is reused.
FOLLOW_SECONDS = 2.0
#: Seconds of a silent cluster after which a followed killed deploy is given up on.
FOLLOW_GIVE_UP_SECONDS = 600.0


def deploy_command(pipeline_dir: Path, namespace: str, options: dict[str, Any],
                   events: Path) -> list[str]:
    """The `nb2prod deploy` command line a launch executes (names and URIs, no secrets)."""
    command = [sys.executable, "-m", "nb2prod", "deploy", str(pipeline_dir),
               "--namespace", namespace]
    for key in ("context", "image", "store"):
        if options.get(key):
            command += [f"--{key}", options[key]]
    for name, value in (options.get("params") or {}).items():
        command += ["--param", f"{name}={value}"]
    return command + ["--events", str(events)]


def _cluster_states(pipeline_dir: Path, namespace: str, context: str | None,
                    run_id: str) -> dict[str, str]:
    """{stage: state} of one run as the cluster has it (Jobs, the promote Job as
    `(promote)`, serving Deployments); a stage without a Job is not in it."""
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube
    from nb2prod.runners.kubernetes.jobs import PROMOTE_UNIT

    pipeline = load_pipeline(pipeline_dir, validate=False)
    with kube.api_errors():
        info = kube.status(pipeline, namespace, context=context)
    run = next((r for r in info["runs"] if r["run_id"] == run_id), {"stages": {}})
    states = {name: _stage_state(state) for name, state in run["stages"].items()}
    if run.get("promotion") in PROMOTION_STATES:
        states[PROMOTE_UNIT] = PROMOTION_STATES[run["promotion"]]
    for name, svc in info["services"].items():
        if svc.get("exists") and svc.get("model_run_id") == run_id and svc.get("ready"):
            states[name] = "serving"
    return states


def _stage_state(state: str) -> str:
    """A Job state of `nb2prod status` (`Complete`, `Failed (...)`, `cached (RUN)`...)."""
    if state.startswith("Failed"):
        return "failed"
    return "cached" if state.startswith("cached") else JOB_STATES.get(state, "waiting")


def _from_cluster(folder: Path, record: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The cluster's view of a deploy whose process ended without an outcome (killed):
    its Jobs may still run there, so the cluster is followed, asked again at most every
    FOLLOW_SECONDS while a Job of the run runs or waits; once none does, the answer is
    final and kept beside the record (`cluster.json`): that deploy will not change,
    and a silent cluster must not slow every listing of the deploys."""
    from nb2prod.jupyter.launches import read_json, write_json

    kept = folder / "cluster.json"
    answer = read_json(kept)
    if answer is not None and (answer.get("final", True)
                               or time.time() - float(answer.get("time", 0)) < FOLLOW_SECONDS):
        return answer
    from nb2prod.errors import PipelineFailure, UserError

    try:
        states = _cluster_states(Path(record["pipeline_dir"]), record["namespace"],
                                 record.get("context"), run_id)
        live = any(state in LIVE_STATES for state in states.values())
        answer = {"states": states, "final": not live, "time": time.time()}
    except (PipelineFailure, UserError, ImportError, OSError, KeyError) as exc:
        # followed until now: keep following while the cluster may answer again (for
        # FOLLOW_GIVE_UP_SECONDS of errors in a row); else final
        since = float((answer or {}).get("error_since") or time.time())
        answer = {"states": (answer or {}).get("states", {}), "time": time.time(),
                  "error": f"cannot ask the cluster: {exc}", "error_since": since,
                  "final": answer is None or time.time() - since >= FOLLOW_GIVE_UP_SECONDS}
    write_json(kept, answer)
    return answer


def deploy_status(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    """One deploy as the panel shows it (see the module doc for where each part comes from)."""
    from nb2prod.progress import read_event_log

    events_file = folder / "events.jsonl"
    entries = read_event_log(events_file)
    stages: dict[str, dict[str, Any]] = {
        s["name"]: {"name": s["name"], "type": s.get("type"), "state": "waiting",
                    "message": "", "elapsed": 0.0} for s in record.get("stages") or []}
    result: dict[str, Any] | None = None
    error: str | None = None
    problems: list[dict[str, Any]] = []
    stopped: dict[str, Any] | None = None  # the stop note of a deploy stopped from the panel
    run_id = None
    since: dict[str, Any] = {}  # stage -> when it started running (its live clock)
    for entry in entries:
        event = entry.get("event")
        if isinstance(event, dict) and event.get("stage"):
            row = stages.setdefault(str(event["stage"]), {
                "name": str(event["stage"]), "type": None, "state": "waiting", "message": "",
                "elapsed": 0.0})
            state = str(event.get("state", row["state"]))
            if state == "running" and row["state"] != "running":
                since[row["name"]] = entry.get("time")
            row.update(state=state, message=str(event.get("message", "")),
                       elapsed=float(event.get("elapsed") or 0.0))
            run_id = event.get("run_id") or run_id
        elif isinstance(entry.get("result"), dict):
            result = entry["result"]
        elif "error" in entry:
            error = str(entry["error"])
            stopped = entry.get("stopped") if isinstance(entry.get("stopped"), dict) else None
            problems = [{**p, "position": p["cell"] + 1 if isinstance(p.get("cell"), int)
                         else None} for p in entry.get("problems") or [] if isinstance(p, dict)]
    log = folder / "output.log"
    if run_id is None:
        found = RUN_LINE.search(tail(log, 200))
        run_id = found.group(1) if found else None
    running = is_running(record)
    state = "running"
    for name, row in stages.items():
        if running and row["state"] == "running" and isinstance(since.get(name), float):
            row["elapsed"] = round(max(row["elapsed"], time.time() - since[name]), 1)
    following: str | None = None  # why the cluster, not the deploy, is followed
    cluster: dict[str, Any] = {}
    if not running:
        if result is None and stopped is None:  # a stop before the deploy could say so
            stopped = read_stop_note(folder / STOP_NOTE)
        state, error = _outcome(record, result, error, log, stopped)
        if result is None and not problems and run_id and stopped is None:
            # ended before it could say how (killed): its Jobs may still run
            cluster = _from_cluster(folder, record, run_id)
            for name, value in cluster.get("states", {}).items():
                if name in stages:
                    stages[name].update(state=value, message="as the cluster has it")
            if not cluster.get("final", True):
                following = f"{error}; its Jobs still run in the cluster: followed there"
                state, error = "running", cluster.get("error")
            elif cluster.get("error"):
                error = f"{error}; {cluster['error']}"
        unfinished = STOPPED_UNFINISHED if state == "stopped" else UNFINISHED
        for row in stages.values():
            if following and row["name"] in cluster.get("states", {}):
                continue  # still going in the cluster
            if row["state"] in unfinished:  # (a stage without a Job: nobody will start it)
                row["state"], row["message"] = unfinished[row["state"]]
                if row["state"] == "stopped" and stopped is not None:
                    row["message"] = stopped_text(stopped)
        failed = [row for row in stages.values() if row["state"] == "failed"]
        if failed and state not in ("stopped", "running"):
            state = "failed"
        if result is not None and failed and all(row["message"] for row in failed):
            # the reason is each failed stage's message, shown on its row: say which
            error = ", ".join(f"stage '{row['name']}'" for row in failed) + " failed"
    for row in stages.values():
        found = CELL_IN_MESSAGE.search(row["message"]) if row["state"] == "failed" else None
        row["cell"] = int(found.group(1)) - 1 if found else None  # for "Go to cell N"
    started = record.get("started") or time.time()
    end = None if running or following else (
        cluster.get("time") or record.get("finished") or _mtime(events_file, log))
    return {
        "id": record.get("id", folder.name), "state": state,
        "namespace": record.get("namespace"), "context": record.get("context"),
        "pipeline": record.get("pipeline"), "run_id": run_id,
        "stages": list(stages.values()), "problems": problems, "error": error,
        "started": started, "elapsed": round((end or time.time()) - started, 1),
        "services": {name: {k: svc.get(k) for k in ("status", "url", "proxy_url",
                                                     "port_forward", "model_run_id", "message")}
                     for name, svc in ((result or {}).get("services") or {}).items()},
        "exit_code": record.get("exit_code"), "output": tail(log), "log": log,
        "stopped": stopped if state == "stopped" else None, "following": following,
    }


def _outcome(record: dict[str, Any], result: dict[str, Any] | None, error: str | None,
             log: Path, stopped: dict[str, Any] | None) -> tuple[str, str | None]:
    """(state, error) of an ended deploy, from its result, else its stop note (stopped
    from the panel: not an error), else its error, else its output."""
    if result is not None:
        if result.get("status") == "succeeded" and record.get("exit_code") in (0, None):
            return "done", None
        status = str(result.get("status", "failed")).replace("_", " ")
        return "failed", f"{status}: {result.get('reason')}" if result.get("reason") else status
    if stopped is not None:
        return "stopped", None
    if error is not None:
        return "failed", error
    lines = [line for line in tail(log).splitlines() if line.strip()]
    code = record.get("exit_code")
    how = f"exit code {code}" if code is not None else "its process is gone"
    return "failed", f"the deploy ended without a result ({how})" + (
        f": {lines[-1].removeprefix('nb2prod: ')}" if lines else "")


def _mtime(*paths: Path) -> float | None:
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return max(times) if times else None


def deploy_options(data: dict[str, Any]) -> dict[str, Any]:
    """The request's optional deploy options (context, image, store, params), type-checked."""
    options: dict[str, Any] = {}
    for key in ("context", "image", "store"):
        value = data.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            raise refuse(400, f"'{key}' must be a string")
        if value.strip().startswith("-"):
            raise refuse(400, f"'{key}' must not start with '-'")
        options[key] = value.strip()
    params = params_option(data)
    if params:
        options["params"] = params
    return options


class DeployHandler(_PipelineDirMixin):
    """POST /nb2prod/deploy: preflight, split (if given a notebook), start the deploy.

    Body: {"path": notebook or pipeline dir, "namespace", optional "context",
    "image", "store", "params": {k: v}, "output" (pipeline dir when splitting),
    "force" (update an existing pipeline when splitting)}.  No cluster: 400/503
    before anything is split; split problems: 400; another deploy of this
    pipeline still running: 409; else 202 with the first status.
    GET /nb2prod/deploy?path=...: the pipeline's deploys, newest first.
    """

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        async def run() -> None:
            directory = self.pipeline_dir(self.get_query_argument("path", ""))
            found = await self.guarded(lambda: [
                deploy_status(folder, record) for folder, record in records(directory, "deploy")])
            self.finish(json.dumps(self.linked({"deploys": found}), default=str))

        await self.answer(run)

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        async def run() -> None:
            data = self.body()
            namespace = data.get("namespace")
            if not isinstance(namespace, str) or not namespace.strip():
                raise refuse(400, "'namespace' is required")
            namespace = namespace.strip()
            options = deploy_options(data)
            path = self.notebook(data, allow_dir=True)
            output = self.output(data, path) if path.is_file() else None  # confined: 403 first
            # Then the cluster: without one, say so before re-splitting anything.
            await self.guarded(lambda: preflight(options.get("context")))
            if output is not None:  # a notebook: split first, exactly like `nb2prod deploy NB`
                from nb2prod.split import split_notebook

                force = data.get("force", False) is True
                report = await self.guarded(
                    lambda: split_notebook(path, output, force=force, wait=False))
                pipeline = Path(report.to_dict()["output"]).resolve()
            else:
                pipeline = path
            from nb2prod.pipeline import load_pipeline

            loaded = await self.guarded(lambda: load_pipeline(pipeline))
            label = self.relative(pipeline) or pipeline.name
            busy = [r for _, r in records(pipeline, "deploy") if is_running(r)]
            if busy:
                raise refuse(409, f"deploy {busy[0]['id']} of this pipeline is still running",
                             label)
            stages = [{"name": name, "type": loaded.stages[name].type}
                      for name in loaded.order]
            record = await self.guarded(lambda: start_detached(
                pipeline, "deploy",
                lambda folder: deploy_command(pipeline, namespace, options,
                                              folder / "events.jsonl"),
                namespace=namespace, context=options.get("context"), pipeline=label,
                pipeline_dir=str(pipeline), stages=stages))
            folder = pipeline / LAUNCH_DIR / record["id"]
            self.set_status(202)
            self.set_header("Location", url_path_join(self.base_url, "nb2prod", "deploy",
                                                      record["id"]) + "?" + urlencode(
                                                          {"path": label}))
            self.finish(json.dumps(self.linked(deploy_status(folder, record)), default=str))

        await self.answer(run)


class DeployStatusHandler(_PipelineDirMixin):
    """GET /nb2prod/deploy/<id>?path=NB-or-DIR: one deploy's stage states and outcome."""

    @web.authenticated
    @authorized("read")
    async def get(self, deploy_id: str) -> None:
        async def run() -> None:
            directory = self.pipeline_dir(self.get_query_argument("path", ""))
            record = record_of(directory, "deploy", deploy_id)
            if record is None:
                raise refuse(404, f"no deploy with id {deploy_id}")
            folder = directory / LAUNCH_DIR / deploy_id
            status = await self.guarded(lambda: deploy_status(folder, record))
            self.finish(json.dumps(self.linked(status), default=str))

        await self.answer(run)


HANDLERS = [("deploy", DeployHandler), (r"deploy/([0-9a-z-]+)", DeployStatusHandler)]
