"""The namespace and the identities: a token-less stage account, and a roller for services."""

from __future__ import annotations

from nb2prod.manifests.names import Obj, labels, meta, roller_account, service_name, stages_account
from nb2prod.pipeline import Pipeline

NAMESPACE_POD_SECURITY = {f"pod-security.kubernetes.io/{mode}": "restricted"
                          for mode in ("enforce", "audit", "warn")}


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
        "metadata": meta(stages_account(pipeline), namespace, lbls),
        "automountServiceAccountToken": False,
    }]
    names = [service_name(pipeline, s) for s in pipeline.services]
    if not names:
        return objects
    roller = roller_account(pipeline)
    objects += [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": meta(roller, namespace, lbls)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": meta(roller, namespace, lbls),
         "rules": [{"apiGroups": ["apps"], "resources": ["deployments"],
                    "resourceNames": names, "verbs": ["get", "patch"]},
                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                   {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": meta(roller, namespace, lbls),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roller},
         "subjects": [{"kind": "ServiceAccount", "name": roller, "namespace": namespace}]},
    ]
    return objects
