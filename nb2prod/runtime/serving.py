"""A service stage's start-up: settings (split's defaults < config.ini < environment), the
stage notebook's code cells run once in a module namespace, readiness across gunicorn
workers.

Each gunicorn worker imports the stage's app.py, so each runs the start-up and keeps its
own state.  /readyz answers 200 only once all NB2PROD_WORKERS workers finished start-up
(markers in the temp dir).  Only the standard library here (Flask in `web`), so a stage
runs without nb2prod installed."""

from __future__ import annotations

import atexit
import configparser
import gc
import json
import linecache
import logging
import os
import platform
import re
import sys
import tempfile
import threading
import time
import traceback
import types
from importlib import metadata
from pathlib import Path

from .files import prepare_workdir
from .stage_env import current_input_run_id

HERE = ""  # the stage directory: set by configure()
TEMPLATE_DEFAULTS: dict = {}  # what split wrote into app.py: set by configure()

STAGE_MODULE = "__nb2prod_stage__"
#: Cell magics whose body is Python (same list as nb2prod's data-flow analysis, so the
#: cells split counted as providing a name are the cells that run here).
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})
RESERVED_PATHS = frozenset({"/healthz", "/readyz", "/info", "/metrics"})

log = logging.getLogger("nb2prod.app")
if not log.handlers:  # gunicorn configures only its own loggers; ours must reach stderr too
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(
        logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] nb2prod: %(message)s")
    )
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class ConfigError(Exception):
    """A config.ini or environment value the service cannot run with."""


# --------------------------------------------------------------------------- settings


def load_settings(config_path: str) -> dict:
    """Merge template defaults, config.ini and environment (in increasing priority).

    Read at start-up, not at render time, so a user's edit to config.ini takes effect on
    the next restart without re-running split.  Bad values raise, which makes gunicorn
    refuse to boot with a message naming the key instead of serving something wrong.
    """
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"), interpolation=None, strict=False
    )
    try:
        parser.read(config_path, encoding="utf-8")
    except configparser.Error as exc:
        raise ConfigError(f"{config_path}: {exc}") from None

    def option(section: str, *keys: str) -> str | None:
        for key in keys:
            if parser.has_option(section, key):
                value = parser.get(section, key).strip()
                if value:
                    return value
        return None

    s = dict(TEMPLATE_DEFAULTS)
    s["pipeline"] = (
        os.environ.get("NB2PROD_PIPELINE") or option("default", "PIPELINE") or s["pipeline"]
    )
    s["stage"] = os.environ.get("NB2PROD_STAGE") or option("default", "NAME") or s["stage"]
    s["executable"] = option("default", "EXECUTABLE", "EXECUTABLE_SCRIPT") or s["executable"]
    s["route"] = option("service", "ROUTE") or s["route"]
    s["entrypoint"] = option("service", "ENTRYPOINT") or s["entrypoint"]
    raw_limit = option("service", "MAX_REQUEST_BYTES")
    if raw_limit is not None:
        try:
            s["max_request_bytes"] = int(raw_limit)
        except ValueError:
            s["max_request_bytes"] = -1
        if s["max_request_bytes"] <= 0:
            raise ConfigError(
                f"{config_path}: [service] MAX_REQUEST_BYTES must be a positive integer, "
                f"got {raw_limit!r}"
            )
    route = s["route"].strip()
    if not route.startswith("/"):
        route = "/" + route
    if len(route) > 1:
        route = route.rstrip("/")
    if route in RESERVED_PATHS or route == "/" or any(c in route for c in "<> \t?#"):
        raise ConfigError(f"{config_path}: [service] ROUTE {route!r} is reserved or invalid")
    s["route"] = route
    if not s["entrypoint"].isidentifier():
        raise ConfigError(
            f"{config_path}: [service] ENTRYPOINT {s['entrypoint']!r} is not a Python name"
        )
    token = os.environ.get("NB2PROD_API_TOKEN")
    if token is not None:
        # Secrets created from files often end in a newline; a header value cannot.
        token = token.strip()
        if not token:
            # Fail closed: an empty secret is a misconfiguration, not a request for no auth.
            raise ConfigError("NB2PROD_API_TOKEN is set but empty; unset it or give a token")
    s["token"] = token
    raw_wait = os.environ.get("NB2PROD_READY_WAIT_SECONDS", "5")
    try:
        s["ready_wait"] = float(raw_wait)
    except ValueError:
        s["ready_wait"] = -1.0
    if not 0 <= s["ready_wait"] <= 300:
        raise ConfigError(f"NB2PROD_READY_WAIT_SECONDS must be 0..300, got {raw_wait!r}")
    raw_workers = os.environ.get("NB2PROD_WORKERS", "1")
    s["workers"] = int(raw_workers) if raw_workers.strip().isdigit() else 0
    if s["workers"] < 1:
        raise ConfigError(f"NB2PROD_WORKERS must be a positive integer, got {raw_workers!r}")
    # A nonce per server start (set by `nb2prod run`): /readyz echoes it so the runner
    # knows the server answering is the one it just started, not another on the port.
    s["instance"] = os.environ.get("NB2PROD_INSTANCE") or None
    return s


