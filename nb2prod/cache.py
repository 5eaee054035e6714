"""Stage caching: a batch stage whose inputs did not change is not run again.

A stage's cache key is the sha256 over what decides its outputs: its code (the
stage notebook's code cells and the other files of its directory: local
modules and the runtime, `.py`), the parameter values it sees, the sha256 of every
artifact it loads and of every input file it names (`FILES`, relative to the
notebook's directory), and its pinned requirements.  Inputs enter by their
sha256 as recorded in the producers' manifests, so a re-run upstream stage
whose outputs came out byte-identical leaves every downstream key unchanged.

The index lives in the store next to the runs (`<pipeline>/cache/<stage>/<key>.json`,
naming the run that executed the stage and the sha256 of every file it left),
so "a successful earlier run in the same store" is a property of the store,
whoever ran it.  A hit is verified file by file before it is used: a missing or
corrupted file makes it a miss, never a failure.  Reuse writes no artifact
bytes through this machine: the files are hard links on a file store, and
server-side copies on S3 (`LINKERS`, by store type); only the stage's
manifest is rewritten, saying `cached_from`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from nb2prod import artifacts
from nb2prod.pipeline import Pipeline, StageSpec, notebook_parameters
from nb2prod.runtime import runs
from nb2prod.runtime_copy import pipeline_runtime
from nb2prod.workdir import sha256_file

SCHEMA = 1


def cache_key(code: dict[str, str], params: dict[str, object], inputs: dict[str, str],
              files: dict[str, str], requirements: str) -> str:
    """The stage's cache key: sha256 over the canonical JSON of its parts (pure)."""
    body = {"schema": SCHEMA, "code": code, "params": params, "inputs": inputs,
            "files": files, "requirements": requirements}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def enabled(stage: StageSpec) -> bool:
    """False for a stage tagged `no-cache` (config.ini `[batch] CACHE = false`)."""
    return stage.value("batch", "CACHE", "true").lower() not in ("0", "false", "no", "off")


