"""Pod specs shared by Jobs and Deployments: resources, image, hardening, scratch volumes."""

from __future__ import annotations

import copy
import math
import re

from nb2prod.errors import Problem, UserError
from nb2prod.manifests.code import RUNTIME_VOLUME_MOUNT, StageCode, code_volume, runtime_volume
from nb2prod.manifests.names import Obj, stages_account
from nb2prod.manifests.options import Options, store_mount
from nb2prod.manifests.paths import CODE_DIR, DEPS_DIR, STORE_DIR, TMP_DIR, WORK_DIR
from nb2prod.pipeline import Pipeline, StageSpec

DEFAULT_IMAGE = "python:3.11-slim"

#: Every nb2prod container: what PodSecurity `restricted` asks for, and a read-only root.
CONTAINER_SECURITY: Obj = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                           "readOnlyRootFilesystem": True, "runAsNonRoot": True}

_DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def cpu_quantity(cores: float) -> str:
    millis = round(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def resources(stage: StageSpec) -> Obj:
    """Requests and limits from config.ini; a limit below its request is a config error."""
    where = str(stage.directory / "config.ini")
    cpu_req = stage.number("default", "CPU_REQUEST", 0.5)
    mem_req = stage.integer("default", "MEMORY_REQUEST_MB", 500)
    cpu_lim = stage.number("default", "CPU_LIMIT", max(cpu_req, 1.0))
    mem_lim = stage.integer("default", "MEMORY_LIMIT_MB", max(mem_req, 1000))
    gpu = stage.integer("default", "GPU", 0)
    disk_req, disk_lim = ephemeral_storage(stage)
    for key, value in (("CPU_REQUEST", cpu_req), ("MEMORY_REQUEST_MB", mem_req),
                       ("CPU_LIMIT", cpu_lim), ("MEMORY_LIMIT_MB", mem_lim)):
        if value <= 0 or not math.isfinite(value):
            raise UserError(Problem(f"[default] {key} = {value:g} must be positive", file=where))
    if cpu_lim < cpu_req or mem_lim < mem_req:
        raise UserError(Problem("[default] CPU_LIMIT / MEMORY_LIMIT_MB must not be below "
                                "CPU_REQUEST / MEMORY_REQUEST_MB", file=where))
    if gpu < 0:
        raise UserError(Problem(f"[default] GPU = {gpu} must not be negative", file=where))
    requests = {"cpu": cpu_quantity(cpu_req), "memory": f"{mem_req}Mi",
                "ephemeral-storage": f"{disk_req}Mi"}
    limits = {"cpu": cpu_quantity(cpu_lim), "memory": f"{mem_lim}Mi",
              "ephemeral-storage": f"{disk_lim}Mi"}
    if gpu > 0:
        limits["nvidia.com/gpu"] = str(gpu)
    return {"requests": requests, "limits": limits}


def ephemeral_storage(stage: StageSpec | None) -> tuple[int, int]:
    """`[default] EPHEMERAL_STORAGE_MB` (request, 1024) and `EPHEMERAL_STORAGE_LIMIT_MB` (8192).

    The limit also caps each scratch emptyDir (work dir, /tmp, pip's target): a stage
    that fills the node's disk is evicted alone instead of taking the node down.
    """
    if stage is None:
        return 256, 1024
    request = stage.integer("default", "EPHEMERAL_STORAGE_MB", 1024)
    limit = stage.integer("default", "EPHEMERAL_STORAGE_LIMIT_MB", max(request, 8192))
    if request <= 0 or limit < request:
        raise UserError(Problem("[default] EPHEMERAL_STORAGE_MB must be positive and "
                                "EPHEMERAL_STORAGE_LIMIT_MB not below it",
                                file=str(stage.directory / "config.ini")))
    return request, limit


def image_for(pipeline: Pipeline, stage: StageSpec | None, opts: Options) -> str:
    """--image, else the stage's IMAGE, else [kubernetes] IMAGE, else python:3.11-slim.

    A reference pinned by digest (`repo@sha256:...`) must carry a whole sha256.
    """
    image = (opts.image or (stage.value("default", "IMAGE") if stage else "")
             or pipeline.value("kubernetes", "IMAGE") or DEFAULT_IMAGE)
    if "@" in image and not _DIGEST.match(image):
        raise UserError(Problem(f"image {image!r}: a digest reference is REPO@sha256:<64 hex "
                                "digits>", file=str(pipeline.root / "nb2prod.ini")))
    return image


def pull_policy(pipeline: Pipeline, image: str) -> str:
    """`[kubernetes] IMAGE_PULL_POLICY`, else IfNotPresent for a digest or a fixed tag and
    Always for `:latest` or no tag (a moving reference: each pod gets the current image)."""
    wanted = pipeline.value("kubernetes", "IMAGE_PULL_POLICY")
    if wanted:
        if wanted not in _PULL_POLICIES:
            raise UserError(Problem(f"[kubernetes] IMAGE_PULL_POLICY = {wanted!r}: expected "
                                    f"{', '.join(_PULL_POLICIES)}",
                                    file=str(pipeline.root / "nb2prod.ini")))
        return wanted
    if "@" in image:
        return "IfNotPresent"
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def harden(pipeline: Pipeline, stage: StageSpec | None, opts: Options, container: Obj,
           mounts: list[Obj]) -> Obj:
    """A container with image, working dir, mounts and the restricted security context."""
    image = image_for(pipeline, stage, opts)
    return {
        **container,
        "image": image,
        "imagePullPolicy": pull_policy(pipeline, image),
        "workingDir": WORK_DIR,
        # A failed container's status then carries its log tail: why it failed is
        # visible in `kubectl describe` and to nb2prod without fetching logs.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }


def pod_base(account: str, restart: str) -> Obj:
    """Pod-level settings every nb2prod pod shares (non-root, no API token, no service links)."""
    return {
        "serviceAccountName": account,
        "automountServiceAccountToken": False,  # stage code needs no API access
        "enableServiceLinks": False,            # no env vars for every Service in the namespace
        "restartPolicy": restart,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def scratch_mounts(opts: Options, sub_path: str | None = None) -> list[Obj]:
    """Writable work dir, /tmp, pip's target dir and the pvc:// store of a container.

    `sub_path` gives each container of a multi-container pod its own part of the
    pod's emptyDirs (stages of one run must not see each other's files).
    """
    extra = {"subPath": sub_path} if sub_path else {}
    mounts: list[Obj] = [{"name": "work", "mountPath": WORK_DIR, **extra},
                         {"name": "tmp", "mountPath": TMP_DIR, **extra}]
    if not opts.prebuilt:
        mounts.append({"name": "deps", "mountPath": DEPS_DIR, **extra})
    if store_mount(opts.store).claim:
        mounts.append({"name": "store", "mountPath": STORE_DIR})
    return mounts


def scratch_volumes(opts: Options, size_mb: int) -> list[Obj]:
    """The emptyDirs (and pvc:// claim) behind :func:`scratch_mounts`, each capped at `size_mb`."""
    names = ["work", "tmp"] + ([] if opts.prebuilt else ["deps"])
    volumes: list[Obj] = [{"name": n, "emptyDir": {"sizeLimit": f"{size_mb}Mi"}} for n in names]
    claim = store_mount(opts.store).claim
    if claim:
        volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": claim}})
    return volumes


def pod_spec(pipeline: Pipeline, code: StageCode, opts: Options, *,
             stage: StageSpec | None, container: Obj, restart: str) -> Obj:
    """Pod spec shared by Jobs and Deployments: hardening, volumes, service account."""
    mounts = [{"name": "code", "mountPath": CODE_DIR, "readOnly": True}, RUNTIME_VOLUME_MOUNT,
              *scratch_mounts(opts)]
    return {
        **pod_base(stages_account(pipeline), restart),
        "containers": [harden(pipeline, stage, opts, container, mounts)],
        "volumes": [code_volume("code", pipeline, code), runtime_volume(pipeline),
                    *scratch_volumes(opts, ephemeral_storage(stage)[1])],
    }