SETTINGS: dict = {}  # filled in place by configure(), so importers share it


def configure(stage_dir: str, defaults: dict) -> dict:
    """Settings of the stage in `stage_dir`: what split wrote into app.py (`defaults`) <
    config.ini < environment.  Read at start-up, not at render time, so a user's edit to
    config.ini takes effect on the next restart without re-running split."""
    global HERE
    HERE = stage_dir
    os.environ["NB2PROD_STAGE_DIR"] = stage_dir  # where the runtime finds config.ini
    TEMPLATE_DEFAULTS.clear()
    TEMPLATE_DEFAULTS.update({"max_request_bytes": 1048576, **defaults})
    VERSIONS["nb2prod"] = TEMPLATE_DEFAULTS.pop("nb2prod_version", None)
    SETTINGS.clear()
    SETTINGS.update(load_settings(os.path.join(HERE, "config.ini")))
    token = SETTINGS["token"]
    SETTINGS["token_bytes"] = token.encode("utf-8") if token else None
    SETTINGS["drain_limit"] = max(4 * SETTINGS["max_request_bytes"], 16 * 1024 * 1024)
    return SETTINGS


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


VERSIONS = {
    "python": platform.python_version(),
    "flask": _version("flask"),
    "werkzeug": _version("werkzeug"),
    "gunicorn": _version("gunicorn"),
    "nb2prod": None,  # configure()
}


# --------------------------------------------------------------------------- start-up


def _cell_source(cell: dict) -> str:
    src = cell.get("source", cell.get("input", ""))
    return src if isinstance(src, str) else "".join(src)


_ASSIGN_MAGIC = re.compile(r"^(\s*)([A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*)\s*=\s*[%!]")


def python_source(source: str) -> str:
    """Return the Python to run for one cell: IPython syntax removed, line numbers kept.

    A cell that already parses runs as is (so `a % b` spread over lines is left alone).
    Otherwise `%%magic` cells are dropped unless their body is Python, and `%line`,
    `!shell` and `obj?` lines become `pass` (`x = !cmd` becomes `x = None`) so that
    indentation stays valid and tracebacks point at the notebook's own line numbers.
    IPython itself is not imported: it is not a dependency of the service image.
    """
    try:
        compile(source, "<cell>", "exec", dont_inherit=True)
        return source
    except SyntaxError:
        pass
    lines = source.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        words = lines[first].lstrip()[2:].split()
        name = words[0] if words else ""
        if name not in PYTHON_CELL_MAGICS:
            return ""  # %%bash, %%html, %%writefile ...: not Python
        head = "pass"
        if name == "capture" and len(words) > 1 and words[-1].isidentifier():
            head = f"{words[-1]} = None"  # %%capture out binds `out`
        body = python_source("\n".join(lines[first + 1:]))
        return "\n" * first + head + "\n" + body
    out = []
    for line in lines:
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        assign = _ASSIGN_MAGIC.match(line)
        if assign:
            targets = ", ".join(t.strip() for t in assign.group(2).split(","))
            nones = ", ".join("None" for _ in assign.group(2).split(","))
            out.append(f"{indent}{targets} = {nones}  # nb2prod: IPython syntax skipped")
        elif stripped.startswith(("%", "!")) or (stripped.endswith("?") and "#" not in stripped):
            out.append(f"{indent}pass  # nb2prod: IPython syntax skipped")
        else:
            out.append(line)
    return "\n".join(out)


