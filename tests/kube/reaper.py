"""Pod processes die with the stand-in, however the stand-in dies.

A container's PID 1 leads its own session (as in a real runtime, so that a
signal to the test's process group does not reach it), so a ``kill -9`` of the
process running the stand-in (pytest, or ``python -m tests.kube.standin``)
would leave every pod process running.  The stand-in therefore starts one
*reaper* process per process and tells it, over a pipe, each container
process group it starts (``+PID``) and each it has reaped (``-PID``).  Nothing
else ever closes that pipe: when the stand-in's process ends for any reason
the kernel closes the write end, the reaper reads EOF and SIGKILLs what is
still registered, with its descendants (a kernel that leads a session of its
own included), then exits.  The same lifeline as ``nb2prod.lifeline``, with
the watching done outside the containers, whose commands are arbitrary.

Run as a script (``python -I -S reaper.py``): standard library only, no path
from the environment, its own session, so neither a kill of the stand-in's
process group nor Ctrl-C in a terminal stops it before it has done its job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


class Reaper:
    """The stand-in's end: register container process groups while they run."""

    def __init__(self) -> None:
        read_fd, self._write_fd = os.pipe()  # non-inheritable: no pod process holds it
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(Path(__file__).resolve())], stdin=read_fd,
                stdout=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(read_fd)
        self._lock = threading.Lock()

    def _send(self, line: str) -> None:
        with self._lock, contextlib.suppress(OSError):
            os.write(self._write_fd, f"{line}\n".encode())

    def watch(self, pid: int) -> None:
        """`pid` leads a container's process group: kill it if this process dies."""
        self._send(f"+{pid}")

    def forget(self, pid: int) -> None:
        """`pid` has been reaped (its number may be reused): no longer ours to kill."""
        self._send(f"-{pid}")


_REAPER: Reaper | None = None
_CREATE = threading.Lock()


def reaper() -> Reaper:
    """This process's reaper, started on first use; it lives as long as this process."""
    global _REAPER
    with _CREATE:
        if _REAPER is None:
            _REAPER = Reaper()
        return _REAPER


# -- the reaper process -----------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1].isdigit():
            found.setdefault(int(fields[1]), []).append(int(entry))
    return found


def kill_all(pids: set[int]) -> None:
    """SIGKILL each process group in `pids` and every descendant of its leader."""
    children = _children()
    doomed, todo = set(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in doomed:
                doomed.add(child)
                todo.append(child)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    for pid in doomed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def main() -> None:
    """Keep the registered set until EOF on stdin, then kill what is in it."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only EOF ends the reaper
    alive: set[int] = set()
    for line in sys.stdin.buffer:
        text = line.strip().decode("ascii", "replace")
        if text[1:].isdigit():
            (alive.add if text[0] == "+" else alive.discard)(int(text[1:]))
    kill_all(alive)


if __name__ == "__main__":
    main()
