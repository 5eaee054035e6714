"""nb2prod stage runtime: artifact stores, save/load with manifests, metrics, promotion.

This one file is copied verbatim into every generated stage directory as
``nb2prod_runtime.py``, so a stage runs (locally under papermill, or in a bare
``python:3.11-slim`` pod) without nb2prod installed.  That is why it imports only
the standard library at module level: numpy, pandas, pyarrow and joblib are
imported when an object of that kind is saved or loaded, and boto3 only when an
``s3://`` store is actually used.  It must never import the ``nb2prod`` package.

Layout inside a store (keys are ``/``-separated)::

    <pipeline>/latest.json                          {"run_id": ..., "promoted_at": ...}
    <pipeline>/runs/<run_id>/run.json               run status, written by runners / promote
    <pipeline>/runs/<run_id>/<stage>/manifest.json  one entry per saved artifact
    <pipeline>/runs/<run_id>/<stage>/metrics.json   {metric: number}
    <pipeline>/runs/<run_id>/<stage>/<name>.<ext>   the artifacts

Stores are pluggable by URI scheme, like papermill's I/O handlers:
``register_store(scheme, factory)`` and ``open_store(uri)``; ``file://`` and
``s3://`` are built in.

Run ``python nb2prod_runtime.py promote --pipeline P --run-id R [--metric M --min X]``
in-cluster to apply the promotion gate and move ``latest.json``.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime as _dt
import hashlib
import hmac
import io
import json
import math
import numbers
import os
import platform
import re
import secrets
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ArtifactError",
    "ArtifactIntegrityError",
    "ArtifactNotFoundError",
    "ArtifactVersionWarning",
    "Context",
    "FileStore",
    "ManifestSignatureError",
    "S3Store",
    "Serializer",
    "Store",
    "context",
    "current_input_run_id",
    "expect_file",
    "list_runs",
    "load",
    "main",
    "new_run_id",
    "open_store",
    "prepare_workdir",
    "promotion_passes",
    "read_json",
    "read_latest",
    "read_manifest",
    "record_files",
    "record_metrics",
    "record_run",
    "register_serializer",
    "register_store",
    "registered_schemes",
    "run_prefix",
    "run_stage",
    "save",
    "sign_manifest",
    "upload_file",
    "verify_manifest",
    "write_json",
    "write_latest",
    "write_manifest",
]

#: Store used when neither ``NB2PROD_STORE`` nor config.ini names one; relative to
#: the stage directory, i.e. ``<pipeline dir>/.nb2prod/artifacts``.
DEFAULT_STORE = "file://../.nb2prod/artifacts"
#: Run id used when nothing else names one (a notebook run by hand).
MANUAL_RUN_ID = "manual"
#: Value of a run-id variable that means "whatever latest.json points at".
LATEST = "latest"

MANIFEST = "manifest.json"
METRICS = "metrics.json"
RUN_JSON = "run.json"
LATEST_JSON = "latest.json"
#: Artifact file names that would clobber the stage's own bookkeeping files.
_RESERVED_FILES = {MANIFEST, METRICS}
_TMP_SUFFIX = ".nb2prod-tmp"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


# -- errors ------------------------------------------------------------------------
class ArtifactError(Exception):
    """Base of every runtime error; the message is one line fit for a stage log."""


class ArtifactIntegrityError(ArtifactError):
    """A stored artifact's bytes do not match the sha256/size in its manifest.

    Raised instead of deserializing, because unpickling corrupted or swapped bytes
    either fails obscurely or, worse, silently hands a stage the wrong model.
    """


class ManifestSignatureError(ArtifactIntegrityError):
    """A manifest is unsigned or wrongly signed while ``NB2PROD_SIGNING_KEY`` is set."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """A manifest or artifact is missing (e.g. the producer stage never ran)."""


class ArtifactVersionWarning(UserWarning):
    """An artifact was written with a different library version than the reader has."""


# -- stores ------------------------------------------------------------------------
class Store:
    """Minimal key/value blob store; everything else in this module builds on it.

    Keys are ``/``-separated relative paths.  ``read_bytes`` raises
    ``FileNotFoundError`` for a missing key, whatever the backend, so callers need
    one ``except`` clause.  ``write_atomic`` guarantees readers never see a partial
    value, which ``latest.json`` and manifests rely on.
    """

    uri: str = ""

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def write_atomic(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """All keys (recursively) that start with ``prefix`` (plain string prefix), sorted."""
        raise NotImplementedError

    def upload(self, key: str, path: str | os.PathLike[str]) -> None:
        """Copy a local file to ``key``; backends override to stream large files."""
        self.write_bytes(key, Path(path).read_bytes())

    def url(self, key: str) -> str:
        """Full URI of ``key``, for error messages and logs."""
        return f"{self.uri.rstrip('/')}/{key}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _check_key(key: str) -> list[str]:
    """Split a key, rejecting shapes that could escape the store root."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"invalid store key {key!r}: use a relative '/'-separated path")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid store key {key!r}: empty, '.' or '..' segment")
    return parts