def _noop_display(*objs: object, **kwargs: object) -> None:
    """Stand-in for IPython's `display` builtin: output has nowhere to go in a server."""


def _install_main_fallback(namespace: dict) -> None:
    """Let `__main__.Name` resolve to the stage namespace when __main__ lacks it.

    Stage notebooks run under a kernel whose module is `__main__`, so a pickled object of a
    class defined in the notebook refers to `__main__.ClassName`.  Under gunicorn
    `__main__` is gunicorn's, so unpickling fails unless missing attributes fall back to
    the stage namespace, which runs the same `functions` cells.  Only lookups that would
    otherwise raise AttributeError are affected.
    """
    main = sys.modules.get("__main__")
    if main is None or "__getattr__" in vars(main):
        return

    def __getattr__(name: str) -> object:
        try:
            return namespace[name]
        except KeyError:
            raise AttributeError(f"module '__main__' has no attribute {name!r}") from None

    main.__getattr__ = __getattr__  # type: ignore[attr-defined]


class State:
    """Start-up progress shared by the start-up thread and the request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status = "starting"  # starting | ready | failed
        self.reason: str | None = None  # full reason: logs only
        self.public_reason: str | None = None  # what /readyz may show
        self.started_at = time.time()
        self.t0 = time.perf_counter()
        self.duration: float | None = None
        self.run_id: str | None = None
        self.predict = None  # set last: non-None means ready
        self.done = threading.Event()  # set when start-up finished, either way

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


STATE = State()


def _model_run_id() -> str | None:
    """The run the notebook's load cell read from, per the runtime."""
    try:
        run_id = current_input_run_id()
    except Exception:  # a runtime problem must not make a loaded model unservable
        log.warning("could not determine the model run id", exc_info=True)
        return None
    return None if run_id is None else str(run_id)


def _fail(state: State, reason: str, public: str | None = None) -> None:
    """Start-up failed: `reason` goes to the log, `public` (short, no paths) to clients."""
    state.reason = reason
    state.public_reason = public or reason
    state.duration = state.elapsed()
    # Logged before anyone can see "failed": the runner that reads it on /readyz then
    # finds the full reason in the log (it waits for the line to come through the pipe).
    log.error("start-up failed after %.2fs: %s", state.duration, reason)
    state.status = "failed"
    state.done.set()


def enter_workdir() -> str | None:
    """Lay out the working directory like the notebook's and make it the cwd.

    Input files and the files the batch stages of the served run wrote
    (`files.prepare_workdir`, from the files plan: NB2PROD_FILES_PLAN or
    nb2prod_files.json beside this file), so relative paths in the serving cells
    mean what they meant in the notebook.  Without a plan the cwd stays as it is.
    Workers share the directory; the runtime writes each file atomically.
    """
    plan = os.environ.get("NB2PROD_FILES_PLAN") or os.path.join(HERE, "nb2prod_files.json")
    if not os.path.isfile(plan):
        return None
    work = os.environ.get("NB2PROD_WORKDIR") or os.path.join(
        tempfile.gettempdir(), f"nb2prod-work-{SETTINGS['stage']}")
    prepare_workdir(Path(work), Path(HERE))
    os.chdir(work)
    return work


