"""Start, probe and stop the gunicorn server of a service stage directory.

The runners (`nb2prod run`, tests, benchmarks) share this so that a stage is served
locally exactly the way its container serves it: `python -m gunicorn --chdir STAGE app:app`.
Only the standard library is imported: the CLI imports this on every `run`.

The server runs in its own session (process group) so that Ctrl-C in the terminal reaches
the runner only; the runner then calls `stop_service`, whose SIGTERM lets gunicorn drain
in-flight requests, instead of the terminal's SIGINT killing workers mid-request.
Because that also hides the runner's own death from it, a local server gets the runner's
lifeline (`nb2prod.lifeline`): when the runner is gone, gunicorn stops itself.

Locally the runner binds the listening socket itself (`reserve_port`) and hands it to
gunicorn as ``fd://N``: a taken port fails at once with one line, instead of after
gunicorn's five bind retries, and no other server can answer on it.  A per-start
*instance* nonce (``NB2PROD_INSTANCE``, echoed by /readyz) proves that the server that
answers readiness is the one just started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from nb2prod.errors import PipelineFailure, Problem, UserError
from nb2prod.lifeline import Lifeline

#: Seconds gunicorn waits for in-flight requests after SIGTERM (Kubernetes' default grace
#: period is 30 s too, so a pod is never killed while gunicorn is still draining).
GRACEFUL_TIMEOUT = 25
#: Seconds a worker may spend on one request before gunicorn restarts it.
WORKER_TIMEOUT = 60
#: Threads per gunicorn worker (gthread).  A slow or stuck client holds one thread, not a
#: whole worker, so /healthz and other clients are still answered; see README "Serving".
THREADS = 4
#: Seconds an idle kept-alive connection stays open (gunicorn's default is 2).
KEEPALIVE = 5
#: Environment variable carrying the per-start instance nonce /readyz echoes.
INSTANCE_ENV = "NB2PROD_INSTANCE"


class ServiceError(PipelineFailure):
    """A service stage that did not start or did not become ready (exit code 1)."""


def _gunicorn_version() -> tuple[int, ...]:
    try:
        text = metadata.version("gunicorn")
    except metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def gunicorn_options(
    port: int,
    workers: int,
    host: str = "127.0.0.1",
    *,
    threads: int = THREADS,
    access_log: bool = False,
    graceful_timeout: int = GRACEFUL_TIMEOUT,
    timeout: int = WORKER_TIMEOUT,
    fd: int | None = None,
    lifeline: bool = False,
    version: tuple[int, ...] | None = None,
    shm: bool | None = None,
) -> list[str]:
    """gunicorn's settings for a service stage: one definition for local runs and pods.

    Access logging is off by default: per-request lines cost throughput, and /metrics
    has the counts.  `threads > 1` selects gthread workers, which keep /readyz answering
    during a slow predict and keep slow clients from starving the others.  `fd` serves a
    socket the caller bound (``fd://N``) instead of binding `host`:`port`; `lifeline`
    loads `nb2prod.lifeline` as config module (the master stops when the runner is
    gone; local runs only: pods have no nb2prod).  `version` is the gunicorn that will
    run (default: this environment's; a pod passes its requirements.txt pin) and `shm`
    whether /dev/shm exists there (default: here).
    """
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be >= 1, got {workers} and {threads}")
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    opts = [
        "--bind", f"fd://{fd}" if fd is not None else f"{bind_host}:{port}",
        "--workers", str(workers),
        "--graceful-timeout", str(graceful_timeout),
        "--timeout", str(timeout),
        "--log-level", "info",
        "--error-logfile", "-",
    ]
    if threads > 1:
        opts += ["--worker-class", "gthread", "--threads", str(threads),
                 "--keep-alive", str(KEEPALIVE)]
    if lifeline:
        opts += ["--config", "python:nb2prod.lifeline"]
    if access_log:
        opts += ["--access-logfile", "-"]
    if (version if version is not None else _gunicorn_version()) >= (25, 1):
        # gunicorn >= 25.1 opens a control socket at one fixed per-user path: two services
        # (or two test runs) would fight over it, and nb2prod never uses it.
        opts.append("--no-control-socket")
    if Path("/dev/shm").is_dir() if shm is None else shm:
        opts += ["--worker-tmp-dir", "/dev/shm"]  # heartbeat file off slow/overlay disks
    return opts


def gunicorn_command(
    stage_dir: Path,
    port: int,
    workers: int,
    host: str = "127.0.0.1",
    **settings: Any,
) -> list[str]:
    """The argv that serves `stage_dir/app.py` with this interpreter's gunicorn.

    `sys.executable -m gunicorn` rather than a `gunicorn` script so the server uses the
    same environment as nb2prod (a venv's script may not be on PATH); `settings` are
    :func:`gunicorn_options`' keyword arguments.
    """
    return [sys.executable, "-m", "gunicorn", "--chdir", str(Path(stage_dir).resolve()),
            *gunicorn_options(port, workers, host, **settings), "app:app"]


class ServiceProcess(subprocess.Popen):
    """A gunicorn process whose merged stdout/stderr is pumped by a thread.

    Pumping prevents a full pipe from blocking the server, and the kept tail lets
    `wait_ready` say *why* a service died.  Lines can also go to a log file (the run
    directory's log) and to a callback (the runner's console).
    """

    def __init__(
        self,
        args: list[str],
        *,
        log_file: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        tail_lines: int = 400,
        **kwargs: object,
    ) -> None:
        super().__init__(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", bufsize=1, **kwargs,  # type: ignore[arg-type]
        )
        self.instance: str | None = None  # the nonce /readyz must echo (start_service)
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._tail_lock = threading.Lock()
        self._tail_grew = threading.Condition(self._tail_lock)
        self._pumped_all = False
        self._log_file = Path(log_file) if log_file is not None else None
        self._on_line = on_line
        self._pump = threading.Thread(target=self._read_output, name="nb2prod-service-output",
                                      daemon=True)
        self._pump.start()

    def _read_output(self) -> None:
        with contextlib.ExitStack() as stack:
            sink = None
            if self._log_file is not None:
                sink = stack.enter_context(open(self._log_file, "a", encoding="utf-8"))
            assert self.stdout is not None
            for line in self.stdout:
                with self._tail_grew:
                    self._tail.append(line.rstrip("\n"))
                    self._tail_grew.notify_all()
                if sink is not None:
                    sink.write(line)
                    sink.flush()
                if self._on_line is not None:
                    try:
                        self._on_line(line.rstrip("\n"))
                    except Exception:  # noqa: BLE001 - a broken console must not stop the pump
                        self._on_line = None
        with self._tail_grew:
            self._pumped_all = True
            self._tail_grew.notify_all()

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """The last kept line matching `pattern`, waiting up to `timeout` for one to arrive.

        A line the server has written may still be in the pipe, not yet read by the pump
        (a busy machine): a caller that saw its effect elsewhere (/readyz) waits for it here.
        None once the output has ended, or `timeout` passed, without a match.
        """
        deadline = time.monotonic() + timeout
        with self._tail_grew:
            while True:
                for line in reversed(self._tail):
                    match = pattern.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self._pumped_all or remaining <= 0:
                    return None
                self._tail_grew.wait(remaining)

    def output(self) -> list[str]:
        """The kept lines of output so far (complete once the process has exited)."""
        if self.poll() is not None:
            self._pump.join(timeout=2)
        with self._tail_lock:
            return list(self._tail)

    def output_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of output, for error messages."""
        return "\n".join(self.output()[-lines:])


def start_service(
    stage_dir: Path,
    port: int,
    env: Mapping[str, str],
    workers: int,
    *,
    host: str = "127.0.0.1",
    threads: int = THREADS,
    access_log: bool = False,
    graceful_timeout: int = GRACEFUL_TIMEOUT,
    log_file: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    listener: socket.socket | None = None,
    lifeline: Lifeline | None = None,
) -> ServiceProcess:
    """Start gunicorn on `stage_dir` and return at once (see `wait_ready`).

    `env` is laid over this process's environment (the store URI, MODEL_RUN_ID, the API
    token...), so PATH, HOME and credentials the user already exported still apply.
    `listener` (from `reserve_port`) is handed to gunicorn and closed here; `lifeline`
    ties the server's life to the caller's.  The instance nonce is ``proc.instance``.
    """
    stage_dir = Path(stage_dir)
    if not (stage_dir / "app.py").is_file():
        raise UserError(Problem("no app.py: not a service stage (re-run nb2prod split)",
                                file=str(stage_dir)))
    full_env = dict(os.environ)
    full_env.update({str(k): str(v) for k, v in env.items()})
    full_env.setdefault("PYTHONUNBUFFERED", "1")  # prints from start-up cells show promptly
    full_env["NB2PROD_WORKERS"] = str(workers)  # /readyz waits for every worker
    instance = secrets.token_hex(8)
    full_env[INSTANCE_ENV] = instance
    pass_fds: tuple[int, ...] = ()
    if lifeline is not None:
        full_env.update(lifeline.child_env())
        pass_fds += lifeline.pass_fds
    if listener is not None:
        pass_fds += (listener.fileno(),)
    cmd = gunicorn_command(stage_dir, port, workers, host, threads=threads,
                           access_log=access_log, graceful_timeout=graceful_timeout,
                           fd=listener.fileno() if listener is not None else None,
                           lifeline=lifeline is not None)
    try:
        proc = ServiceProcess(
            cmd, log_file=log_file, on_line=on_line, cwd=str(stage_dir), env=full_env,
            stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=pass_fds,
        )
    finally:
        if listener is not None:
            listener.close()  # gunicorn has its own copy; ours would keep the port bound
    proc.instance = instance
    return proc


def reserve_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` but not listening, for gunicorn's ``fd://``.

    Bound, the port is ours (nobody else can bind it) while a connection to it is still
    refused, not left hanging, until gunicorn listens.  Raises `OSError` (EADDRINUSE,
    EACCES, EADDRNOTAVAIL...) at once; the caller names the stage and setting.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        sock.bind((host.strip("[]"), port))
    except BaseException:
        sock.close()
        raise
    return sock


#: The line app.py logs when start-up fails, with the full reason (never sent to clients).
_STARTUP_FAILED = re.compile(r"nb2prod: start-up failed after [\d.]+s: (?P<reason>.*)$")


#: How long the log line of a failure /readyz reported may take to come through the pipe.
_LOG_LINE_WAIT = 10.0


def _logged_reason(proc: subprocess.Popen | None) -> str | None:
    """The full start-up failure reason from the server's log, if it logged one.

    The server logs it before /readyz can report the failure, but the line may not have
    been read from the pipe yet: it is waited for (briefly; only a server that does not
    log at all costs the wait).
    """
    if isinstance(proc, ServiceProcess):
        match = proc.wait_for_line(_STARTUP_FAILED, _LOG_LINE_WAIT)
        if match:
            return match["reason"]
    return None


def _tail_of(proc: subprocess.Popen | None) -> str:
    if isinstance(proc, ServiceProcess):
        tail = proc.output_tail()
        return f"\n--- last server output ---\n{tail}" if tail else ""
    return ""


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None,
               instance: str | None = None) -> None:
    """Poll `url`'s /readyz until it answers 200; raise `ServiceError` otherwise.

    Fails fast, instead of waiting out `timeout`, when the process exits or when /readyz
    reports that start-up failed (a missing entrypoint never fixes itself).  The error
    carries the reason (the full one from the server's log: /readyz gives clients a
    short one) and the tail of the server's output.  With `instance`, a ready answer
    must echo that nonce: anything else is another server on the port.
    """
    if instance is None:
        instance = getattr(proc, "instance", None)
    ready_url = url if url.rstrip("/").endswith("/readyz") else url.rstrip("/") + "/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout
    delay = 0.05
    last = "no answer"
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"service at {url} exited with code {proc.returncode} before it was ready"
                f"{_tail_of(proc)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceError(
                f"service at {url} not ready after {timeout:g}s (last /readyz: {last})"
                f"{_tail_of(proc)}"
            )
        try:
            with opener.open(ready_url, timeout=max(0.1, min(2.0, remaining))) as resp:
                body = resp.read().decode("utf-8", "replace")
                if resp.status == 200:
                    _check_instance(url, body, instance)
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            exc.close()
            last = f"HTTP {exc.code} {body.strip()[:300]}"
            try:
                state = json.loads(body)
            except ValueError:
                state = None
            if isinstance(state, dict) and state.get("status") == "failed":
                if instance is not None and state.get("instance") not in (None, instance):
                    raise ServiceError(_other_server(url, state.get("instance"))) from None
                reason = _logged_reason(proc) or state.get("reason")
                raise ServiceError(
                    f"service at {url} failed to start: {reason}{_tail_of(proc)}"
                ) from None
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.5)


def _other_server(url: str, answered: object) -> str:
    return (f"service at {url}: another server answers there (instance {answered!r}, not "
            "the one just started); stop it or choose another port with --port")


def _check_instance(url: str, body: str, instance: str | None) -> None:
    if instance is None:
        return
    try:
        answered = json.loads(body).get("instance")
    except (ValueError, AttributeError):
        answered = None
    if answered != instance:
        raise ServiceError(_other_server(url, answered))


def stop_service(proc: subprocess.Popen, timeout: float = GRACEFUL_TIMEOUT + 5) -> int:
    """SIGTERM (gunicorn drains in-flight requests), then SIGKILL after `timeout` seconds.

    The kill goes to the whole process group when the server leads its own (as
    `start_service` arranges), so no worker outlives its master.  Returns the exit code.
    """
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except ProcessLookupError:
                pass
            proc.wait()
    if isinstance(proc, ServiceProcess):
        proc.output()  # let the pump read the last lines and close the log file
    return proc.returncode


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (for `nb2prod run` without --port, and tests)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
