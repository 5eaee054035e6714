"""Applying objects: create what is missing, converge what nb2prod owns, leave the rest.

Code ConfigMaps are immutable and named by content, so an existing one is
already right; RBAC objects, Services and Ingresses are brought up to date
through `k8s_retry.update` (read, change, replace with the read
resourceVersion), so re-deploying unchanged inputs writes nothing.  Shared by
`deploy` (waiting) and the in-cluster runs of `schedule` / `deploy --no-wait`.
"""

from __future__ import annotations

import contextlib
import copy

from nb2prod import k8s_retry, manifests
from nb2prod.errors import Problem, UserError
from nb2prod.manifests import Obj
from nb2prod.runners.kubernetes.cluster import Kube


def ensure_namespace(kube: Kube, namespace: Obj) -> bool:
    """Create the namespace unless it exists (or we may not even look: then assume it does).

    True when this call created it (a deploy that then fails at once removes it again).
    """
    try:
        exists = kube.json(kube.core.read_namespace, namespace["metadata"]["name"])
    except Exception as exc:
        status = k8s_retry.status_of(exc)
        if status == 403:
            return False  # no cluster-scope rights: assume an admin made it for us
        if status != 404:
            raise
        exists = None
    if exists is None:
        return k8s_retry.create(kube.core.create_namespace, namespace,
                                _request_timeout=(10, 60)) is not None
    return False


def remove_namespace(kube: Kube, name: str) -> None:
    """Delete a namespace this deploy created for an attempt that failed before running."""
    with contextlib.suppress(Exception):  # best effort: the failure is what gets reported
        k8s_retry.delete(kube.core.delete_namespace, name, _preload_content=False,
                         _request_timeout=(10, 60))


def check_claim(kube: Kube, opts: manifests.Options) -> None:
    """A pvc:// store's claim must exist before anything is created: no node can fix a
    missing one (the scheduler would keep every pod Pending).  Unreadable (403): go on."""
    claim = manifests.store_mount(opts.store).claim
    if claim is None:
        return
    try:
        kube.json(kube.core.read_namespaced_persistent_volume_claim, claim, opts.namespace)
    except Exception as exc:
        status = k8s_retry.status_of(exc)
        if status == 404:
            raise UserError(Problem(
                f"--store {opts.store}: PersistentVolumeClaim {claim} not found in namespace "
                f"{opts.namespace}; create it first (pvc:// mounts an existing claim)")) from None
        if status != 403:
            raise


def ensure_object(kube: Kube, obj: Obj) -> None:
    """Create `obj`; if it exists with different content (RBAC only), bring it up to date."""
    if kube.create(obj) is not None or obj["kind"] == "ConfigMap":
        return  # ConfigMaps are named by content: same name, same data
    meta = obj["metadata"]

    def read() -> Obj:
        return kube.json(kube.method("read", obj["kind"]), meta["name"], meta["namespace"])

    def write(current: Obj) -> Obj | None:
        body = copy.deepcopy(current)
        changed = False
        for key in ("rules", "subjects", "automountServiceAccountToken"):
            if key in obj and body.get(key) != obj[key]:
                body[key] = obj[key]
                changed = True
        labels = {**(body["metadata"].get("labels") or {}), **meta["labels"]}
        if labels != body["metadata"].get("labels"):
            body["metadata"]["labels"] = labels
            changed = True
        return kube.replace(body) if changed else None

    k8s_retry.update(read, write)


def ensure_networking(kube: Kube, obj: Obj) -> None:
    """Create the Service/Ingress, or converge an existing one's spec to ours."""
    if kube.create(obj) is not None:
        return
    meta = obj["metadata"]

    def read() -> Obj:
        return kube.json(kube.method("read", obj["kind"]), meta["name"], meta["namespace"])

    def write(current: Obj) -> Obj | None:
        body = copy.deepcopy(current)
        if obj["kind"] == "Service":
            body["spec"]["selector"] = obj["spec"]["selector"]
            body["spec"]["ports"] = obj["spec"]["ports"]
        else:
            body["spec"] = obj["spec"]
        body["metadata"]["labels"] = {**(body["metadata"].get("labels") or {}),
                                      **meta["labels"]}
        if body == current:
            return None
        return kube.replace(body)

    k8s_retry.update(read, write)

