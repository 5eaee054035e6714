"""The stage worker: a per-user daemon keeping warm stage processes for `nb2prod run`.

A stage run by a fresh process pays ~3 s before its first cell: a kernel boots
(~1.5 s), papermill and nbconvert are imported (~1.2 s).  The daemon keeps a
few *warm* stage processes (`nb2prod.runners.pooled`) per kernel identity,
each with its kernel booted, papermill imported and an HTML exporter warm, so
that a stage starts in the time it takes to hand one over.

- It listens on ``worker-<tag>.sock`` in a per-user runtime directory (mode
  0700; ``NB2PROD_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/nb2prod``, else
  ``<tmp>/nb2prod-<uid>``); `tag` hashes the Python executable and the nb2prod
  package directory, so every installation has its own daemon.
- `nb2prod run` starts it on demand (`connect`); it exits after
  ``NB2PROD_WORKER_IDLE`` seconds (default 300) without a request and without
  a busy stage, or on ``nb2prod worker stop``.
- A request names its *kernel identity*: the environment variables that shape
  how Python and the kernel start (`identity_env`).  Warm processes are started
  with exactly that environment; everything else (the stage's ``NB2PROD_*``,
  cwd, the stage directories on ``sys.path``) is set when a stage is handed over.
- The daemon passes the runner's connection itself to the warm process
  (``SCM_RIGHTS``): from then on the stage process and the runner talk directly,
  and the connection is the stage's lifeline, as the pipe of `nb2prod.lifeline`
  is for a stage process of its own: when the runner goes, however it goes,
  the stage process kills its kernel and everything the notebook started.
  A process that ran a stage exits; the daemon starts another (a kernel is
  never reused), and kills the kernel a stage process reported if that process
  ever dies without doing so itself.

Standard library only; nothing heavy is imported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from nb2prod import lifeline

#: Seconds without requests (and no stage running) before the daemon exits.
DEFAULT_IDLE = 300.0
#: Warm stage processes kept per kernel identity at most (``NB2PROD_WORKER_KERNELS``)...
DEFAULT_KERNELS = 4
#: ... and at least, between runs (more when the last run had more batch stages).
MIN_WARM = 2
#: Kernel identities kept warm at once (the most recently used).
MAX_IDENTITIES = 2
#: Largest request (JSON line) accepted; a stage's environment is a few KB.
MAX_REQUEST = 1 << 20

#: Variables read while Python and the kernel start (interpreter flags, locale, user site,
#: temp dir, Jupyter/IPython/matplotlib paths): a warm process must have started with the
#: same values.  Any other variable is set per stage, before the notebook runs.
IDENTITY_PREFIXES = ("PYTHON", "LC_", "JUPYTER", "JPY_", "IPYTHON", "MPL", "XDG_", "CONDA")
IDENTITY_NAMES = ("HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "PATH",
                  "VIRTUAL_ENV", "USER", "LOGNAME")


class WorkerUnavailable(Exception):
    """The daemon cannot be reached or started; the caller runs the stage itself."""


def identity_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The part of `environ` a warm stage process (and its kernel) must start with."""
    return {k: v for k, v in environ.items()
            if (k.startswith(IDENTITY_PREFIXES) or k in IDENTITY_NAMES)
            and not k.startswith("NB2PROD_")}


def identity_key(env: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()[:16]


def idle_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get("NB2PROD_WORKER_IDLE", DEFAULT_IDLE)))
    except ValueError:
        return DEFAULT_IDLE


def pool_size() -> int:
    try:
        return max(1, int(os.environ.get("NB2PROD_WORKER_KERNELS", DEFAULT_KERNELS)))
    except ValueError:
        return DEFAULT_KERNELS


