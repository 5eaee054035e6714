"""The handle of a batch stage run in a process of its own (`runners.execute`).

`LocalRunner` runs a stage either so or in the stage worker (`worker_stage.WorkerStage`);
both handles answer the same calls: `wait`, `stop` (past the time limit), `interrupt`
(Ctrl-C), `lost` (the record when no result.json was written), `report` (the HTML).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nb2prod import artifacts, lifeline

#: Seconds a stage process gets to stop its kernel after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 10


@dataclass
class StageProcess:
    """A running stage process of its own and its temporary working directory.

    The same handle as `worker_stage.WorkerStage` (a stage in the stage worker):
    `wait`, `stop`, `interrupt`, `lost`, `report`.
    """

    proc: subprocess.Popen
    work: Path

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        return stop_stage_process(self.proc)

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: the stage process kills its kernel on SIGTERM (`runners.execute`)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def lost(self) -> dict:
        return {"status": "failed", "ename": "ProcessError",
                "evalue": f"stage process exited with code {self.proc.returncode}"}

    def report(self, executed: Path, html: Callable[[], artifacts.HtmlRenderer]) -> str | None:
        """Render the HTML report of the executed notebook here, in the runner."""
        return html().render(executed, executed.with_suffix(".html"))


def stop_stage_process(proc: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> int:
    """SIGTERM a stage process (it stops its kernel), SIGKILL it and its tree after `grace`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        lifeline.kill_tree(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()
