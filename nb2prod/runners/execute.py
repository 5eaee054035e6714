"""Execute one batch stage notebook with papermill, in its own process.

`nb2prod run` starts one of these per stage so that stages run truly in
parallel, each with its own environment (run id, store) and a kernel that a
Ctrl-C or a failure can kill cleanly.  The work itself is the stage runtime's
:func:`nb2prod.artifacts.execute_notebook` (the same code in-cluster stages
run through `nb2prod_runtime.py run-stage`); this wrapper writes its record to
WORK_DIR/result.json for the parent to report, render as HTML and upload.

Usage: python -m nb2prod.runners.execute STAGE_DIR EXECUTABLE WORK_DIR PARAMS_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def execute(stage_dir: Path, executable: str, work: Path, params: dict) -> dict:
    """Run the notebook; never raises for notebook errors, returns the result record.

    The runner laid out the working directory (``NB2PROD_WORKDIR``: the input
    files); the runtime adds the files of earlier stages and records what the
    stage wrote there.
    """
    import os

    from nb2prod.artifacts import execute_in_workdir

    # The HTML report is rendered by the runner (warm and idle meanwhile).
    cwd = Path(os.environ.get("NB2PROD_WORKDIR") or stage_dir)
    result = execute_in_workdir(stage_dir, executable, work, params, cwd, render_html=False)
    (work / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str]) -> int:
    from nb2prod.artifacts import log_stage_output

    log_stage_output()
    stage_dir, executable, work, params_json = argv
    params = json.loads(Path(params_json).read_text())
    result = execute(Path(stage_dir), executable, Path(work), params)
    return 0 if result["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
