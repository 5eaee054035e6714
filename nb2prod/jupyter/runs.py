"""Local runs from JupyterLab: start `nb2prod run`, list runs, open their reports.

- ``POST /nb2prod/run`` splits the notebook (like `nb2prod run NOTEBOOK`) and
  starts ``python -m nb2prod run DIR --no-serve`` (or, "Run and serve", with
  serving: it keeps the services up until stopped; `--port` from the Port field,
  checked free first) as a detached launch
  (`launches.py`: not a child of the browser tab, recorded on disk, so a
  reopened panel, even of a restarted server, finds it again); the run's own
  state comes from its ``run.json``, a serving launch's URLs and sample curl
  from its console output.
- ``POST /nb2prod/run/<id>/stop`` writes a stop note (who, when) and sends SIGTERM
  to the run (nb2prod stops every stage and server and records the run as
  `stopped` by that user); ``POST /nb2prod/deploy/<id>/stop`` does the same to a
  detached deploy (it deletes its running Jobs, as on Ctrl-C; what it already
  created otherwise stays until ``nb2prod delete``).
- ``GET /nb2prod/runs?path=NB-or-DIR[&run=ID]`` lists runs with stage states,
  durations, `cached`, metrics and the promotion verdict, the launches, and the
  graph of one run (default the newest), as `nb2prod graph --run` models it.
- ``GET /nb2prod/file?path=REL`` serves a run's executed notebook, HTML report
  or log.  Those live in the artifact store, a hidden ``.nb2prod/`` directory
  the contents API will not serve; this handler serves only files laid out as
  ``runs/<run>/<stage>/<file>`` or a launch's output, inside the server root.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from nb2prod.jupyter.handlers import (
    Nb2prodHandler,
    authorized,
    inside,
    params_option,
    refuse,
    server_root,
)
from nb2prod.jupyter.launches import (
    LAUNCH_DIR,
    STOP_NOTE,
    head,
    is_running,
    record_of,
    records,
    start_detached,
    tail,
    terminate,
)
from nb2prod.runners.interrupts import read_stop_note

#: The CLI's first line about a run: "run <id>: N batch stage(s), store URI".
RUN_LINE = re.compile(r"^run (\S+): \d+ batch stage", re.MULTILINE)
#: What a serving run prints per service: "serving NAME (run ID) at URL" + "  try: curl ...".
SERVING_LINES = re.compile(r"^serving (\S+) \(run (\S+)\) at (\S+)\n  try: (curl .*)$",
                           re.MULTILINE)
#: Content types of the run files the file handler serves.
FILE_TYPES = {".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8",
              ".log": "text/plain; charset=utf-8", ".ipynb": "application/x-ipynb+json"}
#: The files a stage leaves in its run directory, by what the panel calls them.
STAGE_FILES = {"html": "{stem}.html", "notebook": "{stem}.ipynb", "log": "log.txt"}


# -- launches (a launch = one `nb2prod run` process started from the panel) -----------
def run_command(pipeline_dir: Path, serve: bool, params: dict[str, str],
                no_cache: bool, port: int | None = None) -> list[str]:
    """The `nb2prod run` command line a launch executes."""
    command = [sys.executable, "-m", "nb2prod", "run", str(pipeline_dir)]
    command += ([] if port is None else ["--port", str(port)]) if serve else ["--no-serve"]
    command += [arg for k, v in params.items() for arg in ("--param", f"{k}={v}")]
    return command + (["--no-cache"] if no_cache else [])


def launch_status(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    """A launch as the panel shows it: running or exited, its run id, its output's tail."""
    log = folder / "output.log"
    text = head(log, 256 * 1024)
    found = RUN_LINE.search(text)
    running = is_running(record)
    services = [{"name": m.group(1), "run_id": m.group(2), "url": m.group(3),
                 "curl": m.group(4)} for m in SERVING_LINES.finditer(text)] if running else []
    return {"id": record.get("id", folder.name), "started": record.get("started"),
            "finished": record.get("finished"), "state": "running" if running else "exited",
            "exit_code": record.get("exit_code"), "run_id": found.group(1) if found else None,
            "serve": record.get("serve", False), "services": services,
            "output": tail(log), "log": log,
            "stopped": read_stop_note(folder / STOP_NOTE)}  # by whom, when (the Stop button)


def launches(pipeline_dir: Path) -> list[dict[str, Any]]:
    """Every run launch recorded in the pipeline directory, newest first."""
    return [launch_status(folder, record) for folder, record in records(pipeline_dir, "run")]


# -- runs ------------------------------------------------------------------------------
def stage_files(store: Any, pipeline: Any, run_id: str) -> dict[str, dict[str, Path]]:
    """{stage: {html|notebook|log: local path}} of a run in a file store (else empty)."""
    from nb2prod.artifacts import FileStore, run_prefix

    if not isinstance(store, FileStore):
        return {}
    found: dict[str, dict[str, Path]] = {}
    for name, spec in pipeline.stages.items():
        stem = Path(spec.executable).stem
        for label, pattern in STAGE_FILES.items():
            key = f"{run_prefix(pipeline.name, run_id)}/{name}/{pattern.format(stem=stem)}"
            if store.exists(key):
                found.setdefault(name, {})[label] = store.root / key
    return found