# -- the key's parts (read from the stage directory and the store) -----------------------
def _code_cells(notebook: Path) -> str:
    """The code cells' sources only: outputs, ids and metadata do not change results."""
    try:
        nb = json.loads(notebook.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return sha256_file(notebook)
    sources = ["".join(c.get("source", "")) for c in nb.get("cells", [])
               if c.get("cell_type") == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def stage_code(stage: StageSpec) -> dict[str, str]:
    """{relative path: sha256} of the stage's code: notebook code cells, local modules,
    the pipeline's `nb2prod_runtime/`.

    Only `.py` files count besides the notebook: a stage runs in its directory,
    so files it writes there (models, CSVs) must not make the next run a miss.
    """
    executable = stage.directory / stage.executable
    twin = executable.with_suffix(".py")  # jupytext rendering, for review only
    code = {stage.executable: _code_cells(executable)}
    for path in sorted(stage.directory.rglob("*.py")):
        if path != twin and path.is_file() and "__pycache__" not in path.parts:
            code[path.relative_to(stage.directory).as_posix()] = sha256_file(path)
    # The pipeline's runtime runs the stage too (save/load, serializers): a new one misses.
    for rel, data in pipeline_runtime(stage.directory.parent).items():
        code[rel] = hashlib.sha256(data).hexdigest()
    return code


def stage_params(stage: StageSpec, params: dict[str, object]) -> dict[str, object]:
    """The parameter values the stage sees, for the names its own code mentions.

    Every stage gets the whole parameters cell, so a stage that never names
    `n_estimators` must not re-run when only it changes; a mention anywhere
    outside the parameters cell (even in a string) counts, to stay on the safe side.
    """
    try:
        nb = json.loads((stage.directory / stage.executable).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        nb = {}
    words = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" not in (
                cell.get("metadata", {}).get("tags") or []):
            words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", "".join(cell.get("source", ""))))
    return {k: params.get(k, v) for k, v in notebook_parameters(stage).items() if k in words}


def input_files(pipeline: Pipeline, stage: StageSpec) -> dict[str, str]:
    """{path: sha256} of the stage's `FILES` (directories file by file, `[files] EXCLUDE`
    applied), from the notebook's directory; a missing one is marked, not raised."""
    from nb2prod import workdir
    from nb2prod.errors import UserError

    base = pipeline.notebook.parent if pipeline.notebook else pipeline.root.parent
    exclude = workdir.split_list(pipeline.value("files", "EXCLUDE"))
    found: dict[str, str] = {}
    for entry in workdir.split_list(stage.value("default", "FILES")):
        try:
            paths = workdir.expand(base, [entry], exclude)
        except UserError:
            found[entry] = "missing"
            continue
        found.update((rel, workdir.sha256_file(path)) for rel, path in paths.items())
    return found


def input_digests(store: artifacts.Store, pipeline: Pipeline, stage: StageSpec,
                  input_run: str) -> dict[str, str] | None:
    """{producer/name: sha256} of each artifact the stage loads from `input_run`, plus the
    files its ancestors left (manifest `files`); None when one is missing (no key)."""
    from nb2prod import dag, graph

    variables, files = graph.stage_inputs(stage.directory / stage.executable)
    manifests: dict[str, dict] = {}

    def manifest(producer: str) -> dict:
        if producer not in manifests:
            key = f"{artifacts.run_prefix(pipeline.name, input_run)}/{producer}/{artifacts.MANIFEST}"
            found = artifacts.read_json(store, key, default=None)
            manifests[producer] = found if isinstance(found, dict) else {}
        return manifests[producer]

    digests: dict[str, str] = {}
    for name, producer in variables.items():
        entry = (manifest(producer).get("artifacts") or {}).get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return None
        digests[f"{producer}/{name}"] = entry["sha256"]
    for producer in sorted(dag.ancestors(stage.name, pipeline.edges) | set(files.values())):
        for path, entry in sorted((manifest(producer).get("files") or {}).items()):
            if isinstance(entry, dict):
                digests[f"{producer}/files/{path}"] = str(entry.get("sha256"))
    return digests


def key_for(store: artifacts.Store, pipeline: Pipeline, stage: StageSpec,
            params: dict[str, object], input_run: str) -> str | None:
    """The stage's cache key now (its inputs must be in `input_run`), or None."""
    inputs = input_digests(store, pipeline, stage, input_run)
    if inputs is None:
        return None
    requirements = stage.directory / "requirements.txt"
    return cache_key(stage_code(stage), stage_params(stage, params), inputs,
                     input_files(pipeline, stage),
                     requirements.read_text() if requirements.is_file() else "")


# -- the index ------------------------------------------------------------------------------
def _index_key(pipeline: str, stage: str, key: str) -> str:
    return f"{pipeline}/cache/{stage}/{key}.json"


def remember(store: artifacts.Store, pipeline: str, stage: str, key: str, run_id: str) -> None:
    """Record that `run_id` executed `stage` with `key`, with the sha256 of each file it left."""
    prefix = f"{artifacts.run_prefix(pipeline, run_id)}/{stage}/"
    manifest = artifacts.read_json(store, prefix + artifacts.MANIFEST, default={})
    known = {e["file"]: e["sha256"] for e in (manifest.get("artifacts") or {}).values()
             if isinstance(e, dict) and isinstance(e.get("file"), str)
             and isinstance(e.get("sha256"), str)}  # artifacts: no second read of their bytes
    files = {k[len(prefix):]: known.get(k[len(prefix):])
             or hashlib.sha256(store.read_bytes(k)).hexdigest() for k in store.list(prefix)}
    artifacts.write_json(store, _index_key(pipeline, stage, key),
                         {"schema": SCHEMA, "run_id": run_id, "stage": stage, "key": key,
                          "files": files}, atomic=True)


def lookup(store: artifacts.Store, pipeline: str, stage: str, key: str) -> dict | None:
    """The index entry for `key` if every file it lists is still there, intact; else None."""
    entry = artifacts.read_json(store, _index_key(pipeline, stage, key), default=None)
    if not isinstance(entry, dict) or not isinstance(entry.get("run_id"), str) or \
            not isinstance(entry.get("files"), dict) or artifacts.MANIFEST not in entry["files"]:
        return None
    try:
        prefix = f"{artifacts.run_prefix(pipeline, entry['run_id'])}/{stage}/"
        for name, digest in entry["files"].items():
            if hashlib.sha256(store.read_bytes(prefix + name)).hexdigest() != digest:
                return None
        manifest = artifacts.read_manifest(store, prefix + artifacts.MANIFEST)  # signature
        for written in (manifest.get("files") or {}).values():  # files it wrote (by sha256)
            digest = written["sha256"]
            blob = store.read_bytes(artifacts.files_key(pipeline, digest))
            if hashlib.sha256(blob).hexdigest() != digest:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, artifacts.ArtifactError):
        return None
    return entry


def reuse(store: artifacts.Store, pipeline: str, stage: str, entry: dict, run_id: str) -> None:
    """Make `stage` of `run_id` hold the cached run's outputs; its manifest says `cached_from`."""
    source = entry["run_id"]
    src = f"{artifacts.run_prefix(pipeline, source)}/{stage}/"
    dst = f"{artifacts.run_prefix(pipeline, run_id)}/{stage}/"
    for name in entry["files"]:
        if name != artifacts.MANIFEST:
            link(store, src + name, dst + name)
    manifest = artifacts.read_json(store, src + artifacts.MANIFEST)
    manifest.update(run_id=run_id, cached_from=source, updated=runs._utcnow())
    artifacts.write_manifest(store, dst + artifacts.MANIFEST, manifest)


# -- reusing bytes without moving them -----------------------------------------------------
def _link_file(store: artifacts.Store, src: str, dst: str) -> None:
    """A hard link (same bytes, no copy); a copy where the file system has none."""
    import secrets
    import shutil

    assert isinstance(store, artifacts.FileStore)
    source, target = store.root / src, store.root / dst
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.nb2prod-tmp")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _copy_object(store: artifacts.Store, src: str, dst: str) -> None:
    """S3 server-side copy: the bytes never leave the store."""
    assert isinstance(store, artifacts.S3Store)
    store.client.copy(  # managed copy: multipart for objects over 5 GB
        {"Bucket": store.bucket, "Key": store._key(src)}, store.bucket, store._key(dst))


def _read_write(store: artifacts.Store, src: str, dst: str) -> None:
    store.write_atomic(dst, store.read_bytes(src))


LINKERS: dict[type, Callable[[artifacts.Store, str, str], None]] = {
    artifacts.FileStore: _link_file,
    artifacts.S3Store: _copy_object,
}


def link(store: artifacts.Store, src: str, dst: str) -> None:
    """Make `dst` hold `src`'s bytes the cheapest way `store`'s type allows."""
    for kind in type(store).__mro__:
        if kind in LINKERS:
            LINKERS[kind](store, src, dst)
            return
    _read_write(store, src, dst)
