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

One module per concern, each importing only the ones below it: `names`
(object names, labels, metadata), `paths` (in-pod directories), `options`
(`Options`, the store's mount), `code` (code and runtime ConfigMaps and their
volumes), `env` (pod environment and secrets), `startup` (the container's
script), `pods` (pod specs, resources, hardening), `jobs` (batch, promote,
record), `services` (Deployment, Service, NetworkPolicy, Ingress), `rbac`
(namespace, ServiceAccounts, the roller's Role), `deploy` (`plan`: every
object of a deploy), `documents` (YAML, Dockerfile).  This package re-exports
what the rest of nb2prod uses, so callers write `manifests.plan(...)`.
"""

from __future__ import annotations

from nb2prod.manifests.code import (
    RUNTIME,
    RUNTIME_VOLUME_MOUNT,
    StageCode,
    all_stage_code,
    code_configmap,
    code_configmap_name,
    code_volume,
    runtime_code,
    runtime_volume,
    stage_code,
)
from nb2prod.manifests.deploy import Plan, plan
from nb2prod.manifests.documents import dockerfile, to_yaml
from nb2prod.manifests.env import SIGNING_KEY_ENV, pod_env, signing_secret, store_secret
from nb2prod.manifests.jobs import (
    JOB_TTL_SECONDS,
    PROMOTE_NOT_PASSED,
    PROMOTE_RESOURCES,
    batch_job,
    batch_limits,
    promote_job,
    promotion_args,
    record_job,
)
from nb2prod.manifests.names import (
    AFTER,
    CACHED_ANNOTATION,
    CODE_HASH,
    DNS_LABEL,
    MODEL_RUN_ID,
    PREVIOUS_TEMPLATE,
    PROMOTE,
    PROMOTION_ANNOTATION,
    RECORD,
    RUN_ID_LABEL,
    STAGE_LABEL,
    STOPPED_ANNOTATION,
    Obj,
    check_pipeline_name,
    fit_name,
    job_name,
    k8s_name,
    labels,
    meta,
    promote_job_name,
    roller_account,
    selector,
    service_name,
    stages_account,
)
from nb2prod.manifests.options import Options, StoreMount, default_boto3_requirement, store_mount
from nb2prod.manifests.paths import CODE_DIR, DEPS_DIR, RUNTIME_MOUNT, STORE_DIR, TMP_DIR, WORK_DIR
from nb2prod.manifests.pods import (
    CONTAINER_SECURITY,
    DEFAULT_IMAGE,
    ephemeral_storage,
    harden,
    image_for,
    pod_base,
    pod_spec,
    pull_policy,
    resources,
    scratch_mounts,
    scratch_volumes,
)
from nb2prod.manifests.rbac import namespace_object, rbac_objects
from nb2prod.manifests.services import (
    deployment,
    ingress,
    network_policy,
    route,
    service,
    service_objects,
    service_url,
)
from nb2prod.manifests.startup import extra_installs, startup_script

__all__ = [
    "AFTER", "CACHED_ANNOTATION", "CODE_DIR", "CODE_HASH", "CONTAINER_SECURITY", "DEFAULT_IMAGE", "DEPS_DIR",
    "DNS_LABEL", "JOB_TTL_SECONDS", "MODEL_RUN_ID", "PREVIOUS_TEMPLATE", "PROMOTE",
    "PROMOTE_NOT_PASSED", "PROMOTE_RESOURCES", "PROMOTION_ANNOTATION", "RECORD", "RUNTIME", "RUNTIME_MOUNT",
    "RUNTIME_VOLUME_MOUNT", "RUN_ID_LABEL", "SIGNING_KEY_ENV", "STAGE_LABEL", "STOPPED_ANNOTATION",
    "STORE_DIR",
    "TMP_DIR", "WORK_DIR", "Obj", "Options", "Plan", "StageCode", "StoreMount",
    "all_stage_code", "batch_job", "batch_limits", "check_pipeline_name", "code_configmap",
    "code_configmap_name", "code_volume", "default_boto3_requirement", "deployment",
    "dockerfile", "ephemeral_storage", "extra_installs", "fit_name", "harden", "image_for",
    "ingress", "job_name", "k8s_name", "labels", "meta", "namespace_object", "network_policy",
    "plan", "pod_base", "pod_env", "pod_spec", "promote_job", "promote_job_name",
    "promotion_args", "pull_policy", "rbac_objects", "record_job", "resources", "roller_account",
    "route", "runtime_code", "runtime_volume", "scratch_mounts", "scratch_volumes", "selector",
    "service", "service_name", "service_objects", "service_url", "signing_secret", "stage_code",
    "stages_account", "startup_script", "store_mount", "store_secret", "to_yaml",
]