def live_seconds(record: dict[str, Any]) -> dict[str, float]:
    """{stage: seconds so far} of the stages a running run is running (run.json has a
    stage's seconds only once it ends; its start while it runs)."""
    from nb2prod.runners.local import displayed_status

    if displayed_status(record) != "running":
        return {}
    return {name: round(max(0.0, time.time() - stage["started"]), 1)
            for name, stage in (record.get("stages") or {}).items()
            if stage.get("status") == "running" and isinstance(stage.get("started"), float)}


def run_summary(record: dict[str, Any], files: dict[str, dict[str, Path]]) -> dict[str, Any]:
    """One run for the panel's list: status (`interrupted` for a dead runner), the gate's
    verdict on a run it held back (as `nb2prod runs` says it), stages, links."""
    from nb2prod.run_verdict import promotion_verdict
    from nb2prod.runners.local import displayed_status

    started, finished = record.get("started"), record.get("finished")
    numbers = (int, float)
    stages = {}
    for name, stage in (record.get("stages") or {}).items():
        stages[name] = {k: stage.get(k) for k in (
            "status", "seconds", "cached_from", "message", "cell", "reason")
            if stage.get(k) is not None}
        stages[name]["files"] = files.get(name, {})
    for name, seconds in live_seconds(record).items():
        stages[name]["seconds"] = seconds
    return {
        "run_id": record.get("run_id"), "status": displayed_status(record),
        "started": started, "finished": finished,
        "seconds": round(finished - started, 1) if isinstance(started, numbers)
        and isinstance(finished, numbers) else None,
        "metrics": record.get("metrics") or {}, "promoted": record.get("promoted"),
        "reason": record.get("reason") or "", "latest": record.get("latest", False),
        "verdict": promotion_verdict(record),
        "params": record.get("params") or {}, "stages": stages,
    }


def runs_answer(pipeline_dir: Path, run_id: str | None) -> dict[str, Any]:
    """Runs, launches and one run's graph of a split pipeline (blocking)."""
    from nb2prod import artifacts
    from nb2prod.graph import graph_for
    from nb2prod.pipeline import load_pipeline

    pipeline = load_pipeline(pipeline_dir)
    store = artifacts.open_store(pipeline.store_uri())
    records = artifacts.list_runs(store, pipeline.name)
    runs = [run_summary(r, stage_files(store, pipeline, r["run_id"]))
            for r in reversed(records)]
    known = {r["run_id"]: r for r in records}
    graph = graph_for(pipeline_dir, run_id if run_id in known else None).to_dict()
    running = live_seconds(known.get(graph.get("run_id") or "", {}))
    for node in graph.get("nodes") or []:
        node["seconds"] = running.get(node["name"], node.get("seconds"))
    return {"pipeline": pipeline.name, "runs": runs, "launches": launches(pipeline_dir),
            "graph": graph}


def port_option(data: dict[str, Any]) -> int | None:
    """The request's `port` (the panel's Port field): None (each service's config.ini
    PORT, as `nb2prod run` without --port), else an integer 1-65535 (digits as text too)."""
    value = data.get("port")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isascii() and text.isdigit():
        text = int(text)
    if not isinstance(text, int) or isinstance(text, bool) or not 0 < text < 65536:
        raise refuse(400, f"'port' must be a TCP port, an integer from 1 to 65535 "
                     f"(got {json.dumps(value)})")
    return text


def check_ports(pipeline_dir: Path, port: int | None) -> None:
    """The service ports a serving run will bind are free now (else the CLI's one-line
    UserError, naming the Port field): said at once, not after training."""
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import services

    pipeline = load_pipeline(pipeline_dir)
    if pipeline.services:
        services.reserve_ports(pipeline, pipeline.services, port,
                               option="the Port field").release()


class _PipelineDirMixin(Nb2prodHandler):
    def pipeline_dir(self, value: Any) -> Path:
        """A notebook's default pipeline dir (confined) or a pipeline dir given as is."""
        from nb2prod.split import default_output

        path = self.notebook({"path": value}, allow_dir=True)
        return path if path.is_dir() else self.confine(default_output(path), "output")

    def linked(self, answer: Any) -> Any:
        """Every Path in `answer` made relative to the root; None when it is outside."""
        if isinstance(answer, dict):
            return {k: self.linked(v) for k, v in answer.items()}
        if isinstance(answer, list):
            return [self.linked(v) for v in answer]
        return self.relative(answer) if isinstance(answer, Path) else answer