def run_startup(state: State) -> None:
    """Run the stage notebook's code cells once, then expose ENTRYPOINT.

    Runs in a thread so the server answers /healthz and /readyz (503) meanwhile; any
    failure leaves the service alive but not ready, with the reason on /readyz and the
    traceback in the log, which is what an orchestrator's probes and a human need.
    """
    executable = SETTINGS["executable"]
    path = executable if os.path.isabs(executable) else os.path.join(HERE, executable)
    os.environ.setdefault("MPLBACKEND", "Agg")  # plots in start-up cells need no display
    try:
        with open(path, encoding="utf-8") as fh:
            nb = json.load(fh)
        cells = nb.get("cells")
        if cells is None:  # nbformat 3
            cells = [c for ws in nb.get("worksheets", []) for c in ws.get("cells", [])]
    except (OSError, ValueError, AttributeError) as exc:
        _fail(state, f"cannot read notebook {executable}: {exc}",
              f"cannot read notebook {executable} (details in the server log)")
        return
    try:
        work = enter_workdir()
    except Exception as exc:  # noqa: BLE001 - a missing file leaves the service not ready
        _fail(state, f"cannot lay out the working directory: {exc}".replace("\n", " "))
        return
    if work:
        log.info("start-up: working directory %s", work)
    module = types.ModuleType(STAGE_MODULE)
    module.__dict__["display"] = _noop_display
    sys.modules[STAGE_MODULE] = module  # pickles of classes defined here resolve
    namespace = module.__dict__
    _install_main_fallback(namespace)
    code_cells = [(i, c) for i, c in enumerate(cells) if c.get("cell_type") == "code"]
    # The user's notebook cell behind each stage cell (split records it), so that messages
    # name cells as JupyterLab counts them: from 1, markdown cells included.
    origins = ((nb.get("metadata") or {}).get("nb2prod") or {}).get("source_cells_by_id") or {}
    log.info("start-up: running %d code cells of %s", len(code_cells), executable)
    for index, cell in code_cells:
        origin = origins.get(cell.get("id"))
        filename = f"cell {origin + 1}" if isinstance(origin, int) else \
            f"{executable} cell {index + 1}"
        first = next((line.strip() for line in _cell_source(cell).splitlines() if line.strip()),
                     "")[:60]
        source = python_source(_cell_source(cell))
        if not source.strip():
            continue
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a cell must not kill us
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log.error("%s raised:\n%s", filename, traceback.format_exc())
            # Clients (unauthenticated probes too) get the cell and the exception type;
            # its text (and the cell's code) may hold store paths, data or credentials.
            public = f"{filename} raised {type(exc).__name__} (details in the server log)"
            _fail(state, f"{filename} ({json.dumps(first)}) raised {detail[:500]}", public)
            return
    name = SETTINGS["entrypoint"]
    fn = namespace.get(name)
    if fn is None:
        _fail(
            state,
            f"{executable} does not define {name!r} (config.ini [service] ENTRYPOINT); "
            f"define `def {name}(payload): ...` in the serving cells",
        )
        return
    if not callable(fn):
        _fail(state, f"{name!r} in {executable} is a {type(fn).__name__}, not a function")
        return
    state.run_id = _model_run_id()
    # What start-up built (model, data, imported libraries) lives as long as the worker:
    # move it out of the garbage collector's reach so that full collections, triggered
    # by the allocations of every request, no longer walk it each time.
    gc.collect()
    gc.freeze()
    state.duration = state.elapsed()
    state.status = "ready"
    state.predict = fn
    state.done.set()
    mark_worker_ready()
    log.info(
        "ready after %.2fs: POST %s -> %s (model run %s)",
        state.duration, SETTINGS["route"], name, state.run_id,
    )


# Readiness is per process, but a probe should only pass once every gunicorn worker can
# answer: otherwise the orchestrator (or `nb2prod run`) sends traffic while a sibling is
# still loading, and requests that land there wait and then get 503.  Each worker that
# finished start-up leaves a marker named after the master and itself in the temporary
# directory (an emptyDir in a pod); /readyz counts the live ones.  NB2PROD_WORKERS (set
# by nb2prod to gunicorn's --workers) says how many to expect; 1 means no markers.
READY_DIR = os.environ.get("NB2PROD_READY_DIR") or tempfile.gettempdir()
_READY_PREFIX = "nb2prod-ready-"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def mark_worker_ready() -> None:
    if SETTINGS["workers"] <= 1:
        return
    path = os.path.join(READY_DIR, f"{_READY_PREFIX}{os.getppid()}-{os.getpid()}")
    try:
        with open(path, "w", encoding="utf-8"):
            pass
    except OSError as exc:
        log.warning("cannot write the readiness marker %s: %s", path, exc)
        return
    atexit.register(_remove, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def workers_ready() -> int:
    """Live sibling workers (this one included) that finished start-up."""
    prefix = f"{_READY_PREFIX}{os.getppid()}-"
    try:
        names = os.listdir(READY_DIR)
    except OSError:
        return 0
    pids = [name[len(prefix):] for name in names if name.startswith(prefix)]
    return sum(1 for pid in pids if pid.isdigit() and _alive(int(pid)))


def start_background_startup() -> None:
    threading.Thread(target=run_startup, args=(STATE,), name="nb2prod-startup", daemon=True).start()


def _after_fork_in_child() -> None:
    """With gunicorn --preload the start-up thread stays in the master: restart it here."""
    global STATE
    if STATE.status == "starting":
        STATE = State()
        start_background_startup()