class FileStore(Store):
    """A directory on a local (or mounted, e.g. PVC) file system."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key))

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def write_atomic(self, key: str, data: bytes) -> None:
        """Temp file in the same directory, fsync, then ``os.replace``.

        The temp file is created with mode 0o666 filtered by the umask (unlike
        ``mkstemp``'s 0o600) so other pods/users sharing the volume can read it.
        """
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if prefix:
            head = prefix if prefix.endswith("/") else prefix.rpartition("/")[0]
            start = self._path(head.rstrip("/")) if head.strip("/") else self.root
        else:
            start = self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    continue  # an in-flight (or crashed) atomic write
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def upload(self, key: str, path: str | os.PathLike[str]) -> None:
        """Stream-copy to a temp file beside the target, then rename (atomic, any size)."""
        import shutil

        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class S3Store(Store):
    """``s3://bucket/prefix`` through boto3 (AWS, MinIO or any S3-compatible endpoint).

    The boto3 client is created on first use, so opening the store (e.g. to print
    its URI) does not need boto3 installed.  A single PUT is atomic on S3: readers
    see the old or the new object, never a mix, so ``write_atomic`` is a PUT.
    """

    #: Keys per ListObjectsV2 request (S3's maximum); lowered in tests to exercise paging.
    list_page_size = 1000

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        if not bucket:
            raise ValueError("s3 store URI needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # lazy: only stages that really use S3 need boto3

            # Recent boto3 reads AWS_ENDPOINT_URL(_S3) itself; older ones do not.
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            self._client = boto3.client("s3", endpoint_url=endpoint or None)
        return self._client

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _is_missing(exc: Exception) -> bool:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("NoSuchKey", "404", "NotFound") or status == 404

    def read_bytes(self, key: str) -> bytes:
        full = self._key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            if self._is_missing(exc):
                raise FileNotFoundError(f"s3://{self.bucket}/{full}") from None
            raise
        return response["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def write_atomic(self, key: str, data: bytes) -> None:
        self.write_bytes(key, data)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._is_missing(exc):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        pages = paginator.paginate(Bucket=self.bucket, Prefix=base + prefix,
                                   PaginationConfig={"PageSize": self.list_page_size})
        for page in pages:
            for item in page.get("Contents", ()):
                keys.append(item["Key"][len(base):])
        return sorted(keys)

    def upload(self, key: str, path: str | os.PathLike[str]) -> None:
        # upload_file streams and switches to multipart for large files.
        self.client.upload_file(os.fspath(path), self.bucket, self._key(key))


StoreFactory = Callable[[str, "str | os.PathLike[str] | None"], Store]
_FACTORIES: dict[str, StoreFactory] = {}


def register_store(scheme: str, factory: StoreFactory) -> None:
    """Register ``factory(uri, base_dir) -> Store`` for ``scheme://`` URIs.

    Lets a deployment add e.g. ``gs://`` without changing the generated code:
    register it in a module the stage imports before loading.
    """
    _FACTORIES[scheme.lower()] = factory


def registered_schemes() -> list[str]:
    """Schemes ``open_store`` understands, for error messages and ``--help``."""
    return sorted(_FACTORIES)


def _split_scheme(uri: str) -> tuple[str, str]:
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return scheme.lower(), rest
    return "file", uri  # a bare path is a file store


def open_store(uri: str | Store, base_dir: str | os.PathLike[str] | None = None) -> Store:
    """A ``Store`` for ``uri``; relative ``file://`` paths resolve against ``base_dir`` (cwd).

    Passing a ``Store`` returns it unchanged, so helpers accept either.
    """
    if isinstance(uri, Store):
        return uri
    scheme, _ = _split_scheme(str(uri))
    factory = _FACTORIES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in registered_schemes())
        raise ValueError(f"unsupported artifact store {uri!r}: scheme {scheme}:// "
                         f"is not registered (known: {known})")
    return factory(str(uri), base_dir)


def _file_factory(uri: str, base_dir: str | os.PathLike[str] | None = None) -> FileStore:
    """``file:///abs/path`` is absolute; ``file://rel/path`` is relative to ``base_dir``."""
    _, path = _split_scheme(uri)
    if path.startswith("localhost/"):  # RFC 8089 form file://localhost/abs
        path = path[len("localhost"):]
    if not path:
        raise ValueError(f"file store URI {uri!r} has no path")
    root = Path(path).expanduser()
    if not root.is_absolute():
        root = Path(base_dir if base_dir is not None else os.getcwd()) / root
    return FileStore(os.path.normpath(root))


def _s3_factory(uri: str, base_dir: str | os.PathLike[str] | None = None) -> S3Store:
    _, rest = _split_scheme(uri)
    bucket, _, prefix = rest.partition("/")
    return S3Store(bucket, prefix)


register_store("file", _file_factory)
register_store("s3", _s3_factory)


def absolute_store_uri(uri: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """``uri`` with a relative ``file://`` path made absolute, for handing to subprocesses."""
    scheme, _ = _split_scheme(uri)
    if scheme == "file":
        return _file_factory(uri, base_dir).uri
    return uri


# -- JSON helpers and pipeline layout ------------------------------------------------
_MISSING: Any = object()


def _check_segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' "
                         "(at most 128 characters, not starting with '.', '_' or '-')")
    return value


def run_prefix(pipeline: str, run_id: str) -> str:
    """Key prefix of one run: ``<pipeline>/runs/<run_id>``."""
    return f"{_check_segment(pipeline, 'pipeline name')}/runs/{_check_segment(run_id, 'run id')}"


def _stage_prefix(pipeline: str, run_id: str, stage: str) -> str:
    return f"{run_prefix(pipeline, run_id)}/{_check_segment(stage, 'stage name')}"


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def read_json(store: Store | str, key: str, default: Any = _MISSING) -> Any:
    """Parse the JSON at ``key``; missing → ``default`` if given, else ``FileNotFoundError``."""
    store = open_store(store)
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        if default is _MISSING:
            raise
        return default
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ArtifactError(f"{store.url(key)} is not valid JSON: {exc}") from None


def write_json(store: Store | str, key: str, obj: Any, atomic: bool = False) -> None:
    """Write ``obj`` as indented, key-sorted JSON (stable diffs, strict: no NaN)."""
    store = open_store(store)
    data = _json_bytes(obj)
    if atomic:
        store.write_atomic(key, data)
    else:
        store.write_bytes(key, data)


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id() -> str:
    """Sortable, DNS-1123-friendly run id: UTC timestamp plus a random suffix.

    Lexical order is chronological (``list_runs`` sorts on it) and the value can
    be embedded in Kubernetes object names and labels as is.
    """
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dt%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def read_latest(store: Store | str, pipeline: str) -> dict | None:
    """Contents of ``<pipeline>/latest.json``, or None when no run was promoted yet."""
    data = read_json(store, f"{_check_segment(pipeline, 'pipeline name')}/{LATEST_JSON}",
                     default=None)
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        raise ArtifactError(f"{open_store(store).url(pipeline + '/' + LATEST_JSON)} "
                            "has no string 'run_id'")
    return data


def write_latest(store: Store | str, pipeline: str, run_id: str, **extra: Any) -> dict:
    """Point ``latest.json`` at ``run_id``, atomically.

    Call it last, after every stage succeeded and the gate passed: serving stages
    read it, so it must never name a run that is incomplete.
    """
    run_prefix(pipeline, run_id)  # validates both
    record = {**extra, "run_id": run_id, "promoted_at": _utcnow()}
    write_json(store, f"{pipeline}/{LATEST_JSON}", record, atomic=True)
    return record


def list_runs(store: Store | str, pipeline: str) -> list[dict]:
    """One dict per run found in the store, oldest first.

    Each is the run's ``run.json`` (if any; runners write ``status``, ``stages``,
    ``metrics``, ``promoted``...) plus derived ``run_id``, ``stage_dirs`` (stage
    directories present in the store) and ``latest`` (latest.json points at it).
    Keys from run.json win over the derived ones.  In-cluster runs have no
    runner writing ``stages``: those come from each stage's ``result.json``
    (written by ``run-stage``), so a run that failed in a pod, long after the
    cluster forgot its Job, still shows which stage failed and why.
    """
    store = open_store(store)
    base = f"{_check_segment(pipeline, 'pipeline name')}/runs/"
    stage_dirs: dict[str, set[str]] = {}
    for key in store.list(base):
        parts = key[len(base):].split("/")
        run = stage_dirs.setdefault(parts[0], set())
        if len(parts) >= 3:
            run.add(parts[1])
    latest = read_latest(store, pipeline)
    latest_id = latest["run_id"] if latest else None
    runs = []
    for run_id in sorted(stage_dirs):
        info = read_json(store, f"{base}{run_id}/{RUN_JSON}", default=None)
        if info is not None and not (isinstance(info, dict)
                                     and info.get("run_id", run_id) == run_id):
            raise ArtifactError(f"{store.url(f'{base}{run_id}/{RUN_JSON}')} is not the record "
                                f"of run {run_id} (expected an object with \"run_id\": "
                                f"\"{run_id}\")")
        record = dict(info) if isinstance(info, dict) else {}
        if "stages" not in record:
            _add_stage_results(store, f"{base}{run_id}", sorted(stage_dirs[run_id]), record)
        record.setdefault("run_id", run_id)
        record.setdefault("stage_dirs", sorted(stage_dirs[run_id]))
        record.setdefault("latest", run_id == latest_id)
        runs.append(record)
    # Local run ids sort by time; in-cluster ones (Job names) need their start time.
    return sorted(runs, key=lambda r: (r["started"] if isinstance(r.get("started"), (int, float))
                                       else 0, r["run_id"]))


def _add_stage_results(store: Store, prefix: str, stages: list[str], record: dict) -> None:
    """Fill `stages`, `status`, `started`, `finished` of a run from its stages' result.json."""
    found = {}
    for stage in stages:
        result = read_json(store, f"{prefix}/{stage}/result.json", default=None)
        if not isinstance(result, dict) or "status" not in result:
            continue
        entry = {k: result[k] for k in ("status", "started", "finished", "cell") if k in result}
        if result["status"] != "succeeded":
            entry["reason"] = _failure_reason(result)
        found[stage] = entry
    if not found:
        return
    record["stages"] = found
    times = [v for e in found.values() for k, v in e.items()
             if k in ("started", "finished") and isinstance(v, (int, float))]
    if times:
        record.setdefault("started", min(times))
        record.setdefault("finished", max(times))
    failed = [name for name, e in found.items() if e["status"] != "succeeded"]
    if failed:
        record.setdefault("status", "failed")
        record.setdefault("reason", f"stage '{failed[0]}' {found[failed[0]]['reason']}")
    else:
        # Every stage that left a result succeeded, but nobody promoted the run (yet).
        record.setdefault("status", "incomplete")


def record_run(store: Store | str, pipeline: str, run_id: str, values: dict) -> dict:
    """Merge `values` into a run's run.json (atomically); returns the new record.

    The in-cluster roll step uses it to leave the roll-out's outcome next to the
    promotion verdict, so the store alone tells what became of every run.
    """
    store = open_store(store)
    key = f"{run_prefix(pipeline, run_id)}/{RUN_JSON}"
    record = read_json(store, key, default=None)
    record = record if isinstance(record, dict) else {}
    record.update(values)
    write_json(store, key, record, atomic=True)
    return record


def upload_file(store: Store | str, key: str, path: str | os.PathLike[str]) -> None:
    """Copy a local file (executed notebook, HTML, log) into the store."""
    open_store(store).upload(key, path)


def read_run_metrics(store: Store | str, pipeline: str, run_id: str) -> dict[str, dict]:
    """``{stage: metrics}`` from every ``<stage>/metrics.json`` of a run."""
    store = open_store(store)
    base = run_prefix(pipeline, run_id) + "/"
    found: dict[str, dict] = {}
    for key in store.list(base):
        parts = key[len(base):].split("/")
        if len(parts) == 2 and parts[1] == METRICS:
            data = read_json(store, key, default={})
            if isinstance(data, dict):
                found[parts[0]] = data
    return found


# -- context ------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """Where this stage reads and writes: resolved once per call from env + config.ini."""

    store: str          # absolute for file:// stores
    pipeline: str
    stage: str
    run_id: str
    input_run_id: str


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _stage_dir() -> Path:
    """The stage directory: cwd when it holds config.ini, else this file's directory.

    papermill and app.py run with the stage dir as cwd; falling back to the module's
    own directory keeps things working when a server is started from elsewhere.
    """
    explicit = _env("NB2PROD_STAGE_DIR")  # set for kernels running in a working directory
    if explicit and (Path(explicit) / "config.ini").is_file():
        return Path(explicit)
    cwd = Path.cwd()
    if (cwd / "config.ini").is_file():
        return cwd
    here = Path(__file__).resolve().parent
    if here.name != "nb2prod" and (here / "config.ini").is_file():
        return here
    return cwd


def _config(stage_dir: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    path = stage_dir / "config.ini"
    if path.is_file():
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as exc:
            raise ArtifactError(f"{path}: cannot parse: {exc}".replace("\n", " ")) from None
    return parser


_PINNED_LATEST: dict[tuple[str, str], str] = {}


def _resolve_input_run_id(store_uri: str, pipeline: str, refresh: bool = False) -> str:
    explicit = _env("MODEL_RUN_ID") or _env("NB2PROD_INPUT_RUN_ID") or _env("NB2PROD_RUN_ID")
    if explicit and explicit != LATEST:
        return explicit
    if not pipeline:
        if explicit == LATEST:
            raise ArtifactError("run id 'latest' requested but the pipeline name is unknown "
                                "(set NB2PROD_PIPELINE or [default] PIPELINE in config.ini)")
        return MANUAL_RUN_ID
    # Pin the answer for the life of the process: every load() of one stage (and
    # every request of a server) must read the same run even if a scheduled run
    # moves latest.json meanwhile.
    pin = (store_uri, pipeline)
    if pin in _PINNED_LATEST and not refresh:
        return _PINNED_LATEST[pin]
    latest = read_latest(store_uri, pipeline)
    if latest is None:
        if explicit == LATEST:
            raise ArtifactNotFoundError(
                f"run id 'latest' requested but no run of pipeline '{pipeline}' was promoted "
                f"yet ({open_store(store_uri).url(pipeline + '/' + LATEST_JSON)} missing)")
        return MANUAL_RUN_ID
    _PINNED_LATEST[pin] = latest["run_id"]
    return latest["run_id"]


def _base_context() -> tuple[str, str, str, str]:
    stage_dir = _stage_dir()
    config = _config(stage_dir)
    store = (_env("NB2PROD_STORE") or config.get("artifacts", "STORE", fallback="").strip()
             or DEFAULT_STORE)
    store = absolute_store_uri(store, stage_dir)
    pipeline = _env("NB2PROD_PIPELINE") or config.get("default", "PIPELINE", fallback="").strip()
    stage = _env("NB2PROD_STAGE") or config.get("default", "NAME", fallback="").strip()
    run_id = _env("NB2PROD_RUN_ID") or MANUAL_RUN_ID
    return store, pipeline, stage, run_id


def context() -> Context:
    """The stage's context from ``NB2PROD_*`` env vars, defaulting to ./config.ini.

    Read on every call (cheap) so tests and long-lived servers see env changes;
    only the ``latest.json`` fallback for the input run is pinned per process.
    """
    store, pipeline, stage, run_id = _base_context()
    return Context(store, pipeline, stage, run_id, _resolve_input_run_id(store, pipeline))


def current_input_run_id(refresh: bool = False) -> str:
    """Run whose artifacts ``load`` reads.

    ``MODEL_RUN_ID``, else ``NB2PROD_INPUT_RUN_ID``, else ``NB2PROD_RUN_ID``, else
    the run ``latest.json`` points at, else ``manual``.  The value ``latest`` in
    any of the variables means "the promoted run" (an error if there is none).
    ``refresh`` re-reads latest.json instead of the per-process pinned answer.
    """
    store, pipeline, _, _ = _base_context()
    return _resolve_input_run_id(store, pipeline, refresh=refresh)


def _require(ctx: Context, what: str) -> None:
    missing = [(env, key) for env, key, value in (("NB2PROD_PIPELINE", "PIPELINE", ctx.pipeline),
                                                  ("NB2PROD_STAGE", "NAME", ctx.stage))
               if not value]
    if missing:
        raise ArtifactError(
            f"cannot {what}: {' and '.join(env for env, _ in missing)} not set and no "
            f"config.ini [default] {' / '.join(key for _, key in missing)} in {_stage_dir()}")


# -- serialization ---------------------------------------------------------------
def _is_exact_json(value: Any, path: set[int] | None = None) -> bool:
    """True when ``json.loads(json.dumps(value)) == value`` with identical types.

    Exact type checks on purpose: tuples, numpy scalars (a ``float`` subclass),
    IntEnums, non-str dict keys and NaN would all come back different.
    """
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list or kind is dict:
        path = path or set()
        if id(value) in path:
            return False  # a cycle
        path.add(id(value))
        try:
            if kind is list:
                return all(_is_exact_json(item, path) for item in value)
            return all(type(k) is str and _is_exact_json(v, path) for k, v in value.items())
        finally:
            path.discard(id(value))
    return False


def _module_version(name: str) -> str | None:
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    return version if isinstance(version, str) else None


def _versions(value: Any, libraries: list[str]) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    top = (type(value).__module__ or "").split(".")[0]
    candidates = list(libraries)
    if top and top != "builtins":
        candidates.append(top)
    for name in candidates:
        version = _module_version(name)
        if version:
            versions[name] = version
    return versions


def _has_pyarrow() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


# -- serializer registry ------------------------------------------------------------
# One small class per library, chosen by the value's type: each serializer names
# the classes it handles ("xgboost.DMatrix": top-level package and class, or the
# full "xgboost.core.DMatrix"), matched along
# the value's MRO, so choosing one imports nothing (a DMatrix can only exist if
# xgboost is already imported) and subclasses are covered.  Several serializers may
# claim one type; the first whose ``dump`` does not decline wins, so pandas tries
# parquet, then pickle.  Anything unclaimed goes to joblib.  More serializers come
# from the ``nb2prod.serializers`` entry point group (tried before the built-ins)
# or ``register_serializer``; a serializer needs only the attributes and methods of
# ``Serializer`` (no import of this module), since a stage knows it as
# ``nb2prod_runtime`` and a developer as ``nb2prod.artifacts``.

#: Entry point group whose objects (Serializer-like classes or instances) are registered.
SERIALIZER_ENTRY_POINTS = "nb2prod.serializers"


class Serializer:
    """Saves values of some types as bytes in one format, and loads them back.

    ``dump`` returns the bytes, or ``(bytes, extra)`` where ``extra`` is a dict of
    JSON values kept in the manifest entry and handed back to ``load``.  Raising
    ``NotImplementedError`` declines the value: the next serializer for its type
    tries, and the reason is kept in the manifest as ``<format>_error``.
    """

    format: str = ""                    # the manifest's "format"; unique per serializer
    ext: str = "bin"                    # artifact file extension
    types: tuple[str, ...] = ()         # "package.Class" or "module.Class", along the MRO
    libraries: tuple[str, ...] = ()     # modules whose versions the manifest records

    def accepts(self, value: Any) -> bool:
        """A finer check once one of ``types`` matched."""
        return True

    def dump(self, value: Any) -> bytes | tuple[bytes, dict]:
        raise NotImplementedError

    def load(self, data: bytes, entry: dict) -> Any:
        raise NotImplementedError


def _via_file(write: Callable[[str], Any], name: str) -> bytes:
    """Bytes of what ``write(path)`` writes, for libraries that only save to a path."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nb2prod-save-") as tmp:
        path = os.path.join(tmp, name)
        write(path)
        return Path(path).read_bytes()


def _from_file(data: bytes, name: str, read: Callable[[str], Any]) -> Any:
    """``read(path)`` of a temp file holding ``data``; ``read`` must not keep the path."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nb2prod-load-") as tmp:
        path = os.path.join(tmp, name)
        Path(path).write_bytes(data)
        return read(path)


class JsonSerializer(Serializer):
    """Builtins that survive a JSON round trip with identical types (see ``_is_exact_json``)."""

    format, ext = "json", "json"
    types = tuple(f"builtins.{t}" for t in ("dict", "list", "str", "int", "float", "bool",
                                             "NoneType"))

    def accepts(self, value: Any) -> bool:
        return _is_exact_json(value)

    def dump(self, value: Any) -> bytes:
        return json.dumps(value, allow_nan=False).encode("utf-8")

    def load(self, data: bytes, entry: dict) -> Any:
        return json.loads(data)


class NumpySerializer(Serializer):
    """Plain ndarrays as ``.npy`` without pickle (object arrays and subclasses: joblib)."""

    format, ext, types, libraries = "npy", "npy", ("numpy.ndarray",), ("numpy",)

    def accepts(self, value: Any) -> bool:
        return _names(type(value))[1] == "numpy.ndarray" and not value.dtype.hasobject

    def dump(self, value: Any) -> bytes:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()

    def load(self, data: bytes, entry: dict) -> Any:
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)