class RunsHandler(_PipelineDirMixin):
    """GET /nb2prod/runs?path=NB-or-DIR[&run=ID]: runs, launches, a run's graph."""

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        async def run() -> None:
            directory = self.pipeline_dir(self.get_query_argument("path", ""))
            if not (directory / "nb2prod.ini").is_file():
                self.finish(json.dumps({"pipeline": None, "runs": [], "launches": [],
                                        "graph": None}))
                return
            run_id = self.get_query_argument("run", None)
            answer = await self.guarded(lambda: runs_answer(directory, run_id))
            self.finish(json.dumps(self.linked(answer), default=str))

        await self.answer(run)


class RunHandler(_PipelineDirMixin):
    """POST /nb2prod/run {"path", "serve"?, "port"?, "params"?, "no_cache"?}: start a run.

    A notebook is split first (updating its default pipeline dir, as `nb2prod
    run NOTEBOOK` does), so split problems come back at once as 400; so do a
    `port` that is not 1-65535 and, when serving, a service port already taken.  The answer
    is 202 with the launch; `GET /nb2prod/runs` follows it.  409 while another
    launch of the same pipeline still runs.
    """

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        async def run() -> None:
            data = self.body()
            params = params_option(data)
            serve = data.get("serve") is True
            port = port_option(data)
            path = self.notebook(data, allow_dir=True)
            directory = self.pipeline_dir(data.get("path"))
            if path.is_file():
                from nb2prod.split import split_notebook

                await self.guarded(lambda: split_notebook(path, directory, force=True,
                                                          wait=False))
            else:
                from nb2prod.pipeline import load_pipeline

                await self.guarded(lambda: load_pipeline(directory))
            busy = [x for x in launches(directory) if x["state"] == "running"]
            if busy:
                raise refuse(409, f"run {busy[0]['run_id'] or busy[0]['id']} of this pipeline "
                             "is still running", self.relative(directory))
            if serve:
                await self.guarded(lambda: check_ports(directory, port))
            command = run_command(directory, serve, params, data.get("no_cache") is True,
                                  port)
            record = await self.guarded(
                lambda: start_detached(directory, "run", lambda _folder: command, serve=serve))
            status = launch_status(directory / LAUNCH_DIR / record["id"], record)
            self.set_status(202)
            self.finish(json.dumps(self.linked({"pipeline_dir": directory, "launch": status})))

        await self.answer(run)


class StopHandler(_PipelineDirMixin):
    """POST /nb2prod/{run,deploy}/<id>/stop {"path"}: SIGTERM to a running launch
    (like Ctrl-C), after a stop note naming the user: the run or deploy then records
    itself as stopped by them; both kinds are detached processes of `launches.py`."""

    def user_name(self) -> str:
        """Who is stopping it, as jupyter_server knows the user (a name, not a secret)."""
        user = self.current_user
        for attribute in ("display_name", "name", "username"):
            value = getattr(user, attribute, None)
            if isinstance(value, str) and value.strip():
                return value.strip()
        return str(user) if isinstance(user, str) and user else "a JupyterLab user"

    @web.authenticated
    @authorized("execute")
    async def post(self, kind: str, launch_id: str) -> None:
        async def run() -> None:
            directory = self.pipeline_dir(self.body().get("path"))
            record = record_of(directory, kind, launch_id)
            if record is None:
                raise refuse(404, f"no {kind} launch {launch_id}")
            terminate(record, directory / LAUNCH_DIR / launch_id, self.user_name())
            self.finish(json.dumps({"id": launch_id, "stopping": True}))

        await self.answer(run)


class RunFileHandler(JupyterHandler):
    """GET /nb2prod/file?path=REL: a run's report, notebook or log (see module doc)."""

    auth_resource = "nb2prod"

    @property
    def content_security_policy(self) -> str:
        # A report is HTML the user's code produced: its scripts get a unique
        # origin, so they cannot call the server's API (as jupyter's /files does).
        return super().content_security_policy + "; sandbox allow-scripts"

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        value = self.get_query_argument("path", "")
        if not value.strip() or "\0" in value:
            raise web.HTTPError(400, "path required")
        root = server_root(self)
        path = inside(root, root / value.strip().lstrip("/"))
        if path is None:
            raise web.HTTPError(403, "outside the server's root directory")
        parts = path.relative_to(root).parts
        is_run_file = len(parts) >= 4 and parts[-4] == "runs"
        is_launch_log = parts[-4:-2] == LAUNCH_DIR.parts and parts[-1] == "output.log"
        kind = FILE_TYPES.get(path.suffix.lower())
        if not (is_run_file or is_launch_log) or kind is None:
            raise web.HTTPError(403, "not a run's report, notebook or log")
        if not path.is_file():
            raise web.HTTPError(404, "no such file")
        self.set_header("Content-Type", kind)
        if path.suffix == ".ipynb":
            self.set_header("Content-Disposition", f'attachment; filename="{path.name}"')
        self.finish(path.read_bytes())


HANDLERS = [
    ("runs", RunsHandler),
    ("run", RunHandler),
    (r"(run|deploy)/([0-9a-z-]+)/stop", StopHandler),
    ("file", RunFileHandler),
]
