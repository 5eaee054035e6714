"""Detached processes started from JupyterLab (a local run, a deploy), recorded on disk.

A launch is one `nb2prod run` or `nb2prod deploy` process that is not a child
of the browser tab and survives the jupyter server: it runs in its own session
(a server shutdown's Ctrl-C to its process group does not reach it), and
everything the panel shows about it is on disk, under
``DIR/.nb2prod/panel/<id>/``: ``launch.json`` (kind, command line, runner
identity, exit code once reaped) and ``output.log`` (its console output), plus
whatever the kind writes itself (a deploy's ``events.jsonl``), and ``stop.json``
once the panel's Stop was pressed (who, when; the process reads it on SIGTERM and
records itself as stopped).  A reopened
panel, even of a restarted server, finds it there again.

Nothing secret goes into a record: the command line carries names and URIs,
never credentials (those reach the process through the inherited environment,
which is not recorded).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nb2prod.runners.interrupts import STOP_NOTE_ENV

#: Where a pipeline directory keeps the panel's launch records.
LAUNCH_DIR = Path(".nb2prod") / "panel"
#: Lines of console output a launch status carries.
TAIL_LINES = 30
#: The stop note in a launch's folder (`runners.interrupts`): who stopped it, when.
STOP_NOTE = "stop.json"
#: Environment a launched process must not inherit from the jupyter server.
DROPPED_ENV = ("NB2PROD_LIFELINE_FD", "JUPYTER_TOKEN", "JPY_API_TOKEN")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` atomically (a reader never sees half a record)."""
    from nb2prod.runtime.stores import replace_file

    replace_file(path, json.dumps(data, default=str).encode("utf-8"))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _reap(proc: subprocess.Popen, record_file: Path) -> None:
    """Wait for a launch's process (no zombie) and record its exit code."""
    code = proc.wait()
    record = read_json(record_file) or {}
    record.update(exit_code=code, finished=time.time())
    write_json(record_file, record)


def start_detached(pipeline_dir: Path, kind: str, command: Callable[[Path], list[str]], /,
                   **details: Any) -> dict[str, Any]:
    """Start `command(folder)` detached, recorded in a new folder under LAUNCH_DIR.

    `command` gets the launch's folder (a deploy writes its events there);
    `details` (JSON-able, no secrets) are kept in the record for the status.
    """
    from nb2prod.runners.local import runner_identity

    launch_id = f"{time.strftime('%Y%m%dt%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    folder = pipeline_dir / LAUNCH_DIR / launch_id
    folder.mkdir(parents=True)
    argv = command(folder)
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env[STOP_NOTE_ENV] = str(folder / STOP_NOTE)  # where `terminate` says who stopped it
    with open(folder / "output.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=pipeline_dir.parent, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    record = {"id": launch_id, "kind": kind, "started": time.time(), "command": argv[2:],
              "runner": runner_identity(proc.pid), **details}
    write_json(folder / "launch.json", record)
    threading.Thread(target=_reap, args=(proc, folder / "launch.json"),
                     name=f"nb2prod-{kind}-{launch_id}", daemon=True).start()
    return record


def is_running(record: dict[str, Any]) -> bool:
    """Not reaped, and its process is not known to be gone (a restarted server cannot
    reap a launch of its predecessor, but sees that its process ended)."""
    from nb2prod.runners.local import runner_alive

    return "exit_code" not in record and runner_alive(record.get("runner")) is not False


def terminate(record: dict[str, Any], folder: Path, by: str) -> None:
    """SIGTERM to a running launch's process group (what Ctrl-C in a terminal would do);
    only to a process known to be that launch's (same host, same start time).

    The stop note (`by` whom, when) is written first: the process reads it when the
    signal arrives and records itself as stopped, not interrupted or failed.
    """
    from nb2prod.runners.interrupts import write_stop_note
    from nb2prod.runners.local import runner_alive

    runner = record.get("runner") or {}
    if "exit_code" not in record and runner_alive(runner):
        if read_json(folder / STOP_NOTE) is None:  # the first Stop is the one that counts
            write_stop_note(folder / STOP_NOTE, by, "JupyterLab")
        try:
            os.killpg(int(runner["pid"]), signal.SIGTERM)
        except (ProcessLookupError, KeyError, TypeError, ValueError):
            pass


def records(pipeline_dir: Path, kind: str) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, record) of every launch of `kind` in the pipeline dir, newest first.

    Records written before launches had a kind are runs.
    """
    folder = pipeline_dir / LAUNCH_DIR
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir(), reverse=True):
        record = read_json(entry / "launch.json") if entry.is_dir() else None
        if record is not None and record.get("kind", "run") == kind:
            found.append((entry, record))
    return found


def record_of(pipeline_dir: Path, kind: str, launch_id: str) -> dict[str, Any] | None:
    """The record of one launch of `kind`, or None."""
    record = read_json(pipeline_dir / LAUNCH_DIR / launch_id / "launch.json")
    return record if record is not None and record.get("kind", "run") == kind else None


def head(path: Path, size: int = 16 * 1024) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(size).decode("utf-8", errors="replace")
    except OSError:
        return ""


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
