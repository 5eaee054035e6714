"""A pipeline directory as Kubernetes objects (plain dicts), for `deploy` and `render`.

Pure functions only: no API calls, no environment reads.  `deploy` and `render`
must produce the same objects from the same inputs (render output is what a
GitOps user applies instead of `deploy`), and keeping the construction free of
I/O lets the unit tests check every field and validate every object against the
Kubernetes schemas without a cluster.

Shape of a deployment (DESIGN.md "Kubernetes"):

* stage code ships as one immutable ConfigMap per stage, named by the hash of
  the stage directory, so a changed file means a new ConfigMap and an unchanged
  one is reused (re-deploying changes nothing but the run);
* batch stages are Jobs (one per run and stage), service stages Deployments +
  ClusterIP Services (+ Ingress), all pods non-root with a read-only root
  filesystem, emptyDirs for what must be writable;
* credentials only ever appear as `secretKeyRef` references.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from nb2prod import serve
from nb2prod.errors import Problem, UserError
from nb2prod.pipeline import Pipeline, StageSpec

Obj = dict[str, Any]

DEFAULT_IMAGE = "python:3.11-slim"
#: ConfigMaps (data + binaryData, raw bytes) are limited to 1 MiB by the apiserver.
CONFIGMAP_LIMIT = 1024 * 1024
#: Finished Jobs (and their pods, i.e. their logs) are kept this long for `nb2prod logs`.
JOB_TTL_SECONDS = 7 * 24 * 3600
#: gunicorn's drain time after SIGTERM (the local server's); the pod's grace period exceeds it.
GRACEFUL_TIMEOUT = serve.GRACEFUL_TIMEOUT
#: Exit code of `python -m nb2prod_runtime promote` when the gate is not passed.
PROMOTE_NOT_PASSED = 3

CODE_DIR = "/nb2prod/code"      # the ConfigMap, read-only
RUNTIME_MOUNT = "/nb2prod/runtime"  # the pipeline's runtime ConfigMap: nb2prod_runtime/
WORK_DIR = "/nb2prod/work"      # writable copy the stage runs in
DEPS_DIR = "/nb2prod/deps"      # pip --target, on PYTHONPATH
STORE_DIR = "/nb2prod/store"    # a pvc:// store's claim
TMP_DIR = "/tmp"

RUN_ID_LABEL = "nb2prod.io/run-id"
STAGE_LABEL = "nb2prod.io/stage"
CODE_HASH = "nb2prod.io/code-hash"
MODEL_RUN_ID = "nb2prod.io/model-run-id"
PREVIOUS_TEMPLATE = "nb2prod.io/previous-template"
AFTER = "nb2prod.io/after"
PROMOTE = "promote"
RECORD = "record"   # component of the Job that notes a roll-out's outcome in run.json
PROMOTE_RESOURCES: Obj = {
    "requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "256Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "1Gi"}}
#: Marker of a finished pip install in the deps emptyDir (a restarted container skips it).
INSTALLED_MARKER = f"{DEPS_DIR}/.nb2prod-installed"
#: Where the pip log goes; its first network error is what the container reports.
PIP_LOG = f"{TMP_DIR}/nb2prod-pip.log"
#: Causes worth naming when pip fails (what pip prints when the index is unreachable).
PIP_NETWORK_ERRORS = ("Failed to establish a new connection: [^')\"]*", "ProxyError\\([^)]*",
                      "Cannot connect to proxy", "Temporary failure in name resolution",
                      "Name or service not known", "Network is unreachable", "Read timed out",
                      "CERTIFICATE_VERIFY_FAILED", "Connection refused")
#: Every nb2prod container: what PodSecurity `restricted` asks for, and a read-only root.
CONTAINER_SECURITY: Obj = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                           "readOnlyRootFilesystem": True, "runAsNonRoot": True}
PIP_FAILED = ("nb2prod: pip could not install the requirements ($why): without --image the "
              "container pip-installs them from PyPI at start; where pods cannot reach PyPI, "
              "deploy with --image IMAGE that has them (README: building an image)")
NAMESPACE_POD_SECURITY = {f"pod-security.kubernetes.io/{mode}": "restricted"
                          for mode in ("enforce", "audit", "warn")}
_DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")

_SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints", ".nb2prod", ".git"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# -- names and labels ---------------------------------------------------------------------
def k8s_name(name: str) -> str:
    """A stage or pipeline name as used in object names: `_` is not allowed there."""
    return name.replace("_", "-").lower()


def _short_hash(*parts: str, length: int = 8) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def _fit(name: str, limit: int = 63) -> str:
    """`name` if it is a valid DNS label within `limit`, else a truncated one plus a hash.

    Truncating alone could make two long stage names collide; the hash keeps them apart.
    """
    if len(name) <= limit:
        return name
    suffix = _short_hash(name, length=6)
    return f"{name[:limit - 7].rstrip('-')}-{suffix}"


def check_pipeline_name(pipeline: Pipeline) -> str:
    """The pipeline name if usable in object names (DNS-1035 label: Services need a letter first)."""
    name = k8s_name(pipeline.name)
    if not _DNS_LABEL.match(name) or not name[0].isalpha() or len(name) > 40:
        raise UserError(Problem(
            f"[project] NAME = {pipeline.name!r} cannot name Kubernetes objects: use lowercase "
            "letters, digits and '-', starting with a letter, at most 40 characters",
            file=str(pipeline.root / "nb2prod.ini")))
    return name


def service_name(pipeline: Pipeline, stage: str) -> str:
    """Deployment and Service name of a service stage: `<pipeline>-<stage>`."""
    return _fit(f"{k8s_name(pipeline.name)}-{k8s_name(stage)}")


def job_name(pipeline: Pipeline, stage: str, run_id: str) -> str:
    """Unique per run and stage, at most 63 characters (the Job controller's pod label limit)."""
    head = f"{k8s_name(pipeline.name)[:20].rstrip('-')}-{k8s_name(stage)[:20].rstrip('-')}"
    return f"{head}-{_short_hash(run_id, stage)}"


def promote_job_name(pipeline: Pipeline, run_id: str) -> str:
    # The extra part keeps it distinct from the Job of a stage that is itself named "promote".
    return f"{k8s_name(pipeline.name)[:20].rstrip('-')}-promote-{_short_hash(run_id, '', PROMOTE)}"


def stages_account(pipeline: Pipeline) -> str:
    return f"{k8s_name(pipeline.name)}-stages"


def roller_account(pipeline: Pipeline) -> str:
    return f"{k8s_name(pipeline.name)}-roller"


def labels(pipeline: Pipeline, component: str, stage: str | None = None) -> dict[str, str]:
    """The `app.kubernetes.io/*` labels every object carries (`delete` selects on them)."""
    found = {
        "app.kubernetes.io/name": pipeline.name,
        "app.kubernetes.io/instance": pipeline.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "nb2prod",
        "app.kubernetes.io/managed-by": "nb2prod",
    }
    if stage is not None:
        found[STAGE_LABEL] = stage
    return found


def selector(pipeline: Pipeline) -> str:
    """Label selector of every object of this pipeline."""
    return f"app.kubernetes.io/managed-by=nb2prod,app.kubernetes.io/instance={pipeline.name}"


def _meta(name: str, namespace: str, lbls: dict[str, str],
          annotations: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(lbls)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# -- options ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreMount:
    """How pods reach the artifact store: the in-pod URI plus volumes for `pvc://`."""

    uri: str
    claim: str | None = None


def store_mount(uri: str) -> StoreMount:
    """`s3://` as given; `pvc://CLAIM/path` mounted at /nb2prod/store; `file://` refused.

    A `file://` path names a directory on the deploying machine, which no pod can
    see; refusing it beats Jobs that "succeed" into an emptyDir.
    """
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower() if sep else "file"
    if scheme == "file":
        raise UserError(Problem(
            f"artifact store {uri} is a local directory that pods cannot reach; deploy with "
            "--store s3://bucket/prefix or pvc://CLAIM/path (or set [artifacts] STORE)"))
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        if not _DNS_LABEL.match(claim):
            raise UserError(Problem(f"artifact store {uri}: expected pvc://CLAIM/path with a "
                                    "valid PersistentVolumeClaim name"))
        path = path.strip("/")
        return StoreMount(f"file://{STORE_DIR}" + (f"/{path}" if path else ""), claim)
    if scheme == "s3":
        if not rest.split("/")[0]:
            raise UserError(Problem(f"artifact store {uri}: expected s3://bucket/prefix"))
        return StoreMount(uri)
    raise UserError(Problem(f"artifact store {uri}: deploy supports s3:// and pvc:// stores"))


@dataclass(frozen=True)
class Options:
    """Everything about one deploy that is not in the pipeline directory."""

    namespace: str
    store: str
    run_id: str
    image: str | None = None           # --image: dependencies preinstalled
    params: dict[str, Any] = field(default_factory=dict)
    endpoint_url: str | None = None    # AWS_ENDPOINT_URL for S3-compatible stores
    #: stage -> {relative path: {sha256, bytes}}: input files its pods fetch from the store
    files: dict[str, dict[str, dict]] = field(default_factory=dict)
    boto3_requirement: str = "boto3"   # added to pip installs when the store is s3://

    @property
    def prebuilt(self) -> bool:
        return bool(self.image)


def default_boto3_requirement() -> str:
    """boto3 pinned to the deploying environment's version (what the store was tested with)."""
    try:
        return f"boto3=={metadata.version('boto3')}"
    except metadata.PackageNotFoundError:
        return "boto3"


# -- code ConfigMaps --------------------------------------------------------------------------
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
    return key if _CONFIGMAP_KEY.match(key) else "f-" + _short_hash(rel, length=16)


def code_configmap_name(pipeline: Pipeline, code: StageCode) -> str:
    what = "nb2prod-runtime" if code.stage == RUNTIME else k8s_name(code.stage)
    return _fit(f"{k8s_name(pipeline.name)}-{what}-{code.short}", 253)


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
        "metadata": _meta(code_configmap_name(pipeline, code), namespace,
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


# -- pods -------------------------------------------------------------------------------------
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


def store_secret(env: str) -> bool:
    """Credentials every pod that reads the store needs (boto3's AWS_*, the signing key)."""
    return env.startswith("AWS_") or env == "NB2PROD_SIGNING_KEY"


#: The variable the stage runtime reads its manifest signing key from.
SIGNING_KEY_ENV = "NB2PROD_SIGNING_KEY"


def signing_secret(pipeline: Pipeline) -> tuple[str, str] | None:
    """`[artifacts] SIGNING_SECRET = name[:key]`: the Secret holding the manifest key.

    Every stage pod (batch and service) gets it as NB2PROD_SIGNING_KEY, so in-cluster
    runs sign what they save and services refuse unsigned or tampered manifests; the
    promote-and-roll step reads no artifacts and does not get it.
    """
    raw = pipeline.value("artifacts", "SIGNING_SECRET")
    if not raw:
        return None
    name, _, key = raw.partition(":")
    name, key = name.strip(), key.strip() or SIGNING_KEY_ENV
    if not _DNS_SUBDOMAIN.match(name) or not _CONFIGMAP_KEY.match(key):
        raise UserError(Problem(f"[artifacts] SIGNING_SECRET = {raw!r} is not a Secret name "
                                "(optionally NAME:KEY)", file=str(pipeline.root / "nb2prod.ini")))
    return name, key


def _secret_env(pipeline: Pipeline, stage: StageSpec | None) -> list[Obj]:
    """The stage's own `[secrets]`; pipeline-wide ones for batch stages and the promotion
    step, and for a service only the store's credentials (a service stage lists any
    other Secret it needs in its own config.ini)."""
    refs = {env: ref for env, ref in pipeline.secrets.items()
            if stage is None or stage.type == "batch" or store_secret(env)}
    if stage is not None:
        refs.update(stage.secrets)
        signing = signing_secret(pipeline)
        if signing is not None:
            refs[SIGNING_KEY_ENV] = signing
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
            for env, (name, key) in sorted(refs.items())]


def pod_env(pipeline: Pipeline, stage_name: str, opts: Options, extra: dict[str, str],
            stage: StageSpec | None) -> list[Obj]:
    """Plain settings first, then every `[secrets]` entry as a secretKeyRef (never a value)."""
    mount = store_mount(opts.store)
    values = {
        "NB2PROD_STORE": mount.uri,
        "NB2PROD_PIPELINE": pipeline.name,
        "NB2PROD_STAGE": stage_name,
        "HOME": TMP_DIR,
        # uid 1000 has no passwd entry in python:*-slim: getpass.getuser() needs USER.
        "USER": "nb2prod",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        **extra,
    }
    if not opts.prebuilt:
        values["PYTHONPATH"] = DEPS_DIR
    if opts.endpoint_url:
        values["AWS_ENDPOINT_URL"] = opts.endpoint_url
    env = [{"name": k, "value": v} for k, v in values.items()]
    plain = set(values)
    for item in _secret_env(pipeline, stage):
        if item["name"] in plain:
            raise UserError(Problem(f"[secrets] {item['name']} clashes with a variable nb2prod "
                                    "sets itself", file=str(pipeline.root / "nb2prod.ini")))
        env.append(item)
    return env


def startup_script(final: str, opts: Options, *, install: list[str] | None = None,
                   requirements: bool = True) -> str:
    """What the container runs: copy the code to a writable dir, install, exec `final`.

    The ConfigMap mounts are read-only (and full of `..data` symlinks), so the stage
    runs from a copy of its code with the pipeline's `nb2prod_runtime/` beside it.
    A container restarted inside its pod (liveness kill, OOM, node
    reboot) finds the emptyDirs as its last run left them, copies included, which are
    read-only (0444, like their ConfigMap files): it empties the work dir first (its
    own files, in directories it may make writable), and a
    finished pip install is not repeated.  Without --image the base image has none of
    the stage's dependencies: pip installs requirements.txt into an emptyDir on
    PYTHONPATH (the root filesystem is read-only and the user is not root); when that
    fails, the last line names pip's first network error and the way out (--image).
    """
    lines = ["set -eu",
             # (not the mount point itself: root owns that, and uid 1000 may not chmod it)
             f"find {WORK_DIR} -mindepth 1 -type d -exec chmod u+w {{}} +",
             f"find {WORK_DIR} -mindepth 1 -delete",
             f"cp -rL {CODE_DIR}/* {RUNTIME_MOUNT}/* {WORK_DIR}/", f"cd {WORK_DIR}"]
    if not opts.prebuilt and (requirements or install):
        args = ["python", "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                "--no-warn-script-location", "--quiet", "--target", DEPS_DIR]
        if requirements:
            args += ["-r", "requirements.txt"]
        args += install or []
        causes = shlex.quote("|".join(PIP_NETWORK_ERRORS))
        lines += [
            f"if [ ! -f {INSTALLED_MARKER} ]; then",
            f"  {' '.join(shlex.quote(a) for a in args)} >{PIP_LOG} 2>&1 || {{",
            f"    cat {PIP_LOG}",
            f"    why=$(grep -m1 -oE {causes} {PIP_LOG} || tail -n1 {PIP_LOG})",
            f'    echo "{PIP_FAILED}" >&2',
            "    exit 1",
            "  }",
            f"  touch {INSTALLED_MARKER}",
            "fi"]
    lines.append(f"exec {final}")
    return "\n".join(lines) + "\n"


def _extra_installs(opts: Options) -> list[str]:
    return [opts.boto3_requirement] if opts.store.lower().startswith("s3://") else []


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


# -- batch ------------------------------------------------------------------------------------
def batch_limits(stage: StageSpec) -> tuple[int, int]:
    """`[batch] RETRIES` and `MAX_COMPLETION_TIME_SECONDS`, checked."""
    retries = stage.integer("batch", "RETRIES", 2)
    deadline = stage.integer("batch", "MAX_COMPLETION_TIME_SECONDS", 1800)
    where = str(stage.directory / "config.ini")
    if retries < 0:
        raise UserError(Problem(f"[batch] RETRIES = {retries} must not be negative", file=where))
    if deadline <= 0:
        raise UserError(Problem(f"[batch] MAX_COMPLETION_TIME_SECONDS = {deadline} must be "
                                "positive", file=where))
    return retries, deadline


def batch_job(pipeline: Pipeline, stage: StageSpec, code: StageCode, opts: Options) -> Obj:
    """The Job running one batch stage for `opts.run_id`."""
    name = job_name(pipeline, stage.name, opts.run_id)
    lbls = {**labels(pipeline, stage.name, stage.name), RUN_ID_LABEL: opts.run_id}
    after = ",".join(p for p in pipeline.predecessors(stage.name)
                     if pipeline.stages[p].type == "batch")
    annotations = {CODE_HASH: code.digest, **({AFTER: after} if after else {})}
    env = pod_env(pipeline, stage.name, opts, {
        "NB2PROD_RUN_ID": opts.run_id,
        "NB2PROD_PARAMS": json.dumps(opts.params, sort_keys=True),
    }, stage)
    script = startup_script("python -m nb2prod_runtime run-stage", opts,
                            install=_extra_installs(opts))
    container = {"name": "stage", "command": ["sh", "-c", script], "env": env,
                 "resources": resources(stage)}
    spec = pod_spec(pipeline, code, opts, stage=stage,
                    container=container, restart="Never")
    retries, deadline = batch_limits(stage)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(name, opts.namespace, lbls, annotations),
        "spec": {
            "backoffLimit": retries,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {"metadata": {"labels": lbls, "annotations": {CODE_HASH: code.digest}},
                         "spec": spec},
        },
    }


def promotion_args(pipeline: Pipeline) -> list[str]:
    """`--metric M --min X` for the runtime's promote command, from `[promotion]`."""
    args: list[str] = []
    metric = pipeline.value("promotion", "METRIC")
    minimum = pipeline.value("promotion", "MIN")
    if metric:
        args += ["--metric", metric]
    if minimum:
        try:
            float(minimum)
        except ValueError:
            raise UserError(Problem(f"[promotion] MIN = {minimum!r} is not a number",
                                    file=str(pipeline.root / "nb2prod.ini"))) from None
        args += ["--min", minimum]
    return args


def promote_job(pipeline: Pipeline, code: StageCode, opts: Options) -> Obj:
    """The last Job of a run: apply `[promotion]` in-cluster and move latest.json.

    It runs where the store is reachable with the stages' credentials, so the
    deploying machine needs no store access.  Exit code 3 means "gate not
    passed"; the runner reads it from the pod and stops there.  (A podFailurePolicy
    could fail the Job on exit 3 without a retry, but the 1.28 schema rejects an
    onExitCodes-only rule, and promote is idempotent, so one retry is harmless.)
    """
    return _runtime_job(pipeline, code, opts, PROMOTE, promote_job_name(pipeline, opts.run_id),
                        ["promote", *promotion_args(pipeline)], {AFTER: ",".join(pipeline.batch)})


def record_job(pipeline: Pipeline, code: StageCode, opts: Options, values: Obj) -> Obj:
    """A Job that merges `values` (the roll-out's outcome) into the run's run.json.

    The store keeps what the cluster forgets, and only pods can reach it with the
    stages' credentials (a pvc:// claim, or S3 credentials that live in a Secret).
    """
    name = f"{k8s_name(pipeline.name)[:20].rstrip('-')}-record-{_short_hash(opts.run_id, RECORD)}"
    job = _runtime_job(pipeline, code, opts, RECORD, name,
                       ["record", "--values", json.dumps(values, sort_keys=True, default=str)])
    job["spec"]["ttlSecondsAfterFinished"] = 3600
    return job


def _runtime_job(pipeline: Pipeline, code: StageCode, opts: Options, component: str, name: str,
                 command: list[str], annotations: dict[str, str] | None = None) -> Obj:
    """A Job running `python -m nb2prod_runtime COMMAND --pipeline P --run-id R` from `code`."""
    args = ["python", "-m", "nb2prod_runtime", command[0], "--pipeline", pipeline.name,
            "--run-id", opts.run_id, *command[1:]]
    final = " ".join(shlex.quote(a) for a in args)
    script = startup_script(final, opts, install=_extra_installs(opts), requirements=False)
    lbls = {**labels(pipeline, component), RUN_ID_LABEL: opts.run_id}
    env = pod_env(pipeline, code.stage, opts, {"NB2PROD_RUN_ID": opts.run_id}, None)
    container = {"name": component, "command": ["sh", "-c", script], "env": env,
                 "resources": PROMOTE_RESOURCES}
    spec = pod_spec(pipeline, code, opts, stage=None,
                    container=container, restart="Never")
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(name, opts.namespace, lbls, annotations),
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": 900,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {"metadata": {"labels": lbls}, "spec": spec},
        },
    }


