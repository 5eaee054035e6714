"""Artifact stores by URI scheme (`file://`, `s3://`; `register_store` adds more), the
store layout's keys and JSON documents in a store.

Like papermill's I/O handlers: a scheme maps to a factory, so nothing else in the
runtime knows how a store is reached.  boto3 is imported only when an `s3://`
store is opened."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ArtifactError

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
RESULT = "result.json"   # a stage's record in a run (in-cluster stages write it)
LATEST_JSON = "latest.json"
#: Artifact file names that would clobber the stage's own bookkeeping files.
_RESERVED_FILES = {MANIFEST, METRICS}
_TMP_SUFFIX = ".nb2prod-tmp"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


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
        """Temp file, then ``os.replace``: a reader (the panel, `runs` polling a live
        run.json) never sees a half-written file, nor does a killed writer leave one.
        A replace also never writes through a hard link the cache made."""
        self._replace(key, data, durable=False)

    def write_atomic(self, key: str, data: bytes) -> None:
        """As `write_bytes`, with an fsync before the rename (durable across a crash)."""
        self._replace(key, data, durable=True)

    def _replace(self, key: str, data: bytes, durable: bool) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, data, durable=durable)

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


def replace_file(path: Path, data: bytes, *, mode: int = 0o666, durable: bool = False) -> None:
    """Write `path` as a temp file beside it renamed over it: a reader sees the old or
    the new content, never half of it, and a killed writer leaves no torn file (the
    temp file is removed on any error).  `durable`: fsync before the rename.

    The temp file is created with `mode` filtered by the umask (by default 0o666,
    unlike ``mkstemp``'s 0o600, so other pods/users sharing a volume can read it).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
