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

Splitting and checking block (filesystem, importlib.metadata, Kubernetes
API), so they run in worker threads and never stall the event loop.  A deploy
is a detached `nb2prod deploy` process (``deploys.py``), a local run a
detached `nb2prod run` (``runs.py``): both outlive the tab and the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from nb2prod.errors import PipelineFailure, Problem, UserError

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


# -- deploy (the handlers: deploys.py) ------------------------------------------------
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


def setup_handlers(web_app: Any) -> None:
    """Mount the handlers under the server's base URL."""
    base = url_path_join(web_app.settings.get("base_url", "/"), "nb2prod")
    from nb2prod.jupyter import deploys, panel, runs

    routes = [("check", CheckHandler), ("split", SplitHandler), *deploys.HANDLERS,
              ("kube", KubeHandler), ("pipeline", panel.PipelineHandler),
              ("roles", panel.RolesHandler), *runs.HANDLERS]
    web_app.add_handlers(".*$", [(url_path_join(base, route), handler)
                                 for route, handler in routes])
