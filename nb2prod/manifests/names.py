"""Object names, labels and metadata: what every nb2prod object is called and carries.

Names are DNS labels derived from the pipeline and stage names (`_` is not
allowed there); a name that would be too long is cut and given a hash so two
long stage names cannot collide.  `delete` and `status` find objects by the labels.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from nb2prod.errors import Problem, UserError
from nb2prod.pipeline import Pipeline

Obj = dict[str, Any]

#: Labels and annotations nb2prod reads back (`status`, `history`, roll-outs, the cache).
RUN_ID_LABEL = "nb2prod.io/run-id"
STAGE_LABEL = "nb2prod.io/stage"
CODE_HASH = "nb2prod.io/code-hash"
MODEL_RUN_ID = "nb2prod.io/model-run-id"
PREVIOUS_TEMPLATE = "nb2prod.io/previous-template"
AFTER = "nb2prod.io/after"
PROMOTE = "promote"
RECORD = "record"   # component of the Job that notes a roll-out's outcome in run.json
CACHED_ANNOTATION = "nb2prod.io/cached"  # on a deploy's promote Job: {stage: run reused}
PROMOTION_ANNOTATION = "nb2prod.io/promotion"  # on a promote Job: the gate said no
STOPPED_ANNOTATION = "nb2prod.io/stopped"  # on a stopped deploy's Jobs: the stop note

#: What the API server accepts as a DNS-1123 label, a ConfigMap key, a DNS-1123 subdomain.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def k8s_name(name: str) -> str:
    """A stage or pipeline name as used in object names: `_` is not allowed there."""
    return name.replace("_", "-").lower()


def short_hash(*parts: str, length: int = 8) -> str:
    """A few hex digits that tell names apart (run ids, cut names), stable across runs."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def fit_name(name: str, limit: int = 63) -> str:
    """`name` if it is a valid DNS label within `limit`, else a truncated one plus a hash.

    Truncating alone could make two long stage names collide; the hash keeps them apart.
    """
    if len(name) <= limit:
        return name
    suffix = short_hash(name, length=6)
    return f"{name[:limit - 7].rstrip('-')}-{suffix}"


def check_pipeline_name(pipeline: Pipeline) -> str:
    """The pipeline name if usable in object names (DNS-1035 label: Services need a letter first)."""
    name = k8s_name(pipeline.name)
    if not DNS_LABEL.match(name) or not name[0].isalpha() or len(name) > 40:
        raise UserError(Problem(
            f"[project] NAME = {pipeline.name!r} cannot name Kubernetes objects: use lowercase "
            "letters, digits and '-', starting with a letter, at most 40 characters",
            file=str(pipeline.root / "nb2prod.ini")))
    return name


def service_name(pipeline: Pipeline, stage: str) -> str:
    """Deployment and Service name of a service stage: `<pipeline>-<stage>`."""
    return fit_name(f"{k8s_name(pipeline.name)}-{k8s_name(stage)}")


def job_name(pipeline: Pipeline, stage: str, run_id: str) -> str:
    """Unique per run and stage, at most 63 characters (the Job controller's pod label limit)."""
    head = f"{k8s_name(pipeline.name)[:20].rstrip('-')}-{k8s_name(stage)[:20].rstrip('-')}"
    return f"{head}-{short_hash(run_id, stage)}"


def promote_job_name(pipeline: Pipeline, run_id: str) -> str:
    # The extra part keeps it distinct from the Job of a stage that is itself named "promote".
    return f"{k8s_name(pipeline.name)[:20].rstrip('-')}-promote-{short_hash(run_id, '', PROMOTE)}"


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


def meta(name: str, namespace: str, lbls: dict[str, str],
         annotations: dict[str, str] | None = None) -> Obj:
    """An object's `metadata`: copies of the labels and annotations (objects never share them)."""
    found: Obj = {"name": name, "namespace": namespace, "labels": dict(lbls)}
    if annotations:
        found["annotations"] = dict(annotations)
    return found