# -- services ---------------------------------------------------------------------------------
def _port(stage: StageSpec) -> int:
    port = stage.integer("service", "PORT", 8080)
    if not 1024 <= port <= 65535:
        raise UserError(Problem(f"[service] PORT = {port}: use 1024-65535 (pods run as non-root)",
                                file=str(stage.directory / "config.ini")))
    return port


def route(stage: StageSpec) -> str:
    value = stage.value("service", "ROUTE", "/predict") or "/predict"
    return value if value.startswith("/") else "/" + value


def deployment(pipeline: Pipeline, stage: StageSpec, code: StageCode, opts: Options,
               model_run_id: str) -> Obj:
    """Deployment serving `model_run_id` with gunicorn; rolling update that never drops capacity."""
    name = service_name(pipeline, stage.name)
    port = _port(stage)
    workers = stage.integer("service", "WORKERS", 2)
    replicas = stage.integer("service", "REPLICAS", 2)
    startup = stage.integer("service", "MAX_STARTUP_TIME_SECONDS", 120)
    where = str(stage.directory / "config.ini")
    if workers < 1 or replicas < 0 or startup < 1:
        raise UserError(Problem("[service] WORKERS and MAX_STARTUP_TIME_SECONDS must be >= 1, "
                                "REPLICAS >= 0", file=where))
    threads = stage.integer("service", "THREADS", serve.THREADS)  # as `nb2prod run` serves
    if threads < 1:
        raise UserError(Problem("[service] THREADS must be >= 1", file=where))
    # The settings of `nb2prod run` (gthread: a slow or stuck client holds one thread, not
    # the worker, so probes and other clients are still answered), bound to every address.
    server = serve.gunicorn_options(port, workers, "0.0.0.0", threads=threads,
                                    version=_pinned(code, "gunicorn"), shm=True)
    final = " ".join(["python -m gunicorn --chdir", WORK_DIR, *map(shlex.quote, server), "app:app"])
    script = startup_script(final, opts, install=_extra_installs(opts))
    env = pod_env(pipeline, stage.name, opts, {"MODEL_RUN_ID": model_run_id,
                                               "NB2PROD_WORKERS": str(workers)}, stage)
    container = {
        "name": "serve",
        "command": ["sh", "-c", script],
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": resources(stage),
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"},
                           "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3},
        # A TCP check of gunicorn's listening socket (held by the master): a worker busy
        # with a long predict is not "dead" (gunicorn's own --timeout handles hung
        # workers).  Generous delay: without --image the container pip-installs first.
        "livenessProbe": {"tcpSocket": {"port": "http"},
                          "initialDelaySeconds": startup, "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 3},
    }
    select = {"app.kubernetes.io/instance": pipeline.name,
              "app.kubernetes.io/component": stage.name}
    lbls = labels(pipeline, stage.name, stage.name)
    spec = pod_spec(pipeline, code, opts, stage=stage,
                    container=container, restart="Always")
    spec["terminationGracePeriodSeconds"] = GRACEFUL_TIMEOUT + 10
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(name, opts.namespace, lbls),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": select},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "progressDeadlineSeconds": startup,
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": lbls,
                             "annotations": {MODEL_RUN_ID: model_run_id, CODE_HASH: code.digest}},
                "spec": spec,
            },
        },
    }