_PANDAS_TYPES = ("pandas.DataFrame", "pandas.Series")


class PandasParquetSerializer(Serializer):
    """DataFrames and Series as parquet when pyarrow is importable and accepts them.

    pyarrow refuses e.g. non-string column names and mixed-type object columns;
    declining then lets the pickle serializer keep those exact.
    """

    format, ext, types, libraries = "parquet", "parquet", _PANDAS_TYPES, ("pandas", "pyarrow")

    def accepts(self, value: Any) -> bool:
        return _has_pyarrow() and (not _is_series(value) or _is_exact_json(value.name))

    def dump(self, value: Any) -> tuple[bytes, dict]:
        is_series = _is_series(value)
        extra: dict[str, Any] = {"pandas_type": "Series" if is_series else "DataFrame"}
        frame = value
        if is_series:
            extra["series_name"] = value.name
            frame = value.to_frame(name="__nb2prod_series__")
        buf = io.BytesIO()
        try:
            frame.to_parquet(buf, engine="pyarrow")
        except (ValueError, TypeError, NotImplementedError, LookupError, OverflowError) as exc:
            # pyarrow's ArrowInvalid/ArrowTypeError/... subclass these
            raise NotImplementedError(f"{type(exc).__name__}: {exc}") from exc
        return buf.getvalue(), extra

    def load(self, data: bytes, entry: dict) -> Any:
        import pandas as pd

        frame = pd.read_parquet(io.BytesIO(data), engine="pyarrow")
        if entry.get("pandas_type") == "Series":
            series = frame.iloc[:, 0]
            series.name = entry.get("series_name")
            return series
        return frame


