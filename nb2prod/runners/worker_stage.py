"""The runner's side of a stage run by the stage worker (`nb2prod.worker`).

`submit` hands a stage to the daemon (starting it when none runs) and returns a
`WorkerStage`, which behaves for `LocalRunner` like the handle of a stage
process of its own (`local.StageProcess`): `wait` for the exit code, `stop`
past the time limit, `interrupt` on Ctrl-C, `report` for the HTML.  Closing
the connection is how a stage is stopped: the stage process then kills its
kernel and everything the notebook started.  When the worker cannot be used,
`WorkerUnavailable` says why and the runner runs the stage itself.

Switched off by ``NB2PROD_WORKER=0`` (or ``[run] WORKER = false`` in
nb2prod.ini).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from nb2prod import lifeline, worker
from nb2prod.worker import WorkerUnavailable

__all__ = ["WorkerStage", "WorkerUnavailable", "enabled", "submit"]

OFF = ("0", "false", "no", "off")


def enabled(setting: str = "") -> bool:
    """The worker is used unless ``NB2PROD_WORKER`` or `setting` (``[run] WORKER``) is off."""
    env = os.environ.get("NB2PROD_WORKER", "").strip().lower()
    return env not in OFF and setting.strip().lower() not in OFF


class WorkerStage:
    """A stage running in a worker's stage process, seen through its connection."""

    def __init__(self, sock: socket.socket, work: Path, pid: int) -> None:
        self.sock = sock
        self.work = work
        self.pid = pid
        self.status: str | None = None  # from the `result` event
        self.html_error: str | None = None
        self.reported = False
        self.returncode: int | None = None

    def _event(self, deadline: float | None) -> dict | None:
        """The next event from the stage process; None once the connection is gone."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired("stage", 0)
        try:
            self.sock.settimeout(left)
            return worker.read_line(self.sock)
        except TimeoutError:
            raise subprocess.TimeoutExpired("stage", 0) from None
        except (OSError, ValueError):
            return None

    def wait(self, timeout: float | None = None) -> int:
        """Until the stage's result is written: 0 succeeded, 1 failed, -1 process lost."""
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self._event(deadline)
            if event is None:
                self.returncode = -1
                return -1
            if event.get("event") == "result":
                self.status = event.get("status")
                self.returncode = 0 if self.status == "succeeded" else 1
                return self.returncode

    def lost(self) -> dict:
        """The result record when the stage process died without writing one."""
        return {"status": "failed", "ename": "WorkerError",
                "evalue": f"the stage worker's process (pid {self.pid}) ended before the "
                          "stage did"}

    def report(self, executed: Path, html: object = None) -> str | None:
        """Wait until the stage process has rendered the HTML report; its error, if any."""
        if not self.reported:
            self.reported = True
            with contextlib.suppress(subprocess.TimeoutExpired):
                while (event := self._event(time.monotonic() + 600)) is not None:
                    if event.get("event") == "html":
                        self.html_error = event.get("error")
                        break
            self.close()
        return self.html_error

    def interrupt(self) -> None:
        """Ctrl-C: close the connection; the stage process kills its kernel and exits."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def stop(self, grace: float = 10.0) -> int:
        """Past the time limit: close, wait until the stage process is gone (kill after `grace`)."""
        self.interrupt()
        deadline = time.monotonic() + grace
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(self.pid):
            lifeline.kill_tree(self.pid)
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        self.close()
        self.returncode = -signal.SIGTERM
        return self.returncode

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _alive(pid: int) -> bool:
    fields = lifeline.stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def submit(stage: str, stage_dir: Path, executable: str, work: Path, params: dict,
           env: dict[str, str], identity: dict[str, str], planned: int = 1,
           upcoming: int = 0) -> WorkerStage:
    """Hand one stage to the worker; returns once a stage process has taken it.

    `env` is the stage's whole environment, `identity` (`worker.identity_env` of the
    environment before the stage directories were added to PYTHONPATH) picks the warm
    processes that started like this one would have.  `planned` (the run's batch stages)
    and `upcoming` (those not started yet) tell the daemon how many to keep warm.
    """
    try:
        sock = worker.connect()
    except OSError as exc:
        raise WorkerUnavailable(str(exc)) from None
    try:
        sock.settimeout(120)
        worker.send_line(sock, {
            "op": "run", "identity": identity, "stage": stage,
            "stage_dir": str(stage_dir), "executable": executable, "work": str(work),
            "params": params, "env": env, "planned": planned, "upcoming": upcoming})
        event = worker.read_line(sock)
    except (OSError, ValueError) as exc:
        sock.close()
        raise WorkerUnavailable(f"no answer ({exc})") from None
    if not event or event.get("event") != "started":
        sock.close()
        raise WorkerUnavailable("the worker did not take the stage")
    return WorkerStage(sock, work, int(event["pid"]))
