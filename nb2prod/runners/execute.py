"""Execute one batch stage notebook with papermill, in its own process.

`nb2prod run` starts one of these per stage so that stages run truly in
parallel, each with its own environment (run id, store) and a kernel that a
Ctrl-C or a failure can kill cleanly.  It writes into WORK_DIR: the executed
notebook, its HTML rendering and `result.json` (status, failing cell,
exception) for the parent to report and upload.

Usage: python -m nb2prod.runners.execute STAGE_DIR EXECUTABLE WORK_DIR PARAMS_JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def source_cell(notebook: dict, index: int | None) -> int | None:
    """Index of the original notebook cell behind cell `index` of an executed stage notebook."""
    if index is None:
        return None
    # papermill inserts error-marker cells before raising; its index counts them
    cells = [c for c in notebook.get("cells", [])
             if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    if not 0 <= index < len(cells):
        return None
    ids = notebook.get("metadata", {}).get("nb2prod", {}).get("source_cells_by_id", {})
    return ids.get(cells[index].get("id"))


def to_html(notebook_path: Path, html_path: Path) -> None:
    """The executed notebook as standalone HTML (nbconvert), for people without Jupyter."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook_path, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    html_path.write_text(body, encoding="utf-8")


def execute(stage_dir: Path, executable: str, work: Path, params: dict) -> dict:
    """Run the notebook; never raises for notebook errors, returns the result record."""
    from nb2prod.notebook import import_nbformat

    import_nbformat()  # before papermill imports it: skips a 2.8 s grammar build
    import papermill
    from papermill.exceptions import PapermillExecutionError

    work.mkdir(parents=True, exist_ok=True)
    stem = Path(executable).stem
    output = work / f"{stem}.ipynb"
    result: dict = {"status": "succeeded", "started": time.time()}
    try:
        papermill.execute_notebook(
            str(stage_dir / executable), str(output), parameters=params, cwd=str(stage_dir),
            kernel_name="python3", progress_bar=False, log_output=True,
        )
    except PapermillExecutionError as exc:
        executed = json.loads(output.read_text()) if output.is_file() else {}
        result.update(status="failed", ename=exc.ename, evalue=str(exc.evalue),
                      stage_cell=exc.cell_index, cell=source_cell(executed, exc.cell_index))
    except Exception as exc:  # noqa: BLE001 - kernel died, bad notebook...: report, don't crash
        result.update(status="failed", ename=type(exc).__name__, evalue=str(exc), cell=None)
    result["finished"] = time.time()
    if output.is_file():
        try:
            to_html(output, work / f"{stem}.html")
        except Exception as exc:  # noqa: BLE001 - a rendering problem must not fail the stage
            result["html_error"] = str(exc)
    (work / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str]) -> int:
    stage_dir, executable, work, params_json = argv
    params = json.loads(Path(params_json).read_text())
    result = execute(Path(stage_dir), executable, Path(work), params)
    return 0 if result["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
