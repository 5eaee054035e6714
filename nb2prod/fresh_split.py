"""Skip the split of an unchanged notebook in `nb2prod run NOTEBOOK` (the edit-run loop).

`run NOTEBOOK` splits before every run.  When nothing the split reads has changed
that split writes nothing new, yet it costs ~0.7 s (nbformat, the analysis, Jinja):
most of an unchanged, fully cached re-run.  After a split made by `run`, the
fingerprint of everything a split depends on is kept in the pipeline directory; the
next `run NOTEBOOK` with the same fingerprint uses the pipeline as it is.

The fingerprint is deliberately coarse, so that it can only err towards splitting
again: the notebook's bytes; the `nb2prod.ini` beside it; the content of every `.py` file
under the notebook's directory (local modules, which split copies into
stages); nb2prod's own package and templates (size and mtime); the mtime of every
`site-packages` directory on `sys.path` (installing or upgrading a package, which
changes the pins); the
Python executable.  Any split (`nb2prod split`, JupyterLab, a run) first removes the
fingerprint, so a pipeline split from other content is never taken as fresh, and a
split that was killed leaves none.  A generated file that is missing also means a split.
No heavy imports here: this runs on every `run NOTEBOOK`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

#: Where a pipeline directory keeps the fingerprint of the split `run` made last.
FINGERPRINT_FILE = Path(".nb2prod") / "split-fingerprint"
#: More `.py` files than this under the notebook's directory: always split (a huge tree).
MAX_PY_FILES = 500
#: Never looked into for local modules (what LocalCode skips, plus hidden folders).
SKIPPED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints", "node_modules"})
RECORD_FILE = "nb2prod.split.json"  # nb2prod.record.RECORD_FILE (not imported: it is heavy)


def default_output(notebook: Path) -> Path:
    """Where `split NOTEBOOK` and `run NOTEBOOK` put the pipeline: NOTEBOOK-pipeline."""
    return notebook.parent / f"{notebook.stem}-pipeline"


def _stat(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _py_files(root: Path, skip: Path) -> list[Path] | None:
    """Every `.py` under `root` but hidden folders and `skip` (the pipeline); None: too many."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(".")
                         and Path(folder, d).resolve() != skip)
        found.extend(Path(folder, f) for f in sorted(files) if f.endswith(".py"))
        if len(found) > MAX_PY_FILES:
            return None
    return found


def fingerprint(notebook: Path, output: Path) -> str | None:
    """The fingerprint of what a split of `notebook` into `output` reads (None: unknown)."""
    import nb2prod

    h = hashlib.sha256()
    try:
        h.update(notebook.read_bytes())
        settings = notebook.parent / "nb2prod.ini"
        if settings.is_file() and settings.resolve() != (output / "nb2prod.ini").resolve():
            h.update(b"settings\0" + settings.read_bytes())
        local = _py_files(notebook.parent, output.resolve())
        package = Path(nb2prod.__file__).resolve().parent
        ours = sorted(package.rglob("*.py"))  # nb2prod itself, the runtime it copies
        for templates in (package / "stage_templates", package.parent / "stage_templates"):
            ours += sorted(templates.rglob("*")) if templates.is_dir() else []
        if local is None:
            return None
        for path in local:  # by content: an edit within the clock's resolution counts
            h.update(f"{path}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
        for path in ours:
            if path.is_file():
                h.update(f"{path}\0{_stat(path)}\n".encode())
        for entry in sys.path:  # where pip installs: its mtime moves with every install
            if os.path.basename(entry) in ("site-packages", "dist-packages") \
                    and os.path.isdir(entry):
                h.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\n".encode())
    except OSError:
        return None
    h.update(f"{sys.executable}\0{nb2prod.__version__}".encode())
    return h.hexdigest()


def is_fresh(output: Path, expected: str | None) -> bool:
    """True when `output` was split by `run` with this fingerprint and lacks no file."""
    try:
        if expected is None or (output / FINGERPRINT_FILE).read_text() != expected:
            return False
        files = json.loads((output / RECORD_FILE).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(files, dict) and bool(files) and all(
        (output / rel).is_file() for rel in files)


def forget(output: Path) -> None:
    """Drop the fingerprint (a split is about to change the pipeline)."""
    try:
        (output / FINGERPRINT_FILE).unlink()
    except OSError:
        pass


def remember(output: Path, value: str | None) -> None:
    """Keep the fingerprint taken before a split that has now succeeded."""
    if value is None:
        return
    path = output / FINGERPRINT_FILE
    try:
        from nb2prod.runtime.stores import replace_file

        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, value.encode("utf-8"))
    except OSError:
        pass