# -- where it lives -------------------------------------------------------------------------
def runtime_dir() -> Path:
    """The per-user directory of the daemon's socket, made 0700; refused if not ours."""
    raw = os.environ.get("NB2PROD_RUNTIME_DIR")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(raw) if raw else (Path(xdg) / "nb2prod" if xdg else
                                  Path(tempfile.gettempdir()) / f"nb2prod-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise WorkerUnavailable(f"cannot create {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise WorkerUnavailable(f"{path} is not a directory of this user")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def tag() -> str:
    """One daemon per Python executable and nb2prod installation."""
    here = str(Path(__file__).resolve().parent)
    return hashlib.sha256(f"{sys.executable}\0{here}".encode()).hexdigest()[:12]


def paths() -> dict[str, Path]:
    base = runtime_dir()
    t = tag()
    return {name: base / f"worker-{t}.{name}" for name in ("sock", "pid", "lock", "log")}


# -- client side ----------------------------------------------------------------------------
def _dial(sock_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(sock_path))
    except OSError:
        sock.close()
        raise
    return sock


def connect(start: bool = True, timeout: float = 60.0) -> socket.socket:
    """A connection to the daemon, starting it when none runs (and `start`)."""
    where = paths()
    if len(str(where["sock"]).encode()) > 100:
        raise WorkerUnavailable(f"socket path too long: {where['sock']}")
    try:
        return _dial(where["sock"])
    except OSError as exc:
        if not start:
            raise WorkerUnavailable(f"no worker running ({exc.strerror})") from None
    env = {k: v for k, v in os.environ.items() if k != lifeline.ENV}
    with open(where["log"], "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nb2prod.worker", "serve"], stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(where["sock"].parent),
            start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _dial(where["sock"])
        except OSError:
            pass
        if proc.poll() not in (None, 0) or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            raise WorkerUnavailable(f"the worker did not start (see {where['log']})")
        time.sleep(0.05)


def send_line(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def read_line(sock: socket.socket, limit: int = MAX_REQUEST) -> dict | None:
    """One JSON line; None at EOF.  Reads byte by byte past nothing: the rest is not ours."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return None
        data += chunk
        if len(data) > limit:
            raise ValueError("message too long")
    return json.loads(data)


def ask(op: str, start: bool = False) -> dict:
    """`status` / `stop` for `nb2prod worker`; WorkerUnavailable when none runs."""
    with connect(start=start) as sock:
        sock.settimeout(30)
        send_line(sock, {"op": op})
        answer = read_line(sock)
    if answer is None:
        raise WorkerUnavailable("the worker closed the connection")
    return answer


def stop(timeout: float = 30.0) -> int | None:
    """Stop the running daemon and wait until it is gone; its pid, or None if none ran."""
    try:
        pid = ask("stop")["pid"]
    except (WorkerUnavailable, OSError, ValueError):
        return None
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def stop_all(timeout: float = 30.0) -> list[int]:
    """Stop the daemon and kill whatever it started that is still there (busy stage
    processes included): for test teardowns and `nb2prod worker stop --all`."""
    pids: list[int] = []
    with contextlib.suppress(WorkerUnavailable, OSError, ValueError):
        status = ask("status")
        pids = [status["pid"], *(p for w in status["processes"] for p in (w["pid"], w["kernel"])
                                 if p)]
    with contextlib.suppress(WorkerUnavailable, OSError, ValueError):
        raw = paths()["pid"].read_text().strip()
        if raw.isdigit() and int(raw) not in pids:
            pids.append(int(raw))
    stop(timeout)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:
        lifeline.kill_tree(pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def _alive(pid: int) -> bool:
    fields = lifeline.stat_fields(pid)
    return fields is not None and fields[0] != "Z"


# -- the daemon -----------------------------------------------------------------------------
def log(line: str) -> None:
    """A line in the daemon's log (worker-<tag>.log): what happened, never a request's values."""
    print(f"{time.strftime('%H:%M:%S')} nb2prod worker {os.getpid()}: {line}", file=sys.stderr,
          flush=True)


@dataclass
class Warm:
    """A stage process started by the daemon: idle (warm) until it gets a stage."""

    proc: subprocess.Popen
    control: socket.socket
    key: str
    kernel: int | None = None
    ready: bool = False
    stage: str | None = None  # set once handed a stage
    running: bool = False  # it took the stage (and told the runner)

    def record(self) -> dict:
        return {"pid": self.proc.pid, "kernel": self.kernel, "ready": self.ready,
                "stage": self.stage, "running": self.running, "identity": self.key}


@dataclass
class Daemon:
    where: dict[str, Path]
    idle: float = field(default_factory=idle_seconds)
    size: int = field(default_factory=pool_size)
    planned: dict[str, int] = field(default_factory=dict)  # key -> stages of its last run
    upcoming: dict[str, int] = field(default_factory=dict)  # key -> stages still to come
    warm: list[Warm] = field(default_factory=list)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> env, recent last
    handed: int = 0
    started: int = 0
    stopping: bool = False
    last: float = field(default_factory=time.monotonic)
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)

    # -- warm processes ---------------------------------------------------------------------
    def spawn(self, key: str) -> Warm:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nb2prod.runners.pooled", str(theirs.fileno())],
                env=self.envs[key], stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                cwd=str(self.where["sock"].parent))
        finally:
            theirs.close()
        warm = Warm(proc, ours, key)
        self.warm.append(warm)
        self.started += 1
        self.selector.register(ours, selectors.EVENT_READ, warm)
        return warm

    def on_control(self, warm: Warm) -> None:
        """`{"kernel": PID, "ready": true}` from a warm process; EOF once it exits."""
        try:
            data = warm.control.recv(65536)
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(warm.control)
            return
        with contextlib.suppress(ValueError):
            message = json.loads(data)
            warm.kernel = message.get("kernel", warm.kernel)
            warm.ready = bool(message.get("ready", warm.ready))
            warm.running = bool(message.get("running", warm.running))

    def reap(self) -> None:
        """Forget processes that exited, killing the kernel of one that did not do so."""
        for warm in [w for w in self.warm if w.proc.poll() is not None]:
            self.warm.remove(warm)
            if warm.stage not in (None, "(dismissed)"):
                self.last = time.monotonic()  # idle from a stage's end, not from its start
            if warm.proc.returncode not in (0, 1) and warm.stage != "(dismissed)":
                log(f"process {warm.proc.pid} ({warm.stage or 'idle'}) exited with code "
                    f"{warm.proc.returncode}")
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(warm.control)
            warm.control.close()
            if warm.kernel and _alive(warm.kernel):
                lifeline.kill_tree(warm.kernel)
                with contextlib.suppress(OSError):
                    os.killpg(warm.kernel, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(warm.kernel, signal.SIGKILL)

    def idle_of(self, key: str) -> list[Warm]:
        return [w for w in self.warm if w.key == key and w.stage is None]

    def wanted(self, key: str) -> int:
        """Idle processes to keep for `key`: while its stages run, only as many as the
        run's stages still to come (booting more would take CPU from the stages); between
        runs, as many as its last run had stages (at least MIN_WARM, at most `size`)."""
        if any(w.key == key and w.stage not in (None, "(dismissed)") for w in self.warm):
            return min(self.size, self.upcoming.get(key, 0))
        return min(self.size, max(MIN_WARM, self.planned.get(key, 0)))

    def refill(self) -> None:
        """Keep `wanted` idle processes for the recent identities; let older ones go."""
        recent = list(self.envs)[-MAX_IDENTITIES:]
        for key in list(self.envs):
            if key not in recent:
                del self.envs[key]
        for warm in self.warm:
            if warm.stage is None and warm.key not in recent:
                self.dismiss(warm)
        if self.stopping:
            return
        for key in recent:
            for _ in range(self.wanted(key) - len(self.idle_of(key))):
                self.spawn(key)

    def dismiss(self, warm: Warm) -> None:
        """An idle process no longer wanted: closing its control socket makes it exit."""
        warm.stage = warm.stage or "(dismissed)"
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(warm.control)
        with contextlib.suppress(OSError):
            warm.control.shutdown(socket.SHUT_RDWR)

    # -- requests ---------------------------------------------------------------------------
    def on_client(self, conn: socket.socket) -> None:
        self.last = time.monotonic()
        try:
            conn.settimeout(10)
            request = read_line(conn)
            if request is None:
                return
            op = request.get("op")
            if op == "run":
                self.hand_over(conn, request)
            elif op == "status":
                send_line(conn, self.status())
            elif op == "stop":
                self.stopping = True
                send_line(conn, {"pid": os.getpid(), "stopping": True})
            else:
                send_line(conn, {"error": f"unknown op {op!r}"})
        except (OSError, ValueError) as exc:
            log(f"a request failed: {exc}")
        finally:
            conn.close()

    def hand_over(self, conn: socket.socket, request: dict) -> None:
        """Give the runner's connection (and its request) to an idle warm process."""
        env = request.pop("identity")
        key = identity_key(env)
        self.envs.pop(key, None)
        self.envs[key] = env  # most recent last
        with contextlib.suppress(TypeError, ValueError):
            self.planned[key] = int(request.pop("planned", 0))
            self.upcoming[key] = int(request.pop("upcoming", 0))
        payload = json.dumps(request).encode()
        candidates = sorted(self.idle_of(key), key=lambda w: not w.ready)
        for warm in [*candidates, None]:
            warm = warm or self.spawn(key)  # none idle: a cold one, as a process of its own
            try:
                socket.send_fds(warm.control, [payload], [conn.fileno()])
            except OSError:
                self.dismiss(warm)
                continue
            warm.stage = str(request.get("stage", "?"))
            self.handed += 1
            log(f"stage {warm.stage!r} handed to process {warm.proc.pid}"
                f"{'' if warm.ready else ' (still booting)'}")
            return
        raise OSError("no stage process could take the stage")

    def status(self) -> dict:
        return {"pid": os.getpid(), "socket": str(self.where["sock"]), "idle_timeout": self.idle,
                "kernels_per_identity": self.size, "handed": self.handed,
                "started": self.started, "processes": [w.record() for w in self.warm]}

    def busy(self) -> bool:
        return any(w.stage not in (None, "(dismissed)") for w in self.warm)

    # -- the loop ---------------------------------------------------------------------------
    def serve(self, listener: socket.socket) -> None:
        self.selector.register(listener, selectors.EVENT_READ, None)
        while True:
            for key, _ in self.selector.select(timeout=0.5):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        conn, _ = listener.accept()
                        self.on_client(conn)
                else:
                    self.on_control(key.data)
            self.reap()
            self.refill()
            if self.stopping or (time.monotonic() - self.last > self.idle and not self.busy()):
                break
        self.shutdown()

    def shutdown(self, grace: float = 10.0) -> None:
        """Idle processes exit (their kernels with them); busy ones finish their stage."""
        self.stopping = True
        for warm in self.warm:
            if warm.stage is None:
                self.dismiss(warm)
        deadline = time.monotonic() + grace
        while any(w.proc.poll() is None for w in self.warm if w.stage == "(dismissed)") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        for warm in self.warm:
            if warm.stage == "(dismissed)" and warm.proc.poll() is None:
                lifeline.kill_tree(warm.proc.pid)
                warm.proc.kill()
        self.reap()


def serve() -> int:
    """`python -m nb2prod.worker serve`: run the daemon unless one already runs."""
    where = paths()
    lock = open(where["lock"], "a")  # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another daemon holds it: the client connects to that one
    with contextlib.suppress(FileNotFoundError):
        where["sock"].unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(where["sock"]))
    os.chmod(where["sock"], 0o600)
    listener.listen(64)
    where["pid"].write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    daemon = Daemon(where)
    log(f"serving {where['sock']} (idle timeout {daemon.idle:g}s, {daemon.size} warm "
        "processes per kernel identity)")
    try:
        daemon.serve(listener)
    finally:
        daemon.shutdown()
        listener.close()
        for name in ("sock", "pid"):
            with contextlib.suppress(FileNotFoundError):
                where[name].unlink()
        log("stopped")
    return 0


def describe(status: dict) -> str:
    """`nb2prod worker status`: the daemon and each of its processes, one line each."""
    head = (f"worker {status['pid']} on {status['socket']}: {status['handed']} stage(s) run, "
            f"exits after {status['idle_timeout']:g}s idle")
    lines = [head]
    for w in status["processes"]:
        doing = f"running stage '{w['stage']}'" if w["stage"] else (
            "warm" if w["ready"] else "booting")
        lines.append(f"  process {w['pid']} (kernel {w['kernel'] or '-'}): {doing}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "serve":
        return serve()
    try:
        if command == "status":
            print(describe(ask("status")))
        elif command == "stop":
            pid = stop()
            print("no worker running" if pid is None else f"worker {pid} stopped")
        else:
            print(f"usage: python -m nb2prod.worker serve|status|stop (not {command!r})",
                  file=sys.stderr)
            return 2
    except WorkerUnavailable:
        print("no worker running")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
