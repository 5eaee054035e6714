"""`load` and `save`: the calls generated load/save cells make, verified by sha256
against the producing stage's manifest."""

from __future__ import annotations

from typing import Any

from .errors import ArtifactError, ArtifactIntegrityError, ArtifactNotFoundError
from .runs import _utcnow
from .serializers import _deserialize, _serialize, _unsaveable, _versions, _warn_versions
from .signing import _sha256, read_manifest, write_manifest
from .stage_env import Context, _base_context, _require, _stage_dir, context
from .stores import _ARTIFACT_NAME, _RESERVED_FILES, MANIFEST, _stage_prefix, open_store


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
