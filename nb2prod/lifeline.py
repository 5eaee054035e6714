"""Children of `nb2prod run` die with it, however it dies.

Stage processes and gunicorn lead their own sessions (so that Ctrl-C in the terminal
reaches the runner only, which then stops them in order), which also means that a
`kill -9` of the runner, or a SIGTERM to its process group, never reaches them.  The
runner therefore holds the write end of a pipe, the *lifeline*, and gives every child the
read end (its number in ``NB2PROD_LIFELINE_FD``).  Nothing is ever written: when the
runner exits for any reason the kernel closes the write end, the child's blocking read
returns EOF, and the child stops itself and what it started.  Unlike
``PR_SET_PDEATHSIG`` this needs no Linux-only call, does not depend on which runner
thread started the child, and also covers the moment between fork and the child's first
line (a pipe whose writer is gone already reads EOF at once).

Used as a gunicorn config module too (``-c python:nb2prod.lifeline``): ``on_starting``
runs in the master, whose SIGTERM then drains in-flight requests and frees the port.
Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable

ENV = "NB2PROD_LIFELINE_FD"


class Lifeline:
    """The runner's end: one pipe for all children of one `nb2prod run`."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()  # both non-inheritable (PEP 446)

    def child_env(self) -> dict[str, str]:
        """Environment entries telling a child which descriptor is its lifeline."""
        return {ENV: str(self.read_fd)}

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """For `subprocess.Popen(pass_fds=...)`: only the read end is inherited."""
        return (self.read_fd,)


_RUNNER: Lifeline | None = None


def runner() -> Lifeline:
    """This process's lifeline, created on first use and open until the process ends."""
    global _RUNNER
    if _RUNNER is None:
        _RUNNER = Lifeline()
    return _RUNNER


def stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after "pid (comm) ": state, ppid, ... (None: gone or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, from /proc (Linux); [] where there is no /proc.

    The kernel jupyter_client starts leads a session of its own, so killing a stage's
    process group would miss it and whatever the notebook started: this finds them.
    """
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        fields = stat_fields(entry) if entry.isdigit() else None
        if fields is not None and len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to every descendant of `pid` and to the process groups they lead."""
    own = os.getpgrp()
    for child in descendants(pid):
        if _leads_group(child, own):
            with contextlib.suppress(OSError):
                os.killpg(child, sig)
        with contextlib.suppress(OSError):
            os.kill(child, sig)


def _leads_group(pid: int, own: int) -> bool:
    try:
        return os.getpgid(pid) == pid != own
    except OSError:
        return False


def watch(on_parent_gone: Callable[[], None], environ: dict[str, str] | None = None) -> bool:
    """In a child: call `on_parent_gone` (in a daemon thread) when the runner is gone.

    Returns False when this process was not started with a lifeline (run by hand, or by
    Kubernetes, where the pod's end stops everything anyway).
    """
    raw = (environ if environ is not None else os.environ).get(ENV, "")
    if not raw.isdigit():
        return False
    fd = int(raw)
    try:
        os.fstat(fd)
    except OSError:
        return False

    def wait() -> None:
        try:
            while os.read(fd, 1):
                pass  # never written to; a byte would be a mistake, not a signal
        except OSError:
            pass
        on_parent_gone()

    threading.Thread(target=wait, name="nb2prod-lifeline", daemon=True).start()
    return True


def on_starting(server: object) -> None:
    """gunicorn hook (master): a gone runner is a SIGTERM, i.e. a graceful stop."""
    if watch(lambda: os.kill(os.getpid(), signal.SIGTERM)):
        os.environ.pop(ENV, None)  # workers (forks of the master) need not watch too