def _pinned(code: StageCode, distribution: str) -> tuple[int, ...] | None:
    """The version `requirements.txt` pins `distribution` to (what the pod will run)."""
    text = code.files.get("requirements.txt", b"").decode("utf-8", "replace")
    found = re.search(rf"(?im)^{re.escape(distribution)}==([0-9][0-9.]*)", text)
    return tuple(int(p) for p in found.group(1).split(".") if p) if found else None


def network_policy(pipeline: Pipeline, stage: StageSpec, namespace: str) -> Obj | None:
    """Only the serving port may reach the stage's pods (`[kubernetes] NETWORK_POLICY = false`
    turns this off, e.g. for a sidecar that must be reached on another port)."""
    if pipeline.value("kubernetes", "NETWORK_POLICY", "true").lower() in ("false", "0", "no", "off"):
        return None
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(service_name(pipeline, stage.name), namespace,
                              labels(pipeline, stage.name, stage.name)),
            "spec": {"podSelector": {"matchLabels": {
                         "app.kubernetes.io/instance": pipeline.name,
                         "app.kubernetes.io/component": stage.name}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"protocol": "TCP", "port": _port(stage)}]}]}}


def service_objects(pipeline: Pipeline, stage: StageSpec, deployment_obj: Obj,
                    namespace: str) -> list[Obj]:
    """[Deployment, Service, (NetworkPolicy), (Ingress)] of one service stage."""
    extra = [network_policy(pipeline, stage, namespace), ingress(pipeline, stage, namespace)]
    return [deployment_obj, service(pipeline, stage, namespace), *(o for o in extra if o)]


