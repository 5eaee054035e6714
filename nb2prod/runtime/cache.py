"""The stage cache's store side: the key, the index, verifying a hit and reusing it.

Here rather than in `nb2prod.cache` because in-cluster runs decide in the pod
(`python -m nb2prod_runtime run-stage`), where only this runtime is installed;
`nb2prod run` and `deploy` use the same functions, so a key means the same
everywhere and an earlier run of any of them is a hit for the others.

A stage's key is the sha256 over the canonical JSON of its parts: `code`,
`params`, `files` and `requirements` (read from the stage directory by
`nb2prod.cache` and, for in-cluster runs, shipped as `nb2prod_cache.json` in the
stage's ConfigMap), `env`, the values of the environment variables its
parameters' defaults read (`os.environ.get("DATA_DIR", "data")`; the plan names
them, their values are read where the stage runs: in a pod, the pod's), and
`inputs`, the sha256 of each artifact it loads and of each
file its ancestors wrote, read from the producers' manifests in the input run
(`artifact_digests`): a re-run upstream stage whose outputs came out
byte-identical leaves the key unchanged.  And `data`, the content of what its
path parameters name (`data_digests`): each parameter the stage uses is
evaluated where the stage runs (`param_values`: the cell's defaults with that
environment, then the run's overrides, as papermill does), and an absolute (or
`~`) path among the values enters by the digest of its file or directory tree
(`contents`, memoised), so `DATA_DIR=/mnt/data` with a changed file there is a
miss; so do the absolute paths its code reads by literal.  Relative paths need nothing more: the stage's working directory holds only
its FILES and the files earlier stages wrote, both keyed already.

The index lives next to the runs (`<pipeline>/cache/<stage>/<key>.json`, naming
the run that executed the stage and the sha256 of every file it left).  A hit is
verified file by file before use: a missing or corrupted file makes it a miss,
never a failure.  Reuse moves no artifact bytes through this process: hard
links on a file store, server-side copies on S3 (`LINKERS`, by store type);
only the manifest is rewritten, saying `cached_from`, and signed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .contents import Unreadable, describe_path, shared_memo
from .errors import ArtifactError
from .files import files_key
from .param_values import UNKNOWN, parameter_values
from .runs import _utcnow
from .signing import read_manifest, write_manifest
from .stores import MANIFEST, RESULT, FileStore, S3Store, Store, read_json, run_prefix, write_json

SCHEMA = 1
#: The cache plan of an in-cluster stage (beside its config.ini): the key's parts known
#: when the run was planned, and what to read from the manifests at run time.
CACHE_PLAN = "nb2prod_cache.json"


def cache_key(code: dict[str, str], params: dict[str, object], inputs: dict[str, str],
              files: dict[str, str], requirements: str,
              env: dict[str, str | None] | None = None, data: dict | None = None) -> str:
    """The stage's cache key: sha256 over the canonical JSON of its parts (pure)."""
    body = {"schema": SCHEMA, "code": code, "params": params, "inputs": inputs,
            "files": files, "requirements": requirements, "env": env or {},
            "data": data or {}}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def artifact_digests(store: Store, pipeline: str, input_run: str, loads: dict[str, str],
                     file_producers: Iterable[str]) -> dict[str, str] | None:
    """{producer/name: sha256} of each artifact loaded (`loads`: name -> producer) from
    `input_run`, plus the files each of `file_producers` left (manifest `files`);
    None when a loaded artifact is missing (then there is no key)."""
    manifests: dict[str, dict] = {}

    def manifest(producer: str) -> dict:
        if producer not in manifests:
            key = f"{run_prefix(pipeline, input_run)}/{producer}/{MANIFEST}"
            found = read_json(store, key, default=None)
            manifests[producer] = found if isinstance(found, dict) else {}
        return manifests[producer]

    digests: dict[str, str] = {}
    for name, producer in loads.items():
        entry = (manifest(producer).get("artifacts") or {}).get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return None
        digests[f"{producer}/{name}"] = entry["sha256"]
    for producer in sorted(file_producers):
        for path, entry in sorted((manifest(producer).get("files") or {}).items()):
            if isinstance(entry, dict):
                digests[f"{producer}/files/{path}"] = str(entry.get("sha256"))
    return digests


def env_values(names: Iterable[str], environ: Mapping[str, str | None]
               ) -> dict[str, str | None] | None:
    """{name: value or None when unset} of the variables a stage's parameters read; None
    when one is known to be set but not to what (`environ` maps it to None)."""
    values = {name: environ.get(name) for name in names}
    if any(name in environ and value is None for name, value in values.items()):
        return None
    return values


