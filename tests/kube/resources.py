"""The resource types the stand-in serves, and the discovery documents for them.

One table drives URL routing, discovery (``/api``, ``/apis``), validation
(which schema / name rule) and the controllers, so adding a kind is one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    """A served resource type (one row of discovery)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    name_rule: str = "subdomain"  # subdomain | label | dns1035 | path | cronjob
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    has_generation: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        """``v1`` or ``apps/v1``: the ``apiVersion`` of objects of this type."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def has_status(self) -> bool:
        """Whether ``status`` is owned by the /status subresource (ignored on main writes)."""
        return "status" in self.subresources


RESOURCES: list[Resource] = [
    Resource("", "v1", "namespaces", "Namespace", False, "label", ("ns",), ("status", "finalize")),
    Resource("", "v1", "nodes", "Node", False, "subdomain", ("no",), ("status", "proxy")),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, short_names=("sa",)),
    Resource("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "services", "Service", True, "dns1035", ("svc",), ("status", "proxy")),
    Resource("", "v1", "endpoints", "Endpoints", True, short_names=("ep",)),
    Resource("", "v1", "events", "Event", True, short_names=("ev",)),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, short_names=("pvc",),
             subresources=("status",)),
    Resource("", "v1", "pods", "Pod", True, short_names=("po",), subresources=("status", "log", "proxy"),
             has_generation=True),
    Resource("apps", "v1", "deployments", "Deployment", True, short_names=("deploy",),
             subresources=("status", "scale"), has_generation=True),
    Resource("apps", "v1", "replicasets", "ReplicaSet", True, short_names=("rs",),
             subresources=("status", "scale"), has_generation=True),
    Resource("batch", "v1", "jobs", "Job", True, subresources=("status",), has_generation=True),
    Resource("batch", "v1", "cronjobs", "CronJob", True, "cronjob", ("cj",), ("status",), has_generation=True),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True, "path"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, "path"),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, "path"),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False, "path"),
    Resource("networking.k8s.io", "v1", "ingresses", "Ingress", True, short_names=("ing",),
             subresources=("status",), has_generation=True),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, short_names=("netpol",),
             has_generation=True),
]

BY_PATH: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.plural): r for r in RESOURCES}
BY_KIND: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in RESOURCES}
BY_PLURAL: dict[str, Resource] = {r.plural: r for r in RESOURCES}


def lookup(group: str, version: str, plural: str) -> Resource | None:
    """The resource served at ``/apis/{group}/{version}/{plural}`` (``group`` empty for core)."""
    return BY_PATH.get((group, version, plural))


def groups() -> dict[str, list[str]]:
    """Group name -> versions, core group excluded."""
    out: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in out.setdefault(r.group, []):
            out[r.group].append(r.version)
    return out


def api_versions() -> dict[str, Any]:
    """Body of ``GET /api``."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _group_doc(name: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict[str, Any]:
    """Body of ``GET /apis``."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_doc(g, vs) for g, vs in groups().items()],
    }


def api_group(name: str) -> dict[str, Any] | None:
    """Body of ``GET /apis/{group}``."""
    versions = groups().get(name)
    if versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(name, versions)}


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """Body of ``GET /api/v1`` or ``GET /apis/{group}/{version}`` (APIResourceList)."""
    rows = [r for r in RESOURCES if r.group == group and r.version == version]
    if not rows:
        return None
    items: list[dict[str, Any]] = []
    for r in rows:
        items.append({
            "name": r.plural,
            "singularName": r.kind.lower(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            **({"shortNames": list(r.short_names)} if r.short_names else {}),
        })
        for sub in r.subresources:
            entry: dict[str, Any] = {"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced,
                                     "kind": r.kind, "verbs": ["get", "patch", "update"]}
            if sub == "scale":
                entry.update(group="autoscaling", version="v1", kind="Scale")
            elif sub in ("log", "proxy"):
                entry.update(kind="Pod" if sub == "log" else f"{r.kind}ProxyOptions", verbs=["get"])
                if sub == "proxy":
                    entry["verbs"] = ["create", "delete", "get", "patch", "update"]
            elif sub == "finalize":
                entry["verbs"] = ["update"]
            items.append(entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": items,
    }