def _is_a(value: Any, qualified_name: str) -> bool:
    """isinstance by class name, so the class's library need not be imported."""
    return any(qualified_name in _names(cls) for cls in type(value).__mro__)


def _names(cls: type) -> tuple[str, str]:
    """``module.Class`` and ``package.Class``: libraries move classes between modules
    across versions (pandas 3 says ``pandas.DataFrame``, 2.x ``pandas.core.frame``)."""
    module = cls.__module__ or ""
    return f"{module}.{cls.__qualname__}", f"{module.split('.')[0]}.{cls.__qualname__}"


def _is_series(value: Any) -> bool:
    return _is_a(value, _PANDAS_TYPES[1])


class PandasPickleSerializer(Serializer):
    """What parquet cannot hold, exactly, with pandas' own pickle support."""

    format, ext, types, libraries = "pickle", "pkl", _PANDAS_TYPES, ("pandas", "numpy")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        import pickle

        return (pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL),
                {"pandas_type": "Series" if _is_series(value) else "DataFrame"})

    def load(self, data: bytes, entry: dict) -> Any:
        import pickle

        if "pandas" in entry.get("versions", {}):
            import pandas  # noqa: F401 - make sure pandas' unpickling hooks are available
        return pickle.loads(data)


class XGBoostSerializer(Serializer):
    """``Booster`` as UBJSON (xgboost's model format); ``DMatrix`` (unpicklable) as its binary."""

    format, ext, libraries = "xgboost", "xgb", ("xgboost",)
    types = ("xgboost.Booster", "xgboost.DMatrix")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        if _is_a(value, self.types[0]):
            return bytes(value.save_raw("ubj")), {"xgboost_type": "Booster"}
        return _via_file(value.save_binary, "data.buffer"), {"xgboost_type": "DMatrix"}

    def load(self, data: bytes, entry: dict) -> Any:
        import xgboost as xgb

        if entry.get("xgboost_type") == "DMatrix":
            return _from_file(data, "data.buffer", xgb.DMatrix)  # reads the file eagerly
        booster = xgb.Booster()
        booster.load_model(bytearray(data))
        return booster


class LightGBMSerializer(Serializer):
    """``Booster`` as LightGBM's text model; a constructed ``Dataset`` as its binary.

    A Dataset that was never constructed holds only its raw inputs (and can be
    pickled, keeping the binning to the stage that trains): it goes to joblib.
    """

    format, ext, libraries = "lightgbm", "lgb", ("lightgbm",)
    types = ("lightgbm.Booster", "lightgbm.Dataset")

    def accepts(self, value: Any) -> bool:
        return _is_a(value, self.types[0]) or getattr(value, "_handle", None) is not None

    def dump(self, value: Any) -> tuple[bytes, dict]:
        if _is_a(value, self.types[0]):
            # Every iteration, and the early-stopping results the text model leaves out
            # (a Booster read back from text says best_iteration = -1).
            best_score = {data: {metric: float(score) for metric, score in scores.items()}
                          for data, scores in (value.best_score or {}).items()}
            return value.model_to_string(num_iteration=-1).encode("utf-8"), {
                "lightgbm_type": "Booster", "best_iteration": int(value.best_iteration),
                "best_score": best_score}
        params = value.params if _is_exact_json(value.params) else {}
        # Binned with these params: loading with others would make LightGBM refuse training.
        return (_via_file(value.save_binary, "data.bin"),
                {"lightgbm_type": "Dataset", "lightgbm_params": params})

    def load(self, data: bytes, entry: dict) -> Any:
        import lightgbm as lgb

        if entry.get("lightgbm_type") == "Dataset":
            params = {"verbose": -1, **(entry.get("lightgbm_params") or {})}
            return _from_file(data, "data.bin", lambda path: lgb.Dataset(
                path, params=params).construct())
        import collections

        booster = lgb.Booster(model_str=data.decode("utf-8"))
        booster.best_iteration = entry.get("best_iteration", -1)
        booster.best_score = collections.defaultdict(collections.OrderedDict, {
            data: collections.OrderedDict(scores)
            for data, scores in (entry.get("best_score") or {}).items()})
        return booster


class TorchSerializer(Serializer):
    """Tensors and modules with ``torch.save``; tensors load with ``weights_only``.

    A module is saved whole, so (as with joblib) its class must be importable or
    defined in the stage that loads it.
    """

    format, ext, libraries = "torch", "pt", ("torch",)
    types = ("torch.Tensor", "torch.nn.modules.module.Module")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        import torch

        buf = io.BytesIO()
        torch.save(value, buf)
        kind = "tensor" if isinstance(value, torch.Tensor) else "module"
        return buf.getvalue(), {"torch_type": kind}

    def load(self, data: bytes, entry: dict) -> Any:
        import torch

        where = None if torch.cuda.is_available() else "cpu"  # a CPU pod reads GPU tensors
        return torch.load(io.BytesIO(data), map_location=where,
                          weights_only=entry.get("torch_type") == "tensor")


class KerasSerializer(Serializer):
    """Keras models in the native ``.keras`` format (Keras 3; also tf.keras / tf_keras)."""

    format, ext, libraries = "keras", "keras", ("keras", "tensorflow", "tf_keras")
    types = ("keras.Model", "tf_keras.Model")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        module = type(value).__module__.split(".")[0]
        return _via_file(value.save, "model.keras"), {"keras_module": module}

    def load(self, data: bytes, entry: dict) -> Any:
        import importlib

        keras = importlib.import_module(entry.get("keras_module") or "keras")
        return _from_file(data, "model.keras", keras.models.load_model)


class PolarsSerializer(Serializer):
    """Polars DataFrames and Series as Arrow IPC (exact dtypes, no pandas round trip)."""

    format, ext, libraries = "polars", "arrow", ("polars",)
    types = ("polars.DataFrame", "polars.Series")

    def dump(self, value: Any) -> tuple[bytes, dict]:
        is_series = _is_a(value, self.types[1])
        buf = io.BytesIO()
        (value.to_frame() if is_series else value).write_ipc(buf)
        return buf.getvalue(), {"polars_type": "Series" if is_series else "DataFrame"}

    def load(self, data: bytes, entry: dict) -> Any:
        import polars as pl

        frame = pl.read_ipc(io.BytesIO(data))
        return frame.to_series() if entry.get("polars_type") == "Series" else frame


