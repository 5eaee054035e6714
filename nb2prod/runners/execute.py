"""Execute one batch stage notebook with papermill, in its own process.

`nb2prod run` starts one of these per stage so that stages run truly in
parallel, each with its own environment (run id, store) and a kernel that a
Ctrl-C or a failure can kill cleanly.  The work itself is the stage runtime's
:func:`nb2prod.artifacts.execute_notebook` (the same code in-cluster stages
run through `python -m nb2prod_runtime run-stage`); this wrapper writes its record to
WORK_DIR/result.json for the parent to report, render as HTML and upload.

With a fifth argument `--wait` the process is started ahead, while the
stage's inputs are still being computed: it boots the kernel and imports
papermill, then waits for one line on stdin, `go` (run the stage now) or
anything else / EOF (the stage will not run: stop the kernel and exit 0).  The
kernel boot and the imports then overlap the upstream stages instead of
following them.

The process never outlives the runner: it watches the runner's lifeline
(`nb2prod.lifeline`) and, when the runner is gone (even by ``kill -9``), or on SIGTERM
(Ctrl-C, a stage time limit), first kills its kernel and everything the notebook
started (they lead sessions of their own), then exits.

Usage: python -m nb2prod.runners.execute STAGE_DIR EXECUTABLE WORK_DIR PARAMS_JSON [--wait]
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from nb2prod import lifeline

#: Exit code after SIGTERM (128 + 15, what a shell reports).
TERMINATED = 143


def _die(code: int) -> None:
    """Kill the kernel and the notebook's processes, then exit at once."""
    lifeline.kill_tree(os.getpid())
    time.sleep(0.2)  # a kernel whose fork was under way during the first pass
    lifeline.kill_tree(os.getpid())
    os._exit(code)


def guard() -> None:
    """Die with the runner, and make SIGTERM take the kernel along."""
    signal.signal(signal.SIGTERM, lambda signum, frame: _die(TERMINATED))
    lifeline.watch(lambda: _die(TERMINATED))


def guard_with(conn: socket.socket | None, done: threading.Event | None = None) -> None:
    """`guard` for a stage worker's process: SIGTERM, and EOF on the runner's `conn`
    (the runner gone, Ctrl-C, a time limit) before `done`, kill the kernel and exit."""
    signal.signal(signal.SIGTERM, lambda signum, frame: _die(TERMINATED))
    if conn is None:
        return

    def wait() -> None:
        try:
            while conn.recv(4096):
                pass  # the runner sends nothing after its request
        except OSError:
            pass
        if done is None or not done.is_set():
            _die(TERMINATED)

    threading.Thread(target=wait, name="nb2prod-runner-conn", daemon=True).start()


def execute(stage_dir: Path, executable: str, work: Path, params: dict,
            wait: bool = False) -> dict | None:
    """Run the notebook; never raises for notebook errors, returns the result record
    (None when started ahead with `wait` and then told not to run).

    The runner laid out the working directory (``NB2PROD_WORKDIR``: the input
    files); the runtime adds the files of earlier stages (only after `go`: they
    may not exist before) and records what the stage wrote there.
    """
    import os

    from nb2prod import artifacts
    from nb2prod.runtime import kernel as kernel_module

    cwd = Path(os.environ.get("NB2PROD_WORKDIR") or stage_dir)
    kernel = None
    try:
        if wait:
            kernel = artifacts.start_kernel(stage_dir, cwd)
            kernel_module._hide_slow_format_checker()
            import papermill  # noqa: F401 - imported now, while the kernel boots

            if sys.stdin.readline().strip() != "go":
                return None
        # The HTML report is rendered by the runner (warm and idle meanwhile).
        result = artifacts.execute_in_workdir(stage_dir, executable, work, params, cwd,
                                              render_html=False, kernel=kernel)
    finally:
        if kernel is not None:
            kernel.shutdown()  # (already, unless the files could not be laid out)
    (work / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str]) -> int:
    from nb2prod.artifacts import log_stage_output

    log_stage_output()
    stage_dir, executable, work, params_json, *flags = argv
    guard()
    params = json.loads(Path(params_json).read_text())
    result = execute(Path(stage_dir), executable, Path(work), params, wait="--wait" in flags)
    return 0 if result is None or result["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