def service(pipeline: Pipeline, stage: StageSpec, namespace: str) -> Obj:
    """ClusterIP Service on port 80 in front of the stage's pods."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(service_name(pipeline, stage.name), namespace,
                          labels(pipeline, stage.name, stage.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/instance": pipeline.name,
                         "app.kubernetes.io/component": stage.name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def ingress(pipeline: Pipeline, stage: StageSpec, namespace: str) -> Obj | None:
    """An Ingress for ROUTE when `[service] INGRESS = true` (INGRESS_HOST / INGRESS_CLASS optional)."""
    if not stage.flag("service", "INGRESS"):
        return None
    name = service_name(pipeline, stage.name)
    rule: Obj = {"http": {"paths": [{
        "path": route(stage), "pathType": "Prefix",
        "backend": {"service": {"name": name, "port": {"name": "http"}}},
    }]}}
    host = stage.value("service", "INGRESS_HOST")
    if host:
        rule["host"] = host
    spec: Obj = {"rules": [rule]}
    klass = stage.value("service", "INGRESS_CLASS")
    if klass:
        spec["ingressClassName"] = klass
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": _meta(name, namespace, labels(pipeline, stage.name, stage.name)),
            "spec": spec}


def service_url(pipeline: Pipeline, stage: StageSpec, namespace: str) -> str:
    return (f"http://{service_name(pipeline, stage.name)}.{namespace}.svc.cluster.local"
            f"{route(stage)}")


# -- namespace and RBAC -----------------------------------------------------------------------
def namespace_object(pipeline: Pipeline, namespace: str) -> Obj:
    """The namespace; labelled as nb2prod's but not by pipeline, since pipelines share it."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"app.kubernetes.io/managed-by": "nb2prod",
                                                       "app.kubernetes.io/part-of": "nb2prod",
                                                       **NAMESPACE_POD_SECURITY}}}


