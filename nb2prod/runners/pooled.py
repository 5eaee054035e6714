"""A warm stage process of the stage worker (`nb2prod.worker`): one stage, then exit.

Started by the daemon with a kernel identity's environment, it boots its
kernel, imports papermill and warms an HTML exporter, then waits for a stage:
the runner's connection and its request, passed over the control socket.
From then on it is what a stage process of its own (`runners.execute`) is:

- the request's environment becomes this process's (``os.environ``), and the
  kernel's in a silent first execute before the notebook (`prepare_code`):
  environment, cwd and the stage directories on ``sys.path`` where a fresh
  kernel would have them from ``PYTHONPATH``; nothing lands in the user's
  namespace, the execution count stays 0;
- the stage log (this process's stdout/stderr, the kernel's raw output
  appended) is WORK/log.txt, the record WORK/out/result.json;
- the connection is the lifeline: EOF (the runner gone, Ctrl-C, a time limit)
  kills the kernel and everything the notebook started, then exits.

Events to the runner, one JSON line each: ``started`` (pids), ``result``
(result.json written), ``html`` (the report rendered, off the critical path).

Usage (by the daemon only): python -m nb2prod.runners.pooled CONTROL_FD
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from nb2prod.runners import execute

#: A nonexistent PYTHONPATH entry the warm kernel starts with: `prepare_code` replaces it
#: by the stage's entries, so that they sit where a fresh kernel's would.
MARKER = "/nonexistent/nb2prod-stage-pythonpath"

_PREPARE = '''
import os, sys
a = {args!r}
now = dict(os.environ)
added = {{k: v for k, v in now.items() if a["launched"].get(k) != v}}
gone = [k for k in a["launched"] if k not in now]
os.environ.clear()
os.environ.update(a["env"])
os.environ.update(added)
for k in gone:
    os.environ.pop(k, None)
os.chdir(a["cwd"])
if a["marker"] in sys.path:
    i = sys.path.index(a["marker"])
    sys.path[i:i + 1 + a["launched_entries"]] = a["pythonpath"]
sys.path_importer_cache.pop(a["marker"], None)
ip = get_ipython()
if ip is not None and "_dh" in ip.user_ns:
    ip.user_ns["_dh"][:] = [a["cwd"]]
'''


def prepare_code(launched: dict[str, str], env: dict[str, str], cwd: str) -> str:
    """Kernel code turning a warm kernel into the one a fresh start would have given.

    Variables the kernel set itself at start (``launched`` is what it was started
    with) are kept, as they would be.  Run by `exec` in a namespace of its own.
    """
    args = {"launched": launched, "env": env, "cwd": cwd, "marker": MARKER,
            "launched_entries": len(_entries(launched.get("PYTHONPATH", ""))) - 1,
            "pythonpath": _entries(env.get("PYTHONPATH", ""))}
    return f"exec({_PREPARE.format(args=args)!r}, {{'get_ipython': get_ipython}})"


def _entries(path: str) -> list[str]:
    """PYTHONPATH's entries as Python puts them on sys.path (empty ones left out)."""
    return [p for p in path.split(os.pathsep) if p]