class JoblibSerializer(Serializer):
    """Everything no other serializer claimed (scikit-learn models, tuples, numpy scalars...)."""

    format, ext, libraries = "joblib", "joblib", ("joblib", "numpy")

    def dump(self, value: Any) -> bytes:
        import joblib

        buf = io.BytesIO()
        joblib.dump(value, buf)
        return buf.getvalue()

    def load(self, data: bytes, entry: dict) -> Any:
        import joblib

        return joblib.load(io.BytesIO(data))


_FALLBACK = JoblibSerializer()
_BY_FORMAT: dict[str, Any] = {}
_BY_TYPE: dict[str, list[Any]] = {}
_PLUGINS_LOADED = False


def register_serializer(serializer: Any, first: bool = True) -> None:
    """Add a serializer (an instance, or a class to instantiate) for its ``types``.

    ``first`` puts it ahead of the ones already registered for those types, so a
    plugin can replace a built-in choice.
    """
    if isinstance(serializer, type):
        serializer = serializer()
    if not getattr(serializer, "format", "") or not getattr(serializer, "types", ()):
        raise ValueError(f"serializer {serializer!r} needs a 'format' and 'types'")
    _BY_FORMAT[serializer.format] = serializer
    for name in serializer.types:
        claimed = _BY_TYPE.setdefault(name, [])
        claimed.insert(0, serializer) if first else claimed.append(serializer)


for _builtin in (JsonSerializer, NumpySerializer, PandasParquetSerializer,
                 PandasPickleSerializer, XGBoostSerializer, LightGBMSerializer,
                 TorchSerializer, KerasSerializer, PolarsSerializer):
    register_serializer(_builtin, first=False)
_BY_FORMAT[_FALLBACK.format] = _FALLBACK


def _load_plugins() -> None:
    """Register the ``nb2prod.serializers`` entry points, once per process.

    A plugin that fails to load is reported as a warning and skipped: the
    built-in serializers still work.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for point in entry_points(group=SERIALIZER_ENTRY_POINTS):
        try:
            register_serializer(point.load())
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break saving
            warnings.warn(f"serializer entry point {point.name!r} ({point.value}) "
                          f"not loaded: {_first_line(exc)}", stacklevel=2)


def _candidates(value: Any) -> list[Any]:
    """Serializers claiming ``value``'s type (nearest class first), then joblib."""
    _load_plugins()
    found: list[Any] = []
    for cls in type(value).__mro__:
        for name in _names(cls):
            for serializer in _BY_TYPE.get(name, ()):
                if serializer not in found and serializer.accepts(value):
                    found.append(serializer)
    return [*found, _FALLBACK]


@dataclass
class _Serialized:
    data: bytes
    format: str
    ext: str
    libraries: list[str]
    extra: dict[str, Any]


def _serialize(value: Any) -> _Serialized:
    """The first serializer for ``value``'s type that does not decline it."""
    declined: dict[str, Any] = {}
    for serializer in _candidates(value):
        try:
            out = serializer.dump(value)
        except NotImplementedError as exc:
            if serializer is _FALLBACK:
                raise
            declined[f"{serializer.format}_error"] = _first_line(exc)[:300]
            continue
        data, extra = out if isinstance(out, tuple) else (out, {})
        return _Serialized(bytes(data), serializer.format, serializer.ext,
                           list(serializer.libraries), {**declined, **extra})
    raise AssertionError("unreachable: joblib is the last candidate")


def _deserialize(data: bytes, entry: dict) -> Any:
    fmt = entry.get("format")
    serializer = _BY_FORMAT.get(fmt)  # type: ignore[arg-type]
    if serializer is None:
        _load_plugins()
        serializer = _BY_FORMAT.get(fmt)  # type: ignore[arg-type]
    if serializer is None:
        raise ArtifactError(f"artifact {entry.get('name')!r} has unknown format {fmt!r}: "
                            "written by a newer nb2prod, or by a serializer plugin "
                            f"(entry point group '{SERIALIZER_ENTRY_POINTS}') not installed here")
    return serializer.load(data, entry)


def _unsaveable(name: str, value: Any, exc: BaseException) -> ArtifactError:
    """The producing stage's error: the variable, its type, and what to do about it."""
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return ArtifactError(
        f"cannot save {name!r} ({kind}) for the stages that read it: {_first_line(exc)}. "
        f"Create {name!r} in the stage that uses it (or in a 'functions' cell), turn it "
        "into data that can be saved (arrays, data frames, dicts, fitted models), or "
        f"register a serializer for {kind} (entry point group '{SERIALIZER_ENTRY_POINTS}')")


def _warn_versions(entry: dict) -> None:
    for name, wanted in sorted(entry.get("versions", {}).items()):
        if name == "python":
            continue
        have = _module_version(name)
        if have and have != wanted:
            warnings.warn(
                f"artifact {entry.get('name')!r} was written with {name} {wanted}, "
                f"loading it with {name} {have}", ArtifactVersionWarning, stacklevel=3)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- signed manifests -------------------------------------------------------------
#: Environment variable holding the key that signs and verifies manifests.
SIGNING_KEY_ENV = "NB2PROD_SIGNING_KEY"
#: Manifest field holding the signature; everything else in the manifest is signed.
SIGNATURE = "signature"


def _signing_key() -> bytes | None:
    """The manifest signing key, or None when signing is off.

    Whoever can write the store can otherwise swap an artifact *and* its sha256, and
    loading joblib/pickle runs code: with a key, only holders of the key can produce
    manifests that a stage or service will load.  Set-but-empty fails closed.
    """
    raw = os.environ.get(SIGNING_KEY_ENV)
    if raw is None:
        return None
    key = raw.strip()  # Secrets created from files often end in a newline
    if not key:
        raise ArtifactError(f"{SIGNING_KEY_ENV} is set but empty; unset it or give a key")
    return key.encode("utf-8")


def _manifest_mac(manifest: dict, key: bytes) -> str:
    """HMAC-SHA256 over the manifest's canonical JSON, signature field left out."""
    body = {k: v for k, v in manifest.items() if k != SIGNATURE}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False,
                           ensure_ascii=True).encode("utf-8")
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def sign_manifest(manifest: dict) -> dict:
    """Add the HMAC of ``manifest`` when a signing key is set (in place; returned).

    Without a key any stale signature is dropped, so a manifest never carries a
    signature that no longer matches its content.
    """
    key = _signing_key()
    manifest.pop(SIGNATURE, None)
    if key is not None:
        manifest[SIGNATURE] = {"alg": "hmac-sha256", "value": _manifest_mac(manifest, key)}
    return manifest


def verify_manifest(manifest: Any, where: str) -> None:
    """Refuse an unsigned or wrongly signed manifest when a signing key is set.

    ``where`` names the manifest in the error (its URL).  A no-op without a key:
    the sha256 per artifact then catches corruption only, not tampering.
    """
    key = _signing_key()
    if key is None:
        return
    signature = manifest.get(SIGNATURE) if isinstance(manifest, dict) else None
    if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
        raise ManifestSignatureError(
            f"manifest {where} is not signed but {SIGNING_KEY_ENV} is set; refusing to load "
            "it (re-run the producing stage with the key set)")
    if signature.get("alg") != "hmac-sha256" or not hmac.compare_digest(
            signature["value"], _manifest_mac(manifest, key)):
        raise ManifestSignatureError(
            f"manifest {where} has a wrong signature for {SIGNING_KEY_ENV}; refusing to load "
            "it (tampered with, or signed with another key)")


def read_manifest(store: Store, key: str, default: Any = _MISSING) -> Any:
    """``read_json`` of a manifest, verified against the signing key (see above)."""
    manifest = read_json(store, key, default)
    if manifest is not default or default is _MISSING:
        verify_manifest(manifest, store.url(key))
    return manifest


def write_manifest(store: Store, key: str, manifest: dict) -> None:
    """Sign (when a key is set) and write a manifest atomically."""
    write_json(store, key, sign_manifest(manifest), atomic=True)