def rbac_objects(pipeline: Pipeline, namespace: str) -> list[Obj]:
    """ServiceAccount for stage pods (no token) and, with services, a roller identity.

    The roller may only get and patch this pipeline's own Deployments (by name),
    which is all an in-cluster retraining run needs to roll them to a new model, and
    list pods and read their logs (pod names are not known in advance), so that a
    failed roll-out says why, as `deploy` does.  No get, watch or anything on Secrets.
    Without service stages there is nothing to roll and no Role is made (a Role
    with empty resourceNames would grant every Deployment).
    """
    lbls = labels(pipeline, "rbac")
    objects: list[Obj] = [{
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": _meta(stages_account(pipeline), namespace, lbls),
        "automountServiceAccountToken": False,
    }]
    names = [service_name(pipeline, s) for s in pipeline.services]
    if not names:
        return objects
    roller = roller_account(pipeline)
    objects += [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(roller, namespace, lbls)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta(roller, namespace, lbls),
         "rules": [{"apiGroups": ["apps"], "resources": ["deployments"],
                    "resourceNames": names, "verbs": ["get", "patch"]},
                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                   {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(roller, namespace, lbls),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roller},
         "subjects": [{"kind": "ServiceAccount", "name": roller, "namespace": namespace}]},
    ]
    return objects