class Warm:
    """This process before its stage: kernel booting, papermill imported, exporter warm."""

    def __init__(self, control: socket.socket, home: Path) -> None:
        from nb2prod.runtime.kernel import HtmlRenderer, _hide_slow_format_checker

        self.control = control
        self.launched = dict(os.environ)
        self.launched["PYTHONPATH"] = os.pathsep.join(
            [MARKER, *_entries(os.environ.get("PYTHONPATH", ""))])
        self.kernel: Any = None
        # Imported here, before the boot thread: papermill imports jupyter_client too, and
        # two threads importing it at once can see it partially initialised (ImportError).
        import jupyter_client.kernelspec
        import jupyter_client.manager  # noqa: F401

        self.booted = threading.Thread(target=self._boot, args=(home,), daemon=True)
        self.booted.start()
        _hide_slow_format_checker()
        import papermill  # noqa: F401 - imported now, while the kernel boots

        self.html = HtmlRenderer()
        self.booted.join()
        self.client: Any = None
        if self.kernel.km is not None:
            try:  # connected and answering now: `prepare` is one round trip, papermill none
                self.client = connected_client(self.kernel.km)
            except Exception:  # noqa: BLE001 - `run` starts a kernel of its own then
                self.kernel.shutdown()
                self.kernel.km = None
        self.html.thread.join()
        self.tell({"ready": self.kernel.km is not None})  # warm: nothing left to load

    def _boot(self, home: Path) -> None:
        from nb2prod.runtime.kernel import _KernelHead

        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = self.launched["PYTHONPATH"]
        try:
            self.kernel = _KernelHead(home)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        pid = getattr(getattr(self.kernel.km, "provisioner", None), "pid", None)
        self.tell({"kernel": pid})

    def tell(self, message: dict) -> None:
        try:
            self.control.send(json.dumps(message).encode())
        except OSError:
            pass

    def prepare(self, env: dict[str, str], cwd: Path) -> None:
        """Give the kernel the stage's environment, cwd and sys.path (silently)."""
        from jupyter_core.utils import run_sync

        try:
            reply = run_sync(self.client.execute_interactive)(
                prepare_code(self.launched, env, str(cwd)), silent=True, store_history=False,
                timeout=120)
        except BaseException:
            self.disconnect()
            raise
        if reply["content"].get("status") != "ok":
            self.disconnect()
            raise RuntimeError(f"preparing the kernel failed: "
                               f"{reply['content'].get('evalue', '?')}")


    def disconnect(self) -> None:
        """Close the kernel client's channels (once papermill is done with it)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop_channels()


def connected_client(km: Any) -> Any:
    """`km`'s kernel client, connected and answering now, which papermill then uses as is.

    nbclient (papermill's engine) would connect a client of its own and wait until it
    answers: at least 0.2 s on the stage's critical path, since jupyter_client's
    `wait_for_ready` drains iopub until 0.2 s pass without a message.  Done here, while
    this process waits for its stage: `km.client()` returns this client from now on,
    whose `start_channels` and `wait_for_ready` are no-ops once done.  It is an async
    client, as nbclient's own would be, driven on this thread's event loop (`run_sync`,
    papermill's too).
    """
    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_core.utils import run_sync

    class Connected(AsyncKernelClient):  # type: ignore[misc]
        ready = False

        def start_channels(self, *args: Any, **kwargs: Any) -> None:
            if not self.channels_running:
                super().start_channels(*args, **kwargs)

        async def wait_for_ready(self, timeout: float | None = None) -> None:
            if not self.ready:
                await AsyncKernelClient.wait_for_ready(self, timeout)
                self.ready = True

    km.client_factory = Connected
    client = km.client()
    client.start_channels()
    run_sync(client.wait_for_ready)(timeout=120)
    km.client = lambda **_: client  # nbclient's `km.client()`: this one, already answering
    return client


def _redirect_output(log: Path) -> None:
    """This process's stdout and stderr (and so the papermill log) go to the stage log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run(warm: Warm, conn: socket.socket, request: dict, home: Path,
        done: threading.Event) -> int:
    """Run the requested stage; events to `conn`; the record in WORK/out/result.json."""
    from nb2prod import worker
    from nb2prod.runtime.stage import execute_in_workdir, log_stage_output

    work = Path(request["work"])
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    # papermill saves the notebook at every cell start and end, each save validated:
    # fastjsonschema checks the same schema ~30x faster (only this process; the kernel
    # gets the stage's environment from `prepare`)
    os.environ.setdefault("NBFORMAT_VALIDATOR", "fastjsonschema")
    _redirect_output(work / "log.txt")
    log_stage_output()
    stage_dir, executable = Path(request["stage_dir"]), request["executable"]
    cwd = Path(env.get("NB2PROD_WORKDIR") or stage_dir)
    warm.booted.join()
    kernel = warm.kernel
    try:
        if kernel.km is None:
            kernel = None  # it did not boot: papermill starts one, as it would
        else:
            warm.prepare(env, cwd)
    except Exception as exc:  # noqa: BLE001 - a fresh kernel instead of a prepared one
        print(f"nb2prod: the warm kernel could not be used ({exc}); starting another",
              file=sys.stderr, flush=True)
        kernel.shutdown()
        kernel = None
    if kernel is None:
        from nb2prod.runtime.stage import start_kernel

        kernel = start_kernel(stage_dir, cwd)
    result = execute_in_workdir(stage_dir, executable, work / "out", request["params"], cwd,
                                render_html=False, kernel=kernel)
    kernel.shutdown()
    warm.disconnect()
    raw = home / "kernel.log"
    if raw.is_file() and raw.stat().st_size:
        with open(work / "log.txt", "ab") as log:
            log.write(raw.read_bytes())
    (work / "out" / "result.json").write_text(json.dumps(result, indent=1))
    worker.send_line(conn, {"event": "result", "status": result["status"]})
    executed = work / "out" / f"{Path(executable).stem}.ipynb"
    error = None
    if executed.is_file():
        error = warm.html.render(executed, executed.with_suffix(".html"))
    done.set()  # the runner may close the connection once it has this last event
    worker.send_line(conn, {"event": "html", "error": error})
    return 0 if result["status"] == "succeeded" else 1


def main(argv: list[str]) -> int:
    from nb2prod import worker

    control = socket.socket(fileno=int(argv[0]))
    control.set_inheritable(False)  # the daemon sees EOF when this process is gone
    home = Path(tempfile.mkdtemp(prefix="nb2prod-warm-"))
    daemon_log = os.fdopen(os.dup(2), "w")  # the daemon's log, for what goes wrong here
    raw = os.open(home / "kernel.log", os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(raw, 1)  # the kernel inherits these: its own output, kept for the stage log
    os.dup2(raw, 2)
    os.close(raw)
    try:
        execute.guard_with(None)  # SIGTERM: kernel killed, exit
        warm = Warm(control, home)
        # close-on-exec at once: the kernel (jupyter_client starts it with close_fds=False),
        # possibly still booting, must never hold the runner's connection open
        message, fds, _, _ = socket.recv_fds(control, worker.MAX_REQUEST, 1,
                                             socket.MSG_CMSG_CLOEXEC)
        if not message or not fds:  # the daemon let us go (or is gone)
            warm.booted.join()
            if warm.kernel is not None:
                warm.kernel.shutdown()
            return 0
        conn = socket.socket(fileno=fds[0])
        conn.setblocking(True)  # the daemon's timeout made the shared descriptor non-blocking
        request = json.loads(message)
        worker.send_line(conn, {"event": "started", "pid": os.getpid()})
        warm.tell({"running": True})
        done = threading.Event()
        execute.guard_with(conn, done)
        return run(warm, conn, request, home, done)
    except Exception:
        import traceback

        traceback.print_exc(file=daemon_log)
        daemon_log.flush()
        raise
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
