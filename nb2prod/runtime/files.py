"""The stage's working directory: input files and files earlier stages wrote, fetched
from the store by sha256; files this stage wrote, recorded in its manifest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ArtifactIntegrityError, ArtifactNotFoundError
from .runs import _utcnow
from .signing import _sha256, read_manifest, write_manifest
from .stage_env import _env, _require, _stage_dir, context
from .stores import (
    _TMP_SUFFIX,
    MANIFEST,
    Store,
    _check_segment,
    _stage_prefix,
    open_store,
    replace_file,
)
from .values import _write_context

# -- the working directory (DESIGN.md "Files and local code") ----------------------------
#: Beside config.ini: the stage's input files ({rel: {sha256, bytes}}, fetched from the
#: store) and the stages before it in the DAG (whose written files are restored).
FILES_PLAN = "nb2prod_files.json"
#: Never recorded as files a stage wrote.
_UNRECORDED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints", ".nb2prod", ".git"})
Snapshot = dict[str, tuple[int, int]]  # rel -> (size, mtime_ns)


def files_key(pipeline: str, sha256: str) -> str:
    """Content-addressed key of an input file or a file a stage wrote."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
        raise ArtifactIntegrityError(f"invalid file digest {sha256!r}")
    return f"{_check_segment(pipeline, 'pipeline')}/files/{sha256}"


def _safe_rel(rel: Any) -> str:
    """A relative path from a plan or manifest, refused if it could leave the directory."""
    if (not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel
            or any(part in ("", ".", "..") for part in rel.split("/"))):
        raise ArtifactIntegrityError(f"invalid file path {rel!r} in a files plan or manifest")
    return rel


def _files_plan(stage_dir: Path) -> dict:
    path = _env("NB2PROD_FILES_PLAN") or str(stage_dir / FILES_PLAN)
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read the files plan: {exc}") from None
    return plan if isinstance(plan, dict) else {}


def _fetch_file(store: Store, pipeline: str, rel: str, entry: Any, work: Path, what: str) -> None:
    """Write one content-addressed file into `work` (atomically), checking its sha256."""
    sha = entry.get("sha256") if isinstance(entry, dict) else None
    key = files_key(pipeline, sha)
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        raise ArtifactNotFoundError(f"{what} {rel!r}: {store.url(key)} is missing") from None
    if _sha256(data) != sha:
        raise ArtifactIntegrityError(f"{what} {rel!r} failed its integrity check at "
                                     f"{store.url(key)}")
    target = work.joinpath(*_safe_rel(rel).split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_file(target, data)  # server workers may restore the same file at once


def snapshot(work: Path) -> Snapshot:
    """Size and mtime of every file in the working directory (to see what a run changed)."""
    found: Snapshot = {}
    for root, dirs, names in os.walk(work):
        dirs[:] = [d for d in dirs if d not in _UNRECORDED_DIRS]
        for name in names:
            path = Path(root) / name
            if name.endswith(_TMP_SUFFIX) or not path.is_file() or path.is_symlink():
                continue
            info = path.stat()
            found[path.relative_to(work).as_posix()] = (info.st_size, info.st_mtime_ns)
    return found


def prepare_workdir(work: Path, stage_dir: Path | None = None) -> Snapshot:
    """Lay out the working directory like the notebook's: input files, then upstream files.

    Input files come from the store by sha256 (the plan's ``files``; `nb2prod run`
    copies them itself and lists none).  Then, for each earlier stage of the DAG
    (``upstream``, in DAG order), the files it wrote in the input run, as its
    manifest lists them.  Returns the snapshot `record_files` compares against.
    """
    stage_dir = stage_dir or _stage_dir()
    plan = _files_plan(stage_dir)
    work.mkdir(parents=True, exist_ok=True)
    files = plan.get("files") or {}
    upstream = plan.get("upstream") or []
    if files or upstream:
        ctx = context()
        _require(ctx, "prepare the working directory")
        store = open_store(ctx.store)
        for rel, entry in sorted(files.items()):
            _fetch_file(store, ctx.pipeline, rel, entry, work, "input file")
        for stage in upstream:
            key = f"{_stage_prefix(ctx.pipeline, ctx.input_run_id, stage)}/{MANIFEST}"
            manifest = read_manifest(store, key, default=None) or {}
            for rel, entry in sorted((manifest.get("files") or {}).items()):
                _fetch_file(store, ctx.pipeline, rel, entry, work, f"file of stage '{stage}'")
    return snapshot(work)


def record_files(work: Path, before: Snapshot) -> dict:
    """Upload the files the stage created or changed in `work`; list them in its manifest."""
    changed = {rel: info for rel, info in snapshot(work).items() if before.get(rel) != info}
    if not changed:
        return {}
    ctx = _write_context("record the files it wrote")
    store = open_store(ctx.store)
    entries = {}
    for rel in sorted(changed):
        path = work / rel
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        sha = digest.hexdigest()
        key = files_key(ctx.pipeline, sha)
        if not store.exists(key):
            store.upload(key, path)
        entries[rel] = {"sha256": sha, "bytes": path.stat().st_size, "producer": ctx.stage}
    manifest_key = f"{_stage_prefix(ctx.pipeline, ctx.run_id, ctx.stage)}/{MANIFEST}"
    manifest = read_manifest(store, manifest_key, default=None)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), dict):
        manifest = {"artifacts": {}}
    manifest["files"] = entries
    manifest.update(schema=1, pipeline=ctx.pipeline, run_id=ctx.run_id, stage=ctx.stage,
                    updated=_utcnow())
    write_manifest(store, manifest_key, manifest)
    return entries


def expect_file(path: str, producer: str) -> bool:
    """Say so when a file an earlier stage wrote is not in the working directory.

    The generated cell calling this documents the file edges of the DAG (and
    `nb2prod graph` labels edges with them).  Only a warning: the notebook may
    well handle a missing file itself (``if os.path.exists(...)``).
    """
    if Path(path).exists():
        return True
    warnings.warn(f"{path!r}, written by stage '{producer}', is not in the working directory "
                  f"{Path.cwd()}: run stage '{producer}' first (or set NB2PROD_INPUT_RUN_ID to a "
                  "run that did)", stacklevel=2)
    return False