# -- everything -------------------------------------------------------------------------------
@dataclass
class Plan:
    """All objects of one deploy, grouped by when the runner creates them."""

    namespace: Obj
    setup: list[Obj]                 # RBAC + code ConfigMaps: created before anything runs
    jobs: dict[str, Obj]             # batch stage -> Job
    promote: Obj | None              # after every Job completed
    services: dict[str, list[Obj]]   # service stage -> service_objects()
    codes: dict[str, StageCode]

    def objects(self) -> list[Obj]:
        """Every object in creation order (what `render` prints)."""
        out = [self.namespace, *self.setup, *self.jobs.values()]
        if self.promote is not None:
            out.append(self.promote)
        for objs in self.services.values():
            out.extend(objs)
        return out


def plan(pipeline: Pipeline, opts: Options) -> Plan:
    """Build every object of a deploy of `pipeline` for run `opts.run_id`."""
    check_pipeline_name(pipeline)
    store_mount(opts.store)  # refuse file:// before reading any code
    codes = all_stage_code(pipeline, opts)
    setup = rbac_objects(pipeline, opts.namespace)
    setup += [code_configmap(pipeline, runtime_code(pipeline), opts.namespace)]
    setup += [code_configmap(pipeline, codes[name], opts.namespace) for name in pipeline.order]
    jobs = {name: batch_job(pipeline, pipeline.stages[name], codes[name], opts)
            for name in pipeline.batch}
    promote = promote_job(pipeline, codes[pipeline.batch[0]], opts) if pipeline.batch else None
    services = {name: service_objects(pipeline, pipeline.stages[name],
                                      deployment(pipeline, pipeline.stages[name], codes[name],
                                                 opts, opts.run_id), opts.namespace)
                for name in pipeline.services}
    return Plan(namespace_object(pipeline, opts.namespace), setup, jobs, promote, services, codes)