def _path_strings(value: object, depth: int = 0) -> Iterable[str]:
    """The strings of a parameter value that may name a path (also inside containers)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        if value and len(value) < 4096 and "\0" not in value and "\n" not in value:
            yield value
    elif isinstance(value, (list, tuple, set, frozenset, dict)) and depth < 3:
        for item in sorted(value.values() if isinstance(value, dict) else value, key=repr):
            yield from _path_strings(item, depth + 1)


def data_digests(spec: dict | None, environ: Mapping[str, str | None], here: bool = True
                 ) -> tuple[dict, str | None]:
    """({parameter or "<code>": [{"path", "kind", "sha256"?}, ...]}, why the stage cannot be
    keyed or None) for the absolute (or `~`) paths among the values of the parameters
    the stage uses, and those its code reads by literal.

    `spec` (the plan's `data`): the parameters cell (`cell`), the names the stage uses
    (`names`), the run's overrides (`overrides`, injected after the cell, as
    papermill does), the absolute path literals the stage's code reads (`literals`).
    `here`: the stage runs on this machine; else (`deploy` deciding for a pod) a
    path names the pod's file system, which cannot be hashed here, and the stage
    cannot be cached.
    """
    if not spec or not (spec.get("names") or spec.get("literals")):
        return {}, None
    values = {**parameter_values(spec.get("cell") or "", environ), **(spec.get("overrides") or {})}
    paths: list[tuple[str, str, str]] = []  # (key in `data`, path, what names it)
    for name in sorted(spec.get("names") or []):
        value = values.get(name, UNKNOWN)
        if value is UNKNOWN:
            return {}, f"parameter {name} is known only when its cell runs"
        paths += [(name, text, f"parameter {name} names {text}")
                  for text in _path_strings(value)
                  if os.path.isabs(text) or text.startswith("~")]
    paths += [("<code>", text, f"its code reads {text}") for text in spec.get("literals") or []]
    found: dict[str, list] = {}
    memo = shared_memo()
    try:
        for key, text, what in paths:
            if not here:
                return {}, (f"{what}, on the pods' file system (the deploying machine "
                            "cannot hash it)")
            try:
                described = describe_path(os.path.expanduser(text), memo)
            except Unreadable as exc:
                return {}, f"{what}: {exc}"
            found.setdefault(key, []).append({"path": text, **described})
    finally:
        memo.save()
    return found, None


def keyed(store: Store, pipeline: str, input_run: str, plan: dict,
          environ: Mapping[str, str | None] | None = None, here: bool = True
          ) -> tuple[str | None, str | None]:
    """(`plan_key`, why there is no key when the data behind a path parameter says so)."""
    environ = os.environ if environ is None else environ
    inputs = artifact_digests(store, pipeline, input_run, plan["loads"], plan["file_producers"])
    env = env_values(plan.get("env") or [], environ)
    if inputs is None or env is None:
        return None, None
    data, reason = data_digests(plan.get("data"), environ, here)
    if reason is not None:
        return None, reason
    return cache_key(inputs=inputs, env=env, data=data, **plan["parts"]), None


def plan_key(store: Store, pipeline: str, input_run: str, plan: dict,
             environ: Mapping[str, str | None] | None = None, here: bool = True) -> str | None:
    """The key of a stage from its cache plan (`{"parts", "loads", "file_producers", "env",
    "data"}`), the manifests of `input_run`, the values of the plan's `env` variables in
    `environ` (default: this process's, as the stage's kernel sees them: in a pod the
    pod's) and the data its path parameters name (`data_digests`); None when an input,
    a variable's value or that data cannot be known."""
    return keyed(store, pipeline, input_run, plan, environ, here)[0]


# -- the index ------------------------------------------------------------------------------
def _index_key(pipeline: str, stage: str, key: str) -> str:
    return f"{pipeline}/cache/{stage}/{key}.json"


def remember(store: Store, pipeline: str, stage: str, key: str, run_id: str) -> None:
    """Record that `run_id` executed `stage` with `key`, with the sha256 of each file it left."""
    prefix = f"{run_prefix(pipeline, run_id)}/{stage}/"
    manifest = read_json(store, prefix + MANIFEST, default={})
    known = {e["file"]: e["sha256"] for e in (manifest.get("artifacts") or {}).values()
             if isinstance(e, dict) and isinstance(e.get("file"), str)
             and isinstance(e.get("sha256"), str)}  # artifacts: no second read of their bytes
    files = {k[len(prefix):]: known.get(k[len(prefix):])
             or hashlib.sha256(store.read_bytes(k)).hexdigest() for k in store.list(prefix)}
    write_json(store, _index_key(pipeline, stage, key),
               {"schema": SCHEMA, "run_id": run_id, "stage": stage, "key": key,
                "files": files}, atomic=True)


def lookup(store: Store, pipeline: str, stage: str, key: str) -> dict | None:
    """The index entry for `key` if every file it lists is still there, intact; else None.

    A stage that saved nothing (it only records metrics, say) has no manifest: its
    files (executed notebook, report, metrics) are all there is to verify and reuse.
    """
    entry = read_json(store, _index_key(pipeline, stage, key), default=None)
    if not isinstance(entry, dict) or not isinstance(entry.get("run_id"), str) or \
            not isinstance(entry.get("files"), dict) or not entry["files"]:
        return None
    try:
        prefix = f"{run_prefix(pipeline, entry['run_id'])}/{stage}/"
        for name, digest in entry["files"].items():
            if hashlib.sha256(store.read_bytes(prefix + name)).hexdigest() != digest:
                return None
        if MANIFEST not in entry["files"]:
            return entry
        manifest = read_manifest(store, prefix + MANIFEST)  # signature
        for written in (manifest.get("files") or {}).values():  # files it wrote (by sha256)
            digest = written["sha256"]
            blob = store.read_bytes(files_key(pipeline, digest))
            if hashlib.sha256(blob).hexdigest() != digest:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ArtifactError):
        return None
    return entry


