"""The stage notebook's kernel (started ahead, before papermill is imported), cell
labels as JupyterLab counts them, and the HTML report."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ArtifactError, _first_line, first_line
from .stage_env import _config


def _source_cell(notebook: dict, index: int | None) -> int | None:
    """Index of the original notebook cell behind cell ``index`` of an executed stage notebook."""
    if index is None or not isinstance(notebook, dict):
        return None
    # papermill inserts error-marker cells before raising; its index does not count them
    cells = [c for c in notebook.get("cells", [])
             if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    if not 0 <= index < len(cells):
        return None
    ids = notebook.get("metadata", {}).get("nb2prod", {}).get("source_cells_by_id", {})
    return ids.get(cells[index].get("id"))


def _cell_line(notebook: dict, index: int | None) -> str | None:
    """First line of cell ``index`` of an executed stage notebook (a copy of the user's cell)."""
    cells = [c for c in notebook.get("cells", []) if isinstance(notebook, dict)
             and "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    if index is None or not 0 <= index < len(cells):
        return None
    source = cells[index].get("source", "")
    return first_line(source if isinstance(source, str) else "".join(source))


def _stage_executable(stage_dir: Path, stage: str) -> str:
    config = _config(stage_dir)
    return (config.get("default", "EXECUTABLE", fallback="").strip()
            or config.get("default", "EXECUTABLE_SCRIPT", fallback="").strip()
            or f"{stage}.ipynb")


def _stage_params(raw: str | None) -> dict:
    if not raw or not raw.strip():
        return {}
    try:
        params = json.loads(raw)
    except ValueError as exc:
        raise ArtifactError(f"NB2PROD_PARAMS is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ArtifactError("NB2PROD_PARAMS must be a JSON object of parameter values")
    return params


_KERNEL_START_FAILURES = ("Kernel didn't respond", "Kernel died before replying")


class _KernelHead:
    """A kernel started before papermill is imported, so that the two overlap.

    Booting ipykernel (~1.3 s) and importing papermill (~0.6 s) each take a good
    part of a stage's fixed cost; the kernel is a separate process, so starting
    it first lets both proceed at once.  nbclient uses a kernel manager it is
    given as it is (``km=``) and leaves its shutdown to us.  Any problem here
    just means papermill starts its own kernel, as it would without this.
    """

    def __init__(self, cwd: Path) -> None:
        self.km: Any = None
        self.given = False
        self.stopping: Any = None
        try:
            import asyncio

            from jupyter_client.kernelspec import KernelSpecManager
            from jupyter_client.manager import AsyncKernelManager
            from jupyter_core.paths import jupyter_path

            # The same directories jupyter_client searches by default, but without
            # importing IPython (0.4 s) just to learn where ~/.ipython is.
            ipython_dir = os.environ.get("IPYTHONDIR") or os.path.join(
                os.path.expanduser("~"), ".ipython")
            specs = KernelSpecManager(
                kernel_dirs=[*jupyter_path("kernels"), os.path.join(ipython_dir, "kernels")])
            km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)
            # ERROR: ipykernel warns on every start that TCP on 127.0.0.1 is not encrypted
            # (its messages are HMAC-signed; CurveZMQ is for untrusted networks), which
            # would be all a stage log shows; errors and the cells' output still appear.
            asyncio.run(km.start_kernel(cwd=str(cwd),
                                        extra_arguments=["--IPKernelApp.log_level=ERROR"]))
            self.km = km
        except Exception:  # noqa: BLE001 - fall back to papermill's own start
            self.km = None

    def take(self) -> dict:
        """papermill keyword arguments using this kernel, the first time only."""
        if self.km is None or self.given:
            return {}
        self.given = True
        return {"km": self.km}

    def shutdown_soon(self) -> None:
        """Stop the kernel in the background (while the HTML renders)."""
        import threading

        self.stopping = threading.Thread(target=self._stop, name="nb2prod-kernel-stop",
                                         daemon=True)
        self.stopping.start()

    def shutdown(self) -> None:
        """Stop the kernel now, or wait until `shutdown_soon` has."""
        if self.stopping is not None:
            self.stopping.join()
        else:
            self._stop()

    def _stop(self) -> None:
        km, self.km = self.km, None
        if km is not None:
            import asyncio

            with contextlib.suppress(Exception):  # the kernel exits with us anyway
                asyncio.run(km.shutdown_kernel(now=True))


class HtmlRenderer:
    """nbconvert's HTML exporter, imported and warmed in a thread, then shared.

    Importing nbconvert and compiling its templates (~1 s) would otherwise come
    after a notebook finished.  `run-stage` warms it while its kernel runs;
    `nb2prod run` renders in the stage worker's process (warmed before it got
    its stage), or, without the worker, in the runner process, which is idle
    while its stage processes work.  Rendering
    errors are returned, never raised: a report must not fail a stage.
    """

    def __init__(self) -> None:
        import threading

        self.exporter: Any = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._warm, name="nb2prod-html", daemon=True)
        self.thread.start()

    def _warm(self) -> None:
        try:
            _hide_slow_format_checker()
            import nbformat
            from nbconvert import HTMLExporter

            exporter = HTMLExporter()
            exporter.from_notebook_node(nbformat.v4.new_notebook(cells=[
                nbformat.v4.new_code_cell("1")]))  # compiles the templates once
            self.exporter = exporter
        except Exception as exc:  # noqa: BLE001 - reported by render()
            self.error = _first_line(exc)

    def render(self, notebook_path: Path, html_path: Path) -> str | None:
        """Write the HTML rendering; returns an error message instead of raising."""
        self.thread.join()
        if self.exporter is None:
            return self.error or "nbconvert is not available"
        try:
            import nbformat

            notebook = nbformat.read(notebook_path, as_version=4)
            with self.lock:  # one exporter, possibly several stage threads
                body, _ = self.exporter.from_notebook_node(notebook)
            html_path.write_text(body, encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - rendering must not fail the stage
            return _first_line(exc)
        return None


def _hide_slow_format_checker() -> None:
    """Keep jsonschema from importing `rfc3987_syntax` in this (stage) process.

    When that optional package is installed, every ``import jsonschema`` (so
    nbformat's, so papermill's) builds its grammar: ~2 s of CPU, for an IRI
    format check the notebook schema never uses.  Only this process's imports
    are affected; the kernel is a process of its own.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
