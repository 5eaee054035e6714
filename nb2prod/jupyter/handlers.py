"""REST handlers behind the JupyterLab toolbar: check, split, deploy, deploy status.

Every endpoint takes a notebook path relative to the server's root directory,
exactly like the contents API, and calls the same library functions as the
CLI, so the messages a user sees in the browser are the CLI's messages.

Security model (same as the rest of jupyter_server):
- ``@tornado.web.authenticated`` + jupyter_server's XSRF check on POST: a page
  on another origin cannot make the server split or deploy;
- ``@authorized`` with resource ``nb2prod`` (check=read, split=write,
  deploy=execute) so a custom Authorizer can restrict it;
- every path is resolved (symlinks followed) and must stay inside the
  server's ``root_dir``; anything else is 403, so ``../`` or a symlink cannot
  make the server read a notebook or write a pipeline elsewhere.

Splitting and deploying block (filesystem, importlib.metadata, Kubernetes
API), so they run in worker threads and never stall the event loop; a deploy
runs in a background thread and is polled through ``GET /nb2prod/deploy/<id>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from nb2prod.errors import PipelineFailure, Problem, UserError

#: Settings key holding the `DeployRegistry` of this server.
REGISTRY_KEY = "nb2prod_deploys"
#: Finished deploys kept for status queries (the oldest finished ones go first).
MAX_KEPT_DEPLOYS = 50
FINAL_STATES = ("done", "failed")

logger = logging.getLogger(__name__)


class Refusal(Exception):
    """Ends a request with an HTTP status and a list of problems."""

    def __init__(self, status: int, problems: list[Problem]) -> None:
        super().__init__(status)
        self.status = status
        self.problems = problems


def problem_dict(problem: Problem) -> dict[str, Any]:
    """A problem as the frontend gets it: `cell` counts from 0 (the notebook model's
    index), `position` from 1 (what JupyterLab's status bar shows, and `text` says)."""
    return {"message": problem.message, "cell": problem.cell, "file": problem.file,
            "position": None if problem.cell is None else problem.cell + 1,
            "text": str(problem)}


def refuse(status: int, message: str, file: str | None = None) -> Refusal:
    return Refusal(status, [Problem(message, file=file)])


def server_root(handler: Any) -> Path:
    """A handler's server root directory, symlinks resolved (the confinement boundary)."""
    root = handler.settings.get("server_root_dir") or handler.contents_manager.root_dir
    return Path(root).expanduser().resolve()


def inside(root: Path, path: Path) -> Path | None:
    """`path` with symlinks resolved if that is `root` or below it, else None."""
    candidate = Path(path).resolve()
    return candidate if candidate == root or root in candidate.parents else None


class Nb2prodHandler(APIHandler):
    """Shared request parsing, path confinement and error shape."""

    auth_resource = "nb2prod"

    @property
    def root_dir(self) -> Path:
        """The server's root directory, symlinks resolved (the confinement boundary)."""
        return server_root(self)

    def body(self) -> dict[str, Any]:
        """The JSON object posted; anything else is a 400 with a readable reason."""
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise refuse(400, f"request body is not JSON: {exc}") from None
        except RecursionError:
            raise refuse(400, "request body is nested too deeply") from None
        if not isinstance(data, dict):
            raise refuse(400, "request body must be a JSON object")
        return data

    def resolve(self, value: Any, what: str) -> Path:
        """A request path made absolute and confined to the root dir.

        Leading slashes are accepted the way the contents API accepts them
        (`/a.ipynb` is `a.ipynb` under the root); the result must be the root
        or below it after resolving `..` and symlinks, otherwise 403.
        """
        if not isinstance(value, str) or not value.strip():
            raise refuse(400, f"'{what}' must be a non-empty path relative to the server root")
        if "\0" in value:
            raise refuse(400, f"'{what}' contains a NUL character")
        return self.confine(self.root_dir / value.strip().lstrip("/"), what, value)

    def confine(self, path: Path, what: str, shown: str | None = None) -> Path:
        """`path` with symlinks resolved, which must be the root or below it (else 403).

        Used for every path a handler touches, also the ones it derives itself
        (the default pipeline directory beside a notebook): a symlink there must
        not make the server write, or move run history, outside its root.
        """
        candidate = inside(self.root_dir, path)
        if candidate is None:
            raise refuse(403, f"'{what}' is outside the server's root directory",
                         shown if shown is not None else self.relative_or_name(path))
        return candidate

    def relative_or_name(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.root_dir).as_posix()
        except ValueError:
            return Path(path).name

    def output(self, data: dict[str, Any], notebook: Path) -> Path:
        """The `output` field, else the default pipeline dir of `notebook`; confined."""
        from nb2prod.split import default_output

        given = self.optional_path(data, "output")
        return given if given is not None else self.confine(default_output(notebook), "output")

    def relative(self, path: Path | str | None) -> str | None:
        """`path` relative to the root (what the frontend shows), if it is inside it."""
        if path is None:
            return None
        try:
            return Path(path).resolve().relative_to(self.root_dir).as_posix()
        except ValueError:
            return None

    def notebook(self, data: dict[str, Any], allow_dir: bool = False) -> Path:
        """The `path` field, which must name an existing notebook (or dir, if allowed)."""
        path = self.resolve(data.get("path"), "path")
        if path.is_file() or (allow_dir and path.is_dir()):
            return path
        raise refuse(404, "no such notebook" if not allow_dir else "no such notebook or "
                      "pipeline directory", data.get("path"))

    def optional_path(self, data: dict[str, Any], key: str) -> Path | None:
        value = data.get(key)
        return None if value in (None, "") else self.resolve(value, key)

    def send_problems(self, status: int, problems: list[Problem]) -> None:
        """The error shape of every nb2prod endpoint: `{"problems": [...]}`."""
        self.set_status(status)
        payload = [problem_dict(p) for p in problems]
        self.finish(json.dumps({"problems": payload,
                                "message": "\n".join(p["text"] for p in payload)}))

    def send_report(self, report: Any) -> None:
        data = report.to_dict()
        data["output_relative"] = self.relative(data.get("output"))
        self.finish(json.dumps(data, default=str))

    async def guarded(self, work: Callable[[], Any]) -> Any:
        """Run blocking `work` in a thread; map its failures to our error shape."""
        try:
            return await asyncio.to_thread(work)
        except UserError as exc:
            raise Refusal(400, exc.problems) from None
        except PipelineFailure as exc:
            raise refuse(500, str(exc)) from None

    async def answer(self, coro: Callable[[], Any]) -> None:
        """Call a request body and turn `Refusal` / surprises into JSON errors."""
        try:
            await coro()
        except Refusal as refusal:
            self.send_problems(refusal.status, refusal.problems)
        except web.HTTPError:
            raise
        except Exception as exc:  # a bug: log the traceback, tell the user one line
            self.log.exception("nb2prod: %s failed", self.request.path)
            self.send_problems(500, [Problem(f"internal error: {type(exc).__name__}: {exc}")])


class CheckHandler(Nb2prodHandler):
    """POST /nb2prod/check {"path"[, "templates"]}: analysis only, writes nothing."""

    @web.authenticated
    @authorized("read")
    async def post(self) -> None:
        async def run() -> None:
            data = self.body()
            path = self.notebook(data)
            templates = self.optional_path(data, "templates")
            from nb2prod.split import check_notebook

            report = await self.guarded(lambda: check_notebook(path, templates=templates))
            self.send_report(report)

        await self.answer(run)


class SplitHandler(Nb2prodHandler):
    """POST /nb2prod/split {"path"[, "output", "force", "templates"]}: write the pipeline."""

    @web.authenticated
    @authorized("write")
    async def post(self) -> None:
        async def run() -> None:
            data = self.body()
            path = self.notebook(data)
            output = self.output(data, path)
            templates = self.optional_path(data, "templates")
            force = data.get("force", False) is True
            from nb2prod.split import split_notebook

            report = await self.guarded(lambda: split_notebook(
                path, output, force=force, templates=templates, wait=False))
            self.send_report(report)

        await self.answer(run)


# -- deploy ----------------------------------------------------------------------------
@dataclass
class DeployRecord:
    """What one background deploy has reported so far (guarded by `lock`)."""

    id: str
    namespace: str
    pipeline: Path
    pipeline_label: str
    started: float = field(default_factory=time.monotonic)
    state: str = "running"  # running | done | failed
    stages: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    problems: list[Problem] = field(default_factory=list)
    error: str | None = None
    finished: float | None = None
    result: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_event(self, event: dict[str, Any]) -> None:
        """The `on_event` callback given to `deploy`: keep the latest state per stage."""
        name = str(event.get("stage", ""))
        if not name:
            return
        with self.lock:
            stage = self.stages.setdefault(name, {"name": name, "state": "waiting",
                                                  "message": "", "elapsed": 0.0})
            stage["state"] = str(event.get("state", stage["state"]))
            stage["message"] = str(event.get("message", ""))
            try:
                stage["elapsed"] = float(event.get("elapsed", stage["elapsed"]))
            except (TypeError, ValueError):
                pass

    def finish(self, state: str, *, error: str | None = None,
               problems: list[Problem] | None = None, result: Any = None) -> None:
        with self.lock:
            if state == "done" and any(s["state"] == "failed" for s in self.stages.values()):
                state = "failed"  # a stage failed even if deploy returned normally
            self.state, self.error, self.result = state, error, result
            self.problems = list(problems or [])
            self.finished = time.monotonic()

    def status(self) -> dict[str, Any]:
        """The JSON the frontend polls."""
        with self.lock:
            end = self.finished if self.finished is not None else time.monotonic()
            return {
                "id": self.id,
                "state": self.state,
                "namespace": self.namespace,
                "pipeline": self.pipeline_label,
                "stages": [dict(s) for s in self.stages.values()],
                "problems": [problem_dict(p) for p in self.problems],
                "error": self.error,
                "elapsed": round(end - self.started, 3),
                "result": _jsonable(self.result),
            }


def _jsonable(value: Any) -> Any:
    """`value` if it survives JSON, else its JSON-with-str-fallback round trip."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


class DeployRegistry:
    """The deploys this server started; lives in the tornado settings."""

    def __init__(self) -> None:
        self._records: OrderedDict[str, DeployRecord] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, deploy_id: str) -> DeployRecord | None:
        with self._lock:
            return self._records.get(deploy_id)

    def all(self) -> list[DeployRecord]:
        with self._lock:
            return list(self._records.values())

    def start(self, namespace: str, pipeline: Path, label: str) -> DeployRecord:
        """Register a deploy; 409 if the same pipeline is already deploying here."""
        with self._lock:
            for record in self._records.values():
                if record.pipeline == pipeline and record.state == "running":
                    raise refuse(409, f"deploy {record.id} of this pipeline is still running",
                                  label)
            record = DeployRecord(secrets.token_hex(8), namespace, pipeline, label)
            self._records[record.id] = record
            finished = [k for k, r in self._records.items() if r.state in FINAL_STATES]
            for key in finished[: max(0, len(self._records) - MAX_KEPT_DEPLOYS)]:
                del self._records[key]
            return record


def _load_deploy() -> Callable[..., dict[str, Any]]:
    """`nb2prod.runners.kubernetes.deploy`, imported late (kubernetes is a heavy import)."""
    from nb2prod.runners.kubernetes import deploy

    return deploy


def _load_cluster_check() -> Callable[[str | None], dict[str, str]]:
    """`nb2prod.runners.kubernetes.cluster_check`, imported late (a heavy import)."""
    from nb2prod.runners.kubernetes import cluster_check

    return cluster_check


def preflight(context: str | None) -> dict[str, str]:
    """The cluster answers (else 400 without a kubeconfig, 503 when it does not answer)."""
    try:
        check = _load_cluster_check()
    except ImportError as exc:
        raise refuse(501, f"deploying is not available in this installation: {exc}") from None
    try:
        return check(context)
    except PipelineFailure as exc:
        raise refuse(503, str(exc)) from None


def _run_deploy(record: DeployRecord, deploy: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Body of the deploy thread: every outcome ends in `record.finish`."""
    try:
        result = deploy(record.pipeline, record.namespace, on_event=record.on_event,
                        wait=True, **kwargs)
    except UserError as exc:
        record.finish("failed", error="; ".join(str(p) for p in exc.problems),
                      problems=exc.problems)
    except PipelineFailure as exc:
        record.finish("failed", error=str(exc) or "a stage failed")
    except Exception as exc:  # the thread must always leave a final state behind
        logger.exception("nb2prod: deploy %s failed", record.id)
        record.finish("failed", error=f"{type(exc).__name__}: {exc}")
    else:
        failed = isinstance(result, dict) and (
            result.get("ok") is False or result.get("state") == "failed")
        record.finish("failed" if failed else "done", result=result)


class DeployHandler(Nb2prodHandler):
    """POST /nb2prod/deploy: split (if given a notebook), then deploy in the background.

    Body: {"path": notebook or pipeline dir, "namespace", optional "context",
    "image", "store", "params": {k: v}, "output" (pipeline dir when splitting),
    "force" (update an existing pipeline when splitting)}.  Split problems
    come back at once as 400; the answer to a started deploy is 202 with its
    first status (`id`, stage list) — poll `GET /nb2prod/deploy/<id>`.
    GET /nb2prod/deploy lists the deploys this server started.
    """

    @property
    def registry(self) -> DeployRegistry:
        return self.settings[REGISTRY_KEY]

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        self.finish(json.dumps({"deploys": [r.status() for r in self.registry.all()]}))

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        async def run() -> None:
            data = self.body()
            namespace = data.get("namespace")
            if not isinstance(namespace, str) or not namespace.strip():
                raise refuse(400, "'namespace' is required")
            kwargs = self._deploy_options(data)
            path = self.notebook(data, allow_dir=True)
            output = self.output(data, path) if path.is_file() else None  # confined: 403 first
            # Then the cluster: without one, say so before re-splitting anything.
            await self.guarded(lambda: preflight(kwargs.get("context")))
            stages: list[dict[str, Any]] = []
            if output is not None:  # a notebook: split first, exactly like `nb2prod deploy NB`
                force = data.get("force", False) is True
                from nb2prod.split import split_notebook

                report = await self.guarded(
                    lambda: split_notebook(path, output, force=force, wait=False))
                split = report.to_dict()
                stages = split.get("stages", [])
                pipeline = Path(split["output"]).resolve()
            else:
                pipeline = path
            try:
                deploy = _load_deploy()
            except ImportError as exc:
                raise refuse(501, f"deploying is not available in this installation: {exc}") \
                    from None
            label = self.relative(pipeline) or pipeline.name
            record = self.registry.start(namespace.strip(), pipeline, label)
            for stage in stages:
                record.stages[stage["name"]] = {"name": stage["name"], "type": stage.get("type"),
                                                "state": "waiting", "message": "",
                                                "elapsed": 0.0}
            threading.Thread(target=_run_deploy, args=(record, deploy, kwargs),
                             name=f"nb2prod-deploy-{record.id}", daemon=True).start()
            self.set_status(202)
            self.set_header("Location", url_path_join(self.base_url, "nb2prod", "deploy",
                                                      record.id))
            self.finish(json.dumps(record.status()))

        await self.answer(run)

    def _deploy_options(self, data: dict[str, Any]) -> dict[str, Any]:
        """The optional keyword arguments of `deploy`, type-checked."""
        options: dict[str, Any] = {}
        for key in ("context", "image", "store"):
            value = data.get(key)
            if value in (None, ""):
                continue
            if not isinstance(value, str):
                raise refuse(400, f"'{key}' must be a string")
            options[key] = value.strip()
        params = params_option(data)
        if params:
            options["params"] = params
        return options


def params_option(data: dict[str, Any]) -> dict[str, str]:
    """The request's `params` ({name: value}, values as text like `--param k=v`)."""
    params = data.get("params")
    if params in (None, {}):
        return {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise refuse(400, "'params' must be an object of name: value")
    return {k: str(v) for k, v in params.items()}


class KubeHandler(Nb2prodHandler):
    """GET /nb2prod/kube: the kubeconfig's contexts (and current one) for the deploy form."""

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        async def run() -> None:
            def contexts() -> dict[str, Any]:
                from nb2prod.runners.kubernetes import kubeconfig_contexts

                return kubeconfig_contexts()

            try:
                answer = await asyncio.to_thread(contexts)
            except ImportError as exc:
                answer = {"contexts": [], "current": None, "error": str(exc)}
            self.finish(json.dumps(answer))

        await self.answer(run)


class DeployStatusHandler(Nb2prodHandler):
    """GET /nb2prod/deploy/<id>: stage states so far and the overall state."""

    @web.authenticated
    @authorized("read")
    async def get(self, deploy_id: str) -> None:
        record = self.settings[REGISTRY_KEY].get(deploy_id)
        if record is None:
            self.send_problems(404, [Problem(f"no deploy with id {deploy_id}")])
            return
        self.finish(json.dumps(record.status()))


def setup_handlers(web_app: Any) -> None:
    """Mount the handlers under the server's base URL."""
    web_app.settings.setdefault(REGISTRY_KEY, DeployRegistry())
    base = url_path_join(web_app.settings.get("base_url", "/"), "nb2prod")
    from nb2prod.jupyter import panel, runs

    routes = [("check", CheckHandler), ("split", SplitHandler), ("deploy", DeployHandler),
              (r"deploy/([0-9a-f]+)", DeployStatusHandler),
              ("kube", KubeHandler), ("pipeline", panel.PipelineHandler), *runs.HANDLERS]
    web_app.add_handlers(".*$", [(url_path_join(base, route), handler)
                                 for route, handler in routes])