def cached_result(pipeline: str, stage: str, run_id: str, source: str) -> dict:
    """The `result.json` of a stage reused from run `source`: this run's, done just now."""
    import time

    now = time.time()
    return {"stage": stage, "run_id": run_id, "pipeline": pipeline, "status": "succeeded",
            "cached_from": source, "started": now, "finished": now}


def reuse(store: Store, pipeline: str, stage: str, entry: dict, run_id: str) -> None:
    """Make `stage` of `run_id` hold the cached run's outputs; its manifest says `cached_from`.

    The manifest and the stage record (`result.json`, which in-cluster stages
    write and `runs` reads) are this run's own, never the source's copied as is:
    a copied record would give the source's run id and times and hide the reuse.
    """
    source = entry["run_id"]
    src = f"{run_prefix(pipeline, source)}/{stage}/"
    dst = f"{run_prefix(pipeline, run_id)}/{stage}/"
    for name in entry["files"]:
        if name not in (MANIFEST, RESULT):
            link(store, src + name, dst + name)
    if RESULT in entry["files"]:
        write_json(store, dst + RESULT, cached_result(pipeline, stage, run_id, source),
                   atomic=True)
    if MANIFEST not in entry["files"]:
        return
    manifest = read_json(store, src + MANIFEST)
    manifest.update(run_id=run_id, cached_from=source, updated=_utcnow())
    write_manifest(store, dst + MANIFEST, manifest)


def read_plan(stage_dir: Path) -> dict | None:
    """The stage's cache plan (in-cluster runs with the cache on), or None."""
    try:
        plan = json.loads((stage_dir / CACHE_PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) and plan.get("schema") == SCHEMA else None


def cached_stage(store: Store, pipeline: str, stage: str, run_id: str, input_run: str,
                 plan: dict) -> tuple[str | None, dict | None]:
    """(key, hit) for a stage of an in-cluster run; a hit is already reused into `run_id`.

    Any trouble (an unreadable store, a broken entry) is a miss: the cache may
    only make runs faster, never fail them.
    """
    try:
        key, reason = keyed(store, pipeline, input_run, plan)
        if reason is not None:  # the pod's log says why the stage runs
            print(f"nb2prod: not cached, always run: {stage}: {reason}", file=sys.stderr,
                  flush=True)
        hit = lookup(store, pipeline, stage, key) if key is not None else None
        if hit is not None:
            reuse(store, pipeline, stage, hit, run_id)
        return key, hit
    except Exception:  # noqa: BLE001 - a miss, and the stage runs
        return None, None


# -- reusing bytes without moving them -----------------------------------------------------
def _link_file(store: Store, src: str, dst: str) -> None:
    """A hard link (same bytes, no copy); a copy where the file system has none."""
    import secrets
    import shutil

    assert isinstance(store, FileStore)
    source, target = store.root / src, store.root / dst
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.nb2prod-tmp")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _copy_object(store: Store, src: str, dst: str) -> None:
    """S3 server-side copy: the bytes never leave the store."""
    assert isinstance(store, S3Store)
    store.client.copy(  # managed copy: multipart for objects over 5 GB
        {"Bucket": store.bucket, "Key": store._key(src)}, store.bucket, store._key(dst))


def _read_write(store: Store, src: str, dst: str) -> None:
    store.write_atomic(dst, store.read_bytes(src))


LINKERS: dict[type, Callable[[Store, str, str], None]] = {
    FileStore: _link_file,
    S3Store: _copy_object,
}


def link(store: Store, src: str, dst: str) -> None:
    """Make `dst` hold `src`'s bytes the cheapest way `store`'s type allows."""
    for kind in type(store).__mro__:
        if kind in LINKERS:
            LINKERS[kind](store, src, dst)
            return
    _read_write(store, src, dst)
