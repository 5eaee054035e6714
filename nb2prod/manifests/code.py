"""Stage code and the runtime as immutable, content-named ConfigMaps, and their volumes.

A changed file means a new ConfigMap (and a new pod template); an unchanged one
is reused, so re-deploying changes nothing but the run.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from nb2prod.errors import Problem, UserError
from nb2prod.manifests.names import (
    CODE_HASH,
    CONFIGMAP_KEY,
    Obj,
    fit_name,
    k8s_name,
    labels,
    meta,
    short_hash,
)
from nb2prod.manifests.options import Options
from nb2prod.manifests.paths import RUNTIME_MOUNT
from nb2prod.pipeline import Pipeline, StageSpec

#: ConfigMaps (data + binaryData, raw bytes) are limited to 1 MiB by the apiserver.
CONFIGMAP_LIMIT = 1024 * 1024

_SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints", ".nb2prod", ".git"}


@dataclass(frozen=True)
class StageCode:
    """The files of a stage directory, ready to become its ConfigMap."""

    stage: str
    files: dict[str, bytes]   # relative posix path -> content
    digest: str               # sha256 over paths and contents

    @property
    def short(self) -> str:
        return self.digest[:10]


def stage_code(stage: StageSpec, extra: dict[str, bytes] | None = None) -> StageCode:
    """Read every file of the stage directory (hidden files and caches left out), plus `extra`.

    Raises UserError when the files exceed what one ConfigMap can hold: the user
    must move large data to the artifact store instead.
    """
    files: dict[str, bytes] = {}
    root = stage.directory
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part in _SKIPPED_DIRS for part in rel.parts):
            continue
        if not path.is_file() or path.suffix == ".pyc":
            continue
        files[rel.as_posix()] = path.read_bytes()
    files.update(extra or {})
    size = sum(len(v) for v in files.values())
    if size > CONFIGMAP_LIMIT:
        biggest = max(files, key=lambda k: len(files[k]))
        raise UserError(Problem(
            f"stage '{stage.name}' has {size / 2**20:.2f} MiB of files, more than a ConfigMap "
            f"holds (1 MiB); the largest is {biggest} ({len(files[biggest]) / 2**10:.0f} KiB): "
            "keep data in the artifact store or bake it into --image", file=str(root)))
    return StageCode(stage.name, files, _digest(files))


def _digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for rel, data in files.items():
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()

#: `StageCode.stage` of the runtime: not a stage name (those have no `.`).
RUNTIME = "nb2prod.runtime"


def runtime_code(pipeline: Pipeline) -> StageCode:
    """The pipeline's `nb2prod_runtime/`: one ConfigMap, mounted into every pod."""
    from nb2prod.runtime_copy import pipeline_runtime

    files = pipeline_runtime(pipeline.root)
    if not files:
        raise UserError(Problem("no nb2prod_runtime/ here: the pipeline was made by an older "
                                "nb2prod; run `nb2prod split --force` to upgrade it",
                                file=str(pipeline.root)))
    return StageCode(RUNTIME, files, _digest(files))


def all_stage_code(pipeline: Pipeline, opts: Options) -> dict[str, StageCode]:
    """Every stage's code, each with its files plan (`nb2prod_files.json`: input files by
    sha256 and the stages whose written files it restores; DESIGN.md "Files and local code")."""
    from nb2prod.workdir import FILES_PLAN, files_plan

    return {name: stage_code(stage, {FILES_PLAN: files_plan(pipeline, name, opts.files.get(name))})
            for name, stage in pipeline.stages.items()}


def _configmap_key(rel: str) -> str:
    key = rel.replace("/", "__")
    return key if CONFIGMAP_KEY.match(key) else "f-" + short_hash(rel, length=16)


def code_configmap_name(pipeline: Pipeline, code: StageCode) -> str:
    what = "nb2prod-runtime" if code.stage == RUNTIME else k8s_name(code.stage)
    return fit_name(f"{k8s_name(pipeline.name)}-{what}-{code.short}", 253)


def code_configmap(pipeline: Pipeline, code: StageCode, namespace: str) -> Obj:
    """Immutable ConfigMap: text files in `data`, others in `binaryData` (base64)."""
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for rel, content in code.files.items():
        key = _configmap_key(rel)
        try:
            data[key] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(content).decode()
    obj: Obj = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": meta(code_configmap_name(pipeline, code), namespace,
                         labels(pipeline, "runtime") if code.stage == RUNTIME else
                         labels(pipeline, "code", code.stage), {CODE_HASH: code.digest}),
        "immutable": True,
        "data": data,
    }
    if binary:
        obj["binaryData"] = binary
    return obj


def _code_items(code: StageCode) -> list[Obj] | None:
    """ConfigMap volume items restoring sub-directories (keys cannot contain `/`)."""
    if all(_configmap_key(rel) == rel for rel in code.files):
        return None
    return [{"key": _configmap_key(rel), "path": rel} for rel in code.files]


def code_volume(name: str, pipeline: Pipeline, code: StageCode) -> Obj:
    """The (read-only) ConfigMap volume holding a stage's files."""
    volume: Obj = {"name": name, "configMap": {"name": code_configmap_name(pipeline, code),
                                               "defaultMode": 0o444}}
    items = _code_items(code)
    if items:
        volume["configMap"]["items"] = items
    return volume

RUNTIME_VOLUME_MOUNT: Obj = {"name": "runtime", "mountPath": RUNTIME_MOUNT, "readOnly": True}


def runtime_volume(pipeline: Pipeline) -> Obj:
    """The runtime ConfigMap as a volume (items restore the `nb2prod_runtime/` directory)."""
    return code_volume("runtime", pipeline, runtime_code(pipeline))