# -- stage API ----------------------------------------------------------------------
def load(name: str, producer: str, *, run_id: str | None = None) -> Any:
    """Load artifact ``name`` saved by stage ``producer`` in the input run.

    The bytes are checked against the manifest's sha256 and size before they are
    deserialized, so a truncated upload or a swapped file fails loudly here
    instead of as a wrong prediction later.
    """
    if run_id is None:
        ctx = context()
        store_uri, pipeline, run = ctx.store, ctx.pipeline, ctx.input_run_id
    else:
        store_uri, pipeline, _, _ = _base_context()
        run = run_id
    if not pipeline:
        raise ArtifactError(f"cannot load {name!r}: NB2PROD_PIPELINE not set and no config.ini "
                            f"[default] PIPELINE in {_stage_dir()}")
    store = open_store(store_uri)
    prefix = _stage_prefix(pipeline, run, producer)
    manifest_key = f"{prefix}/{MANIFEST}"
    try:
        manifest = read_manifest(store, manifest_key)
    except FileNotFoundError:
        raise ArtifactNotFoundError(
            f"cannot load {name!r}: stage '{producer}' has no saved outputs in run '{run}' "
            f"of pipeline '{pipeline}' ({store.url(manifest_key)} missing); "
            f"run stage '{producer}' first or set NB2PROD_INPUT_RUN_ID") from None
    entry = (manifest.get("artifacts") or {}).get(name) if isinstance(manifest, dict) else None
    if not isinstance(entry, dict):
        raise ArtifactNotFoundError(
            f"cannot load {name!r}: not in the manifest of stage '{producer}', run '{run}' "
            f"({store.url(manifest_key)})")
    filename = entry.get("file", "")
    if not isinstance(filename, str) or not _ARTIFACT_NAME.match(filename):
        raise ArtifactIntegrityError(f"artifact {name!r} (stage '{producer}', run '{run}'): "
                                     f"manifest names an invalid file {filename!r}")
    key = f"{prefix}/{filename}"
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        raise ArtifactNotFoundError(f"cannot load {name!r}: {store.url(key)} is listed in the "
                                    f"manifest of stage '{producer}', run '{run}' but missing"
                                    ) from None
    actual = _sha256(data)
    if actual != entry.get("sha256") or len(data) != entry.get("bytes", len(data)):
        raise ArtifactIntegrityError(
            f"artifact {name!r} (stage '{producer}', run '{run}') failed its integrity check: "
            f"expected sha256 {entry.get('sha256')} ({entry.get('bytes')} bytes), "
            f"got {actual} ({len(data)} bytes) at {store.url(key)}")
    value = _deserialize(data, entry)
    _warn_versions(entry)
    return value


def save(values: dict[str, object]) -> dict:
    """Save each value as ``<stage>/<name>.<ext>`` and merge entries into manifest.json.

    All values are serialized before anything is written, so an unserializable
    object fails the stage without leaving a half-updated manifest; the manifest
    is written last and atomically.  Returns the merged manifest.
    """
    ctx = _write_context("save outputs")
    store = open_store(ctx.store)
    prefix = _stage_prefix(ctx.pipeline, ctx.run_id, ctx.stage)
    prepared = []
    for name, value in values.items():
        if not isinstance(name, str) or not _ARTIFACT_NAME.match(name):
            raise ArtifactError(f"cannot save {name!r}: artifact names are letters, digits, "
                                "'_', '.' and '-'")
        try:
            serialized = _serialize(value)
        except Exception as exc:
            raise _unsaveable(name, value, exc) from exc
        filename = f"{name}.{serialized.ext}"
        if filename in _RESERVED_FILES:
            filename = f"{name}.artifact.{serialized.ext}"  # never clobber bookkeeping files
        prepared.append((name, value, filename, serialized))
    manifest_key = f"{prefix}/{MANIFEST}"
    manifest = read_manifest(store, manifest_key, default=None)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), dict):
        manifest = {"artifacts": {}}
    for name, value, filename, serialized in prepared:
        store.write_atomic(f"{prefix}/{filename}", serialized.data)
        manifest["artifacts"][name] = {
            "name": name,
            "file": filename,
            "format": serialized.format,
            "sha256": _sha256(serialized.data),
            "bytes": len(serialized.data),
            "producer": ctx.stage,
            "created": _utcnow(),
            "type": f"{type(value).__module__}.{type(value).__qualname__}",
            "versions": _versions(value, serialized.libraries),
            **serialized.extra,
        }
    manifest.update(schema=1, pipeline=ctx.pipeline, run_id=ctx.run_id, stage=ctx.stage,
                    updated=_utcnow())
    write_manifest(store, manifest_key, manifest)
    return manifest


def _write_context(what: str) -> Context:
    """``context()`` that insists on pipeline and stage names (needed to build keys)."""
    store, pipeline, stage, run_id = _base_context()
    ctx = Context(store, pipeline, stage, run_id, run_id)
    _require(ctx, what)
    return ctx