def dockerfile(pipeline: Pipeline, store: str, boto3_requirement: str = "boto3") -> str:
    """A Dockerfile for `--image`: the base image plus every stage's pinned requirements
    (and boto3 for an s3:// store), so pods start without pip and without PyPI.

    The stage code is not in it (it comes from the ConfigMaps): the image only has to
    change when requirements.txt does.  Same user and paths as the pods expect.
    """
    wanted: set[str] = set()
    for stage in pipeline.stages.values():
        text = (stage.directory / "requirements.txt").read_text(encoding="utf-8") \
            if (stage.directory / "requirements.txt").is_file() else ""
        wanted.update(line.split("#", 1)[0].strip() for line in text.splitlines())
    if store.lower().startswith("s3://"):
        wanted.add(boto3_requirement)
    wanted.discard("")
    lines = [f"# nb2prod: an image for `nb2prod deploy {pipeline.root.name} --image IMAGE`",
             "# build: docker build -t REGISTRY/NAME:TAG - < Dockerfile   (no context needed)",
             f"FROM {DEFAULT_IMAGE}",
             "RUN python -m pip install --no-cache-dir --disable-pip-version-check \\"]
    lines += [f"      {shlex.quote(req)} \\" for req in sorted(wanted, key=str.lower)]
    lines[-1] = lines[-1].removesuffix(" \\")
    lines.append("USER 1000:1000")
    return "\n".join(lines) + "\n"


def to_yaml(objects: list[Obj], header: str = "") -> str:
    """Multi-document YAML, keys in construction order (apiVersion, kind, metadata first)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    _Dumper.ignore_aliases = lambda self, data: True  # type: ignore[method-assign]
    docs = [yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                      allow_unicode=True, width=100) for obj in objects]
    return header + "---\n" + "---\n".join(docs)
