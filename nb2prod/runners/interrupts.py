"""Ctrl-C and SIGTERM in the runner: one exception, `Interrupted`, and a shield for cleanup.

`nb2prod run` turns both signals into `Interrupted` (`signals_interrupt`) so that
everything it started is stopped by the code that started it, and a second
signal during that cleanup is noted rather than raised halfway (`shielded`).

A deliberate stop (the JupyterLab panel's Stop button) is a SIGTERM too; a
signal carries no words, so whoever stops a process writes a *stop note* (who,
when) first, to the file named by ``NB2PROD_STOP_NOTE`` in that process's
environment (`stop_note`): the process then records itself as `stopped` (by whom,
when) rather than interrupted or failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

#: Environment variable naming the file a deliberate stop's note is written to.
STOP_NOTE_ENV = "NB2PROD_STOP_NOTE"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the runner: stop everything, record the run as such."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM (CI, `timeout`, a script's `kill PID`) and SIGINT raise `Interrupted`.

    Set explicitly rather than inherited: a runner started with SIGINT ignored (a
    background job) still stops on Ctrl-C, and SIGTERM no longer kills the runner
    outright, which would leave its stages and servers to their lifelines only.
    """
    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def shielded() -> Iterator[list[int]]:
    """While cleaning up, a second Ctrl-C / SIGTERM is noted, not raised mid-cleanup."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)




def write_stop_note(path: os.PathLike[str] | str, by: str, via: str) -> dict[str, Any]:
    """Note who stops a process (`by`, through `via`) and when, before signalling it."""
    from pathlib import Path

    from nb2prod.runtime.stores import replace_file

    note = {"by": by, "via": via, "at": time.time()}
    replace_file(Path(path), json.dumps(note).encode("utf-8"))
    return note


def read_stop_note(path: os.PathLike[str] | str | None) -> dict[str, Any] | None:
    """The stop note at `path`, if one was written (else None)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            note = json.load(fh)
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) and isinstance(note.get("by"), str) else None


def stop_note() -> dict[str, Any] | None:
    """This process's stop note: set when the signal that reached it was a deliberate stop."""
    return read_stop_note(os.environ.get(STOP_NOTE_ENV))


def stopped_text(note: dict[str, Any]) -> str:
    """`stopped by NAME (VIA) at HH:MM:SS UTC`: what a stopped run or stage says."""
    at = note.get("at")
    when = time.strftime(" at %H:%M:%S UTC", time.gmtime(at)) if isinstance(
        at, (int, float)) else ""
    via = f" ({note['via']})" if note.get("via") else ""
    return f"stopped by {note['by']}{via}{when}"