def _metric_value(value: Any) -> int | float | None:
    """A finite real number as int/float, else None (bools, strings, NaN, arrays...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None  # numpy bool_ is not Real; numpy ints/floats are
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def record_metrics(values: dict[str, object]) -> dict:
    """Merge the real, finite numbers of ``values`` into the stage's metrics.json.

    The metrics cell passes every name the notebook's metrics cell referenced;
    non-numbers are dropped quietly rather than failing a finished stage.
    Returns what was recorded.
    """
    recorded = {}
    for name, value in values.items():
        number = _metric_value(value)
        if isinstance(name, str) and number is not None:
            recorded[name] = number
    if not recorded:
        return recorded
    ctx = _write_context("record metrics")
    store = open_store(ctx.store)
    key = f"{_stage_prefix(ctx.pipeline, ctx.run_id, ctx.stage)}/{METRICS}"
    current = read_json(store, key, default={})
    merged = {**(current if isinstance(current, dict) else {}), **recorded}
    write_json(store, key, merged, atomic=True)
    return recorded


SAMPLE_REQUEST = "sample_request.json"


def sample_rows(value: object, rows: int = 2, records: bool = False) -> list | None:
    """The first `rows` rows of `value` as plain JSON values (None when it has no rows).

    A DataFrame gives lists of values, or `{column: value}` records when `records`; a
    numpy array (anything with `shape` and `tolist`) its first rows; a list its first items.
    """
    if hasattr(value, "iloc") and hasattr(value, "to_json"):  # pandas
        head = value.iloc[:rows]
        if records and hasattr(head, "columns"):
            return json.loads(head.to_json(orient="records"))
        return json.loads(head.to_json(orient="values"))
    if hasattr(value, "shape") and callable(getattr(value, "tolist", None)):
        if not getattr(value, "shape", ()):
            return None
        return value[:rows].tolist()
    if isinstance(value, (list, tuple)) and value:
        return json.loads(json.dumps(list(value[:rows]), default=str))
    return None


def record_sample(value: object, key: str | None = None, records: bool = False) -> object:
    """Store a request the service can answer: the first rows of the data a model was fit on.

    `nb2prod run` prints it in its curl hint and sends it with `--smoke` (nb2prod.sample).
    Never fails the stage: a value with no rows, or one JSON cannot hold, records nothing.
    """
    try:
        rows = sample_rows(value, records=records)
        if not rows:
            return None
        payload = {key: rows} if key else rows
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError):
        return None
    ctx = _write_context("record the sample request")
    key_path = f"{_stage_prefix(ctx.pipeline, ctx.run_id, ctx.stage)}/{SAMPLE_REQUEST}"
    write_json(open_store(ctx.store), key_path, payload, atomic=True)
    return payload


def read_sample(store: Store, pipeline: str, run_id: str, stages: list[str]) -> object | None:
    """The sample request recorded by the first of `stages` (DAG order) in run `run_id`."""
    for stage in stages:
        payload = read_json(store, f"{_stage_prefix(pipeline, run_id, stage)}/{SAMPLE_REQUEST}",
                            default=None)
        if payload:
            return payload
    return None


# -- promotion ---------------------------------------------------------------------
def promotion_passes(metrics: dict[str, Any], metric: str | None,
                     minimum: float | None) -> tuple[bool, str]:
    """Apply the ``[promotion] METRIC/MIN`` gate; returns (passed, one-line reason).

    ``metrics`` is ``{stage: {name: value}}`` (a run) or flat ``{name: value}``.
    ``METRIC`` may be qualified as ``stage.name`` when several stages record the
    same name; an unqualified name recorded with different values by several
    stages fails rather than guessing which one the user meant.
    """
    if not metric:
        if minimum is not None:
            return False, f"promotion MIN = {minimum:g} is set without a METRIC"
        return True, "no promotion gate"
    found: list[tuple[str, Any]] = []  # (stage or "", value)
    qualified_stage, _, qualified_name = metric.partition(".")
    for key, value in metrics.items():
        if isinstance(value, dict):
            if metric in value:
                found.append((key, value[metric]))
            elif qualified_name and key == qualified_stage and qualified_name in value:
                found.append((key, value[qualified_name]))
        elif key == metric:
            found.append(("", value))
    if not found:
        return False, f"metric '{metric}' was not recorded by any stage"
    numbers_found = [(stage, _metric_value(value)) for stage, value in found]
    if len({value for _, value in numbers_found}) > 1:
        where = ", ".join(f"{stage or '?'}={value}" for stage, value in numbers_found)
        return False, (f"metric '{metric}' recorded by several stages with different values "
                       f"({where}); set METRIC = stage.{metric}")
    stage, value = numbers_found[-1]
    where = f" (stage {stage})" if stage else ""
    if value is None:
        return False, f"metric '{metric}'{where} is not a finite number: {found[-1][1]!r}"
    if minimum is None:
        return True, f"{metric} = {value:g}{where}, no minimum set"
    if value >= minimum:
        return True, f"{metric} = {value:g} >= {minimum:g}{where}"
    return False, f"{metric} = {value:g} < minimum {minimum:g}{where}"


def promote(store: Store | str, pipeline: str, run_id: str, metric: str | None = None,
            minimum: float | None = None) -> tuple[bool, str]:
    """Gate a finished run and, if it passes, point latest.json at it.

    Merges the decision into the run's run.json with the keys the local runner
    uses (``promoted``, ``reason``, ``metrics``; ``status`` defaults to
    ``succeeded``, since promote only runs after every batch stage succeeded) plus
    ``promotion`` details, then writes latest.json last.
    """
    store = open_store(store)
    if not store.list(run_prefix(pipeline, run_id) + "/"):
        raise ArtifactNotFoundError(f"run '{run_id}' of pipeline '{pipeline}' not found in "
                                    f"{store.uri}")
    metrics = read_run_metrics(store, pipeline, run_id)
    passed, reason = promotion_passes(metrics, metric, minimum)
    run_key = f"{run_prefix(pipeline, run_id)}/{RUN_JSON}"
    record = read_json(store, run_key, default=None)
    record = record if isinstance(record, dict) else {}
    record.setdefault("status", "succeeded")
    record.update(run_id=run_id, pipeline=pipeline, metrics=metrics, promoted=passed,
                  reason=reason, promotion={"metric": metric, "min": minimum, "at": _utcnow()})
    write_json(store, run_key, record, atomic=True)
    if passed:
        write_latest(store, pipeline, run_id)
    return passed, reason


# -- run-stage ------------------------------------------------------------------------
def first_line(source: str, limit: int = 60) -> str:
    """A cell's first non-blank line, shortened: what a user recognises the cell by."""
    line = next((text.strip() for text in source.splitlines() if text.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def cell_label(index: int, line: str | None = None) -> str:
    """How messages name a cell: `cell 5 ("model.fit(X, y)")`.

    `index` counts from 0 over all cells, markdown included (nbformat's order); users see
    the number JupyterLab's status bar shows ("Cell 5/9"), which counts the same cells
    from 1, and the first line of the cell's source, which survives cells moving.
    """
    quoted = f" ({json.dumps(line, ensure_ascii=False)})" if line else ""
    return f"cell {index + 1}{quoted}"


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


def _first_line(exc: BaseException) -> str:
    """An exception's first line (its repr when it has no text), for result records."""
    return str(exc).splitlines()[0] if str(exc) else repr(exc)


def _one_line(exc: BaseException) -> str:
    """An exception's whole text on one line (its type when it has none), for stderr."""
    return str(exc).replace("\n", " ") or type(exc).__name__


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
    `nb2prod run` warms one in the runner process, which is idle while its
    stage processes work, and renders each stage's notebook there.  Rendering
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
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # server workers may restore the same file at once


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


def execute_in_workdir(stage_dir: Path, executable: str, out: Path, params: dict,
                       work: Path, render_html: bool = True,
                       kernel: _KernelHead | None = None) -> dict:
    """`execute_notebook` with the working directory laid out before and recorded after."""
    import time

    started = time.time()
    try:
        before = prepare_workdir(work, stage_dir)
    except (ArtifactError, OSError) as exc:  # a missing or corrupt file fails the stage
        return {"status": "failed", "ename": type(exc).__name__, "evalue": _one_line(exc),
                "cell": None, "started": started, "finished": time.time()}
    result = execute_notebook(stage_dir, executable, out, params, render_html, cwd=work,
                              kernel=kernel)
    if result["status"] == "succeeded":
        try:
            result["files"] = record_files(work, before)
        except (ArtifactError, OSError) as exc:
            result.update(status="failed", ename=type(exc).__name__, evalue=_one_line(exc),
                          cell=None)
    return result


def execute_notebook(stage_dir: Path, executable: str, work: Path, params: dict,
                     render_html: bool = True, cwd: Path | None = None,
                     kernel: _KernelHead | None = None) -> dict:
    """Run a stage notebook with papermill into `work`, plus its HTML rendering (nbconvert).

    Shared by in-cluster stages (`run-stage`) and `nb2prod run`'s per-stage
    processes (which leave the HTML to the runner: ``render_html=False``).
    Returns the result record (status, timings, failing cell and exception);
    notebook errors are reported there, never raised.  The kernel runs in `cwd`
    (default: the stage directory) with the stage directory on its import path,
    so `nb2prod_runtime` and the local modules split copied there import.
    `kernel`: one from `start_kernel`, booted ahead (it is shut down here).
    """
    cwd = cwd or stage_dir
    kernel = kernel or start_kernel(stage_dir, cwd)
    try:
        return _execute_with(kernel, stage_dir, executable, work, params, render_html, cwd)
    finally:
        kernel.shutdown()


def start_kernel(stage_dir: Path, cwd: Path | None = None) -> _KernelHead:
    """The stage's kernel, started now in `cwd` with the stage directory importable."""
    cwd = cwd or stage_dir
    if Path(cwd).resolve() != Path(stage_dir).resolve():
        here, path = str(Path(stage_dir).resolve()), os.environ.get("PYTHONPATH")
        if not path or path.split(os.pathsep)[0] != here:
            os.environ["PYTHONPATH"] = os.pathsep.join([here] + ([path] if path else []))
        os.environ["NB2PROD_STAGE_DIR"] = str(Path(stage_dir).resolve())
    return _KernelHead(cwd)


def _hide_slow_format_checker() -> None:
    """Keep jsonschema from importing `rfc3987_syntax` in this (stage) process.

    When that optional package is installed, every ``import jsonschema`` (so
    nbformat's, so papermill's) builds its grammar: ~2 s of CPU, for an IRI
    format check the notebook schema never uses.  Only this process's imports
    are affected; the kernel is a process of its own.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def _execute_with(kernel: _KernelHead, stage_dir: Path, executable: str, work: Path,
                  params: dict, render_html: bool, cwd: Path) -> dict:
    import time

    _hide_slow_format_checker()
    try:
        import papermill
        from papermill.exceptions import PapermillExecutionError
    except ImportError as exc:
        raise ArtifactError(f"papermill is not installed: {exc}") from None
    html = HtmlRenderer() if render_html else None
    work.mkdir(parents=True, exist_ok=True)
    stem = Path(executable).stem
    output = work / f"{stem}.ipynb"
    result: dict[str, Any] = {"status": "succeeded", "started": time.time()}
    for attempt in (1, 2):
        try:
            papermill.execute_notebook(
                str(stage_dir / executable), str(output), parameters=params,
                cwd=str(cwd), kernel_name="python3", progress_bar=False, log_output=True,
                **kernel.take())
        except PapermillExecutionError as exc:
            executed = json.loads(output.read_text()) if output.is_file() else {}
            result.update(status="failed", ename=exc.ename, evalue=str(exc.evalue),
                          stage_cell=exc.cell_index, cell=_source_cell(executed, exc.cell_index),
                          cell_line=_cell_line(executed, exc.cell_index))
        except Exception as exc:  # noqa: BLE001 - kernel died, bad notebook...: report it
            if attempt == 1 and any(m in str(exc) for m in _KERNEL_START_FAILURES):
                # Not the notebook's fault (kernels started at the same moment can race
                # for ports; a loaded machine can be slow): one more kernel, same notebook.
                print(f"nb2prod: the kernel did not start ({exc}); starting another",
                      file=sys.stderr, flush=True)
                continue
            result.update(status="failed", ename=type(exc).__name__, evalue=str(exc), cell=None)
        break
    result["finished"] = time.time()
    kernel.shutdown_soon()
    if html is not None and output.is_file():
        error = html.render(output, work / f"{stem}.html")
        if error:
            result["html_error"] = error
    return result


def run_stage(params: dict | None = None, output_dir: str | os.PathLike[str] | None = None
              ) -> dict:
    """Execute this stage's notebook with papermill and upload what it produced.

    The in-cluster (and any process-per-stage) entry point: the cwd is the stage
    directory, ``NB2PROD_*`` say where results go.  The notebook runs in a fresh
    working directory (``NB2PROD_WORKDIR``, else a temp dir removed afterwards)
    laid out like the notebook's (`prepare_workdir`).  The executed notebook, its
    HTML rendering (when nbconvert is importable) and ``result.json`` (status,
    failing cell, exception) land in ``<store>/<pipeline>/runs/<run>/<stage>/``,
    so a failed pod leaves its evidence in the store, not only in its log.
    Notebook errors are returned in the record, never raised.
    """
    import tempfile

    ctx = _write_context("run the stage")
    stage_dir = _stage_dir()
    executable = _stage_executable(stage_dir, ctx.stage)
    params = _stage_params(os.environ.get("NB2PROD_PARAMS")) if params is None else params
    work = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="nb2prod-stage-"))
    cwd = Path(_env("NB2PROD_WORKDIR") or tempfile.mkdtemp(prefix="nb2prod-work-"))
    try:
        executed = execute_in_workdir(stage_dir, executable, work, params, cwd)
    finally:
        if not _env("NB2PROD_WORKDIR"):
            import shutil

            shutil.rmtree(cwd, ignore_errors=True)
    result: dict[str, Any] = {"stage": ctx.stage, "run_id": ctx.run_id, "pipeline": ctx.pipeline,
                              **executed}
    stem = Path(executable).stem
    files = [work / f"{stem}.ipynb", work / f"{stem}.html"]
    store = open_store(ctx.store)
    prefix = _stage_prefix(ctx.pipeline, ctx.run_id, ctx.stage)
    for path in files:
        if path.is_file():
            store.upload(f"{prefix}/{path.name}", path)
    write_json(store, f"{prefix}/result.json", result, atomic=True)
    return result


def _termination_message(record: dict) -> None:
    """Leave a JSON verdict as the container's termination message (in-cluster runs).

    ``NB2PROD_TERMINATION_LOG`` names the container's terminationMessagePath;
    `nb2prod history` reads the failing stage and reason from there.
    """
    path = os.environ.get("NB2PROD_TERMINATION_LOG")
    if not path:
        return
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps(record, sort_keys=True, default=str)[:4000],
                              encoding="utf-8")


def _failure_reason(result: dict) -> str:
    cell = result.get("cell")
    where = f" in {cell_label(cell, result.get('cell_line'))}" if cell is not None else ""
    evalue = str(result.get("evalue", "")).replace("\n", " ")[:500]
    return f"failed{where}: {result.get('ename')}: {evalue}"


def _on_sigterm(stage: str, timeout: float | None) -> None:
    """SIGTERM (pod deleted, or `timeout` at MAX_COMPLETION_TIME_SECONDS): say why, exit 143."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        reason = (f"exceeded MAX_COMPLETION_TIME_SECONDS ({timeout:g}s)" if timeout
                  else "terminated (SIGTERM)")
        print(f"nb2prod: stage '{stage}' {reason}", file=sys.stderr, flush=True)
        _termination_message({"stage": stage, "status": "failed", "reason": reason})
        os._exit(143)

    signal.signal(signal.SIGTERM, handler)


#: Log lines that say nothing about the stage: papermill's per-cell banners and paths (its
#: cell count is not the notebook's), and jupyter_client's remark on a stopped kernel.
_LOG_NOISE = ("Executing Cell ", "Ending Cell ", "Input Notebook:", "Output Notebook:",
              "Working directory:", "Executing notebook with kernel:",
              "Could not destroy zmq context")


def log_stage_output() -> None:
    """Send each cell's output (papermill logs it: log_output=True) to stdout, the stage log."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logging.getLogger("papermill").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not str(record.getMessage()).startswith(_LOG_NOISE))


def _run_stage_main(args: argparse.Namespace) -> int:
    log_stage_output()
    stage = os.environ.get("NB2PROD_STAGE") or "?"
    _on_sigterm(stage, args.timeout)
    attempts = max(0, args.retries) + 1
    for attempt in range(1, attempts + 1):
        try:
            params = _stage_params(args.params) if args.params is not None else None
            result = run_stage(params, args.output_dir)
        except Exception as exc:  # noqa: BLE001 - one line, no traceback, exit 1
            message = _one_line(exc)
            print(f"nb2prod: error: run-stage: {message}", file=sys.stderr, flush=True)
            _termination_message({"stage": stage, "status": "failed", "attempts": attempt,
                                  "reason": message})
            return 1
        seconds = result["finished"] - result["started"]
        if result["status"] == "succeeded":
            print(f"nb2prod: stage '{result['stage']}' succeeded in {seconds:.1f}s", flush=True)
            _termination_message({"stage": result["stage"], "status": "succeeded",
                                  "attempts": attempt, "seconds": round(seconds, 1)})
            return 0
        reason = _failure_reason(result)
        if attempt < attempts:
            print(f"nb2prod: stage '{result['stage']}' attempt {attempt}/{attempts} {reason}; "
                  "retrying", file=sys.stderr, flush=True)
            continue
        print(f"nb2prod: stage '{result['stage']}' {reason}", file=sys.stderr, flush=True)
        _termination_message({"stage": result["stage"], "status": "failed", "attempts": attempt,
                              "reason": reason, "cell": result.get("cell")})
    return 1


# -- CLI -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point for in-cluster use.

    ``promote``: exit 0 promoted, 3 gate failed, 1 error.  ``run-stage``: exit 0
    when the stage notebook ran to the end, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="nb2prod_runtime.py", description="nb2prod stage runtime commands")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser(
        "promote", help="apply the promotion gate to a run and update latest.json")
    cmd.add_argument("--pipeline", required=True)
    cmd.add_argument("--run-id", required=True)
    cmd.add_argument("--metric", default=None)
    cmd.add_argument("--min", dest="minimum", type=float, default=None)
    cmd.add_argument("--store", default=None,
                     help="store URI (default: NB2PROD_STORE, config.ini, " + DEFAULT_STORE + ")")
    cmd.add_argument("--json", action="store_true",
                     help="also print the verdict as one JSON line (passed, reason, metrics)")
    rec = commands.add_parser(
        "record", help="merge a JSON object into a run's run.json (the roll step's outcome)")
    rec.add_argument("--pipeline", required=True)
    rec.add_argument("--run-id", required=True)
    rec.add_argument("--values", required=True, help="JSON object to merge")
    rec.add_argument("--store", default=None)
    run = commands.add_parser(
        "run-stage", help="execute this stage's notebook (cwd) with papermill and upload "
        "the executed notebook, its HTML and result.json to the store")
    run.add_argument("--params", default=None,
                     help="JSON object of parameter values (default: NB2PROD_PARAMS)")
    run.add_argument("--output-dir", default=None,
                     help="where to keep the executed notebook locally (default: a temp dir)")
    run.add_argument("--retries", type=int, default=0,
                     help="run the notebook again (fresh kernel) up to N times when it fails")
    run.add_argument("--timeout", type=float, default=None,
                     help="the stage's time limit, enforced by the caller (`timeout`): only "
                     "used to explain a SIGTERM")
    args = parser.parse_args(argv)
    if args.command == "run-stage":
        return _run_stage_main(args)
    if args.command == "record":
        try:
            values = json.loads(args.values)
            if not isinstance(values, dict):
                raise TypeError("--values must be a JSON object")
            record_run(args.store or _base_context()[0], args.pipeline, args.run_id, values)
        except Exception as exc:  # noqa: BLE001 - one line, no traceback, exit 1
            message = _one_line(exc)
            print(f"error: record {args.pipeline}/{args.run_id}: {message}", file=sys.stderr)
            return 1
        return 0
    try:
        store = args.store or _base_context()[0]
        passed, reason = promote(store, args.pipeline, args.run_id, args.metric, args.minimum)
    except Exception as exc:  # noqa: BLE001 - any failure: one line, no traceback, exit 1
        message = _one_line(exc)
        print(f"error: promote {args.pipeline}/{args.run_id}: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"passed": False, "reason": f"promote failed: {message}"}))
        return 1
    if args.json:
        metrics = read_run_metrics(store, args.pipeline, args.run_id)
        print(json.dumps({"passed": passed, "reason": reason, "metrics": metrics},
                         sort_keys=True, default=str))
    if passed:
        print(f"promoted run {args.run_id} of {args.pipeline}: {reason}")
        return 0
    print(f"not promoted: run {args.run_id} of {args.pipeline}: {reason}")
    return 3


if __name__ == "__main__":
    sys.exit(main())
