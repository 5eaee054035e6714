"""Stage progress for long commands: a live table on a terminal, plain lines otherwise.

Runners only emit events (`{"stage", "state", "message", "elapsed"}`); how they
are shown is decided here, so `run`, `deploy` and the JupyterLab extension can
share the same event stream.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

COLOURS = {"waiting": "dim", "running": "cyan", "done": "green", "cached": "blue",
           "failed": "red", "skipped": "yellow", "serving": "green"}


def state_text(event: dict) -> tuple[str, str]:
    """(state, message) as shown: a cached stage reads `cached (run ID)`."""
    if event["state"] == "cached" and event.get("message"):
        return f"cached ({event['message']})", ""
    return event["state"], event.get("message", "")


class Progress:
    """Consumes stage events; use as a context manager around the work."""

    def __init__(self, title: str, live: bool | None = None, *,
                 failure_details: bool = True) -> None:
        self.title = title
        # False: the command prints each failure's message itself, once, at the end.
        self.failure_details = failure_details
        self.live_mode = sys.stdout.isatty() if live is None else live
        self.rows: dict[str, dict] = {}
        self.started: dict[str, float] = {}
        self.lock = threading.Lock()
        self._live = None

    def __call__(self, event: dict) -> None:
        with self.lock:
            name = event["stage"]
            if event["state"] == "running":
                self.started[name] = time.time()
            self.rows[name] = dict(event)
            if event["state"] == "failed" and not self.failure_details:
                self.rows[name]["message"] = ""
            if self._live is not None:
                self._live.update(self._table())
            elif event["state"] != "waiting":
                state, message = state_text(self.rows[name])
                message = f" {message}" if message else ""
                elapsed = f" ({event['elapsed']:.1f}s)" if event.get("elapsed") and \
                    event["state"] != "cached" else ""
                print(f"[{time.strftime('%H:%M:%S')}] stage {name}: {state}"
                      f"{elapsed}{message}", flush=True)

    def _table(self):
        from rich.table import Table

        table = Table(title=self.title, title_justify="left")
        for column in ("stage", "state", "elapsed", "message"):
            table.add_column(column, overflow="fold")
        for name, row in self.rows.items():
            state = row["state"]
            elapsed = row.get("elapsed") or 0.0
            if state == "running" and name in self.started:
                elapsed = time.time() - self.started[name]
            shown, message = state_text(row)
            table.add_row(name, f"[{COLOURS.get(state, '')}]{shown}[/]", f"{elapsed:.1f}s",
                          message)
        return table

    def __enter__(self):  # -> Self (typing.Self needs 3.11)
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=4, transient=False)
            self._live.__enter__()
            threading.Thread(target=self._tick, daemon=True).start()
        return self

    def _tick(self) -> None:
        while self._live is not None:
            with self.lock:
                if self._live is not None:
                    self._live.update(self._table())
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.update(self._table())
            live.__exit__(None, None, None)


class EventLog:
    """Stage events, then the outcome, appended to a file as JSON lines.

    The record another process follows a long command by (the JupyterLab
    panel follows a detached `nb2prod deploy --events FILE` this way, also
    after the server that started it restarted).  Each line is one
    `{"event": {...}}`, `{"result": {...}}` or `{"error": "...", "problems":
    [...]}`; a reader skips a last line still being written.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        self.write({"event": event, "time": time.time()})  # when: a running stage's clock

    def write(self, entry: dict) -> None:
        line = json.dumps(entry, default=str) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()


def tee(*sinks: Callable[[dict], None]) -> Callable[[dict], None]:
    """One event callback feeding several (the terminal's progress and an EventLog)."""
    def each(event: dict) -> None:
        for sink in sinks:
            sink(event)
    return each


def read_event_log(path: Path) -> list[dict]:
    """The complete entries of an EventLog file so far (none if it does not exist)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the line being written
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
