"""Ctrl-C and SIGTERM in the runner: one exception, `Interrupted`, and a shield for cleanup.

`nb2prod run` turns both signals into `Interrupted` (`signals_interrupt`) so that
everything it started is stopped by the code that started it, and a second
signal during that cleanup is noted rather than raised halfway (`shielded`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


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


