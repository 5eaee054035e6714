"""The notebook's directory on disk: look up, expand and hash the input files stages need.

The I/O edge of `nb2prod.files`: split looks literals up here, `nb2prod run`
copies a stage's `FILES` from here into its working directory, and `deploy` /
`schedule` hash them for the store (content-addressed: `<pipeline>/files/<sha256>`).
A `FILES` entry ending in `/` is a directory: every file under it, minus
`[files] EXCLUDE` and the folders nobody wants shipped (`.git`, caches,
checkpoints, nb2prod's own state and pipeline directories).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from nb2prod import dag
from nb2prod.errors import Problem, UserError
from nb2prod.files import Entry, Lookup, excluded
from nb2prod.pipeline import Pipeline

#: Folder names never shipped as input files.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".ipynb_checkpoints", ".nb2prod",
                          ".venv", "venv", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                          "node_modules"})


def split_list(value: str) -> list[str]:
    """An ini list: comma- or newline-separated, blanks dropped."""
    return [item.strip() for line in value.splitlines() for item in line.split(",")
            if item.strip()]


def _skipped(directory: Path, path: Path) -> bool:
    """Inside a skipped folder, or a pipeline directory (it holds nb2prod.ini)."""
    rel = path.relative_to(directory)
    if SKIPPED_DIRS & set(rel.parts):
        return True
    probe = path if path.is_dir() else path.parent
    while probe != directory and directory in probe.parents:
        if (probe / "nb2prod.ini").is_file():
            return True
        probe = probe.parent
    return False


def lookup(directory: Path, ignore: Iterable[Path] = ()) -> Lookup:
    """A cached `files.Lookup` on `directory`: what a relative path names, inside it only."""
    directory = Path(directory).resolve()
    ignored = {Path(p).resolve() for p in ignore}
    cache: dict[str, Entry | None] = {}

    def find(rel: str) -> Entry | None:
        if rel not in cache:
            cache[rel] = _entry(directory, rel, ignored)
        return cache[rel]

    return find


def _entry(directory: Path, rel: str, ignored: set[Path]) -> Entry | None:
    """`rel` is normalized (no `..`); a symlink keeps its own path (its content ships)."""
    path = directory / rel
    try:
        if not path.exists():
            return None
        real = path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if real == directory or any(real == p or p in real.parents or real in p.parents
                                for p in ignored):
        return None  # the notebook's directory, the pipeline output, or a folder holding it
    if _skipped(directory, path):
        return None
    clean = path.relative_to(directory).as_posix()
    if path.is_dir():
        total = sum(p.stat().st_size for p in _walk(directory, path, ()))
        return Entry(clean, True, total)
    return Entry(clean, False, path.stat().st_size)


def _walk(directory: Path, top: Path, exclude: Iterable[str]) -> list[Path]:
    pats = list(exclude)
    found = []
    for root, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS
                         and not (Path(root) / d / "nb2prod.ini").is_file())
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file() and not excluded(path.relative_to(directory).as_posix(), pats):
                found.append(path)
    return found


def expand_globs(directory: Path, patterns: Iterable[str], ignore: Iterable[Path] = ()
                 ) -> list[str]:
    """`[files] INCLUDE` globs as FILES entries (directories end in '/')."""
    directory = Path(directory).resolve()
    found = lookup(directory, ignore)
    entries: list[str] = []
    for pattern in patterns:
        for path in sorted(directory.glob(pattern)):
            entry = found(path.relative_to(directory).as_posix())
            if entry is not None:
                text = entry.path + ("/" if entry.is_dir else "")
                if text not in entries:
                    entries.append(text)
    return entries


def expand(directory: Path, entries: Iterable[str], exclude: Iterable[str] = (),
           where: str | None = None) -> dict[str, Path]:
    """FILES entries as `{relative path: source file}`; a missing one is a UserError."""
    directory = Path(directory).resolve()
    pats = list(exclude)
    files: dict[str, Path] = {}
    for entry in entries:
        path = directory / entry.rstrip("/")
        if entry.endswith("/") and path.is_dir():
            for found in _walk(directory, path, pats):
                files[found.relative_to(directory).as_posix()] = found
        elif path.is_file():
            if not excluded(entry, pats):
                files[entry] = path
        else:
            raise UserError(Problem(f"FILES lists '{entry}', which is not in {directory}; "
                                    "restore it or re-run `nb2prod split`", file=where))
    return dict(sorted(files.items()))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(files: dict[str, Path]) -> dict[str, dict]:
    """`{relative path: {sha256, bytes}}`: the plan a stage pod fetches from the store."""
    return {rel: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            for rel, path in files.items()}


def copy_into(files: dict[str, Path], work: Path) -> None:
    """Copy (never link: a stage may overwrite its inputs) files into a working directory."""
    for rel, source in files.items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


#: The runtime's name for the files plan (nb2prod.artifacts.FILES_PLAN, which must not be
#: imported here: it is the stage runtime, heavy to import for `split`).
FILES_PLAN = "nb2prod_files.json"


# -- a split pipeline's stages ---------------------------------------------------------------
def stage_files(pipeline: Pipeline, stage: str) -> dict[str, Path]:
    """A stage's `FILES` beside the pipeline's notebook, minus `[files] EXCLUDE`."""
    spec = pipeline.stages[stage]
    entries = spec.names("FILES")
    if not entries:
        return {}
    notebook = pipeline.notebook
    where = str(spec.directory / "config.ini")
    if notebook is None:
        raise UserError(Problem("FILES needs [project] NOTEBOOK in nb2prod.ini to find them",
                                file=where))
    return expand(notebook.parent, entries, split_list(pipeline.value("files", "EXCLUDE")), where)


def upstream(pipeline: Pipeline, stage: str) -> list[str]:
    """The batch stages before `stage` in the DAG, in order: whose written files it gets."""
    before = dag.ancestors(stage, pipeline.edges)
    return [s for s in pipeline.batch if s in before]


def files_plan(pipeline: Pipeline, stage: str, files: dict[str, dict] | None = None) -> bytes:
    """The runtime's `nb2prod_files.json`: input files to fetch by sha256, upstream stages."""
    plan = {"files": files or {}, "upstream": upstream(pipeline, stage)}
    return (json.dumps(plan, indent=1, sort_keys=True) + "\n").encode()
