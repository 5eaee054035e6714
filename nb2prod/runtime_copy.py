"""The stage runtime as a pipeline ships it: `nb2prod/runtime/` copied to `nb2prod_runtime/`.

One copy per pipeline directory, beside the stage directories (locally every stage
and service puts that directory on its import path), and in the cluster one
content-hashed ConfigMap mounted into every pod next to the stage's own code.
"""

from __future__ import annotations

from pathlib import Path

#: The package name generated code imports (`import nb2prod_runtime as _nb2prod`).
RUNTIME_DIR = "nb2prod_runtime"

_SOURCE = Path(__file__).resolve().parent / "runtime"


def _package(directory: Path) -> dict[str, bytes]:
    return {f"{RUNTIME_DIR}/{path.name}": path.read_bytes()
            for path in sorted(directory.glob("*.py"))}


def runtime_files() -> dict[str, bytes]:
    """{`nb2prod_runtime/<module>.py`: source} of this nb2prod's runtime, sorted."""
    return _package(_SOURCE)


def pipeline_runtime(root: Path) -> dict[str, bytes]:
    """The runtime copy a pipeline directory holds (what its stages run with)."""
    return _package(Path(root) / RUNTIME_DIR)
