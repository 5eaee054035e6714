"""ReplicaSet and Deployment controllers, following kube-controller-manager's logic.

A Deployment owns one ReplicaSet per pod template (named
``<deployment>-<pod-template-hash>``, labelled ``pod-template-hash``,
annotated ``deployment.kubernetes.io/revision``). Rolling updates scale the
new ReplicaSet up within ``maxSurge`` and old ones down only as new pods become
available within ``maxUnavailable``; ``Recreate`` empties old ones first.
Status and the Available / Progressing conditions (including
``ProgressDeadlineExceeded``) are computed as the real controller does, so
rollout-waiting code sees the same signals.
"""

from __future__ import annotations

import copy
import json
import math
from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .podtemplate import create_pod
from .resources import BY_PLURAL
from .util import (
    SAFE_ALPHABET,
    by_controller,
    condition,
    owner_ref,
    parse_time,
    set_condition,
    utcnow,
)

if TYPE_CHECKING:
    from .api import Api
    from .store import Obj

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
TERMINAL = ("Succeeded", "Failed")


def is_ready(pod: Obj) -> bool:
    """Pod condition Ready=True."""
    cond = condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def is_available(pod: Obj, min_ready_seconds: int) -> bool:
    """Ready for at least ``minReadySeconds``."""
    cond = condition(pod, "Ready")
    if cond is None or cond.get("status") != "True":
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time(cond.get("lastTransitionTime"))
    return since is not None and (utcnow() - since).total_seconds() >= min_ready_seconds


def template_hash(template: Obj, collision_count: int = 0) -> str:
    """fnv-32a over the template, encoded like Kubernetes' SafeEncodeString."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode() + str(collision_count).encode()
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(SAFE_ALPHABET[ord(ch) % len(SAFE_ALPHABET)] for ch in str(h))


def _without_hash(template: Obj) -> Obj:
    t = copy.deepcopy(template)
    labels = (t.get("metadata") or {}).get("labels") or {}
    labels.pop(HASH_LABEL, None)
    return t


def _revision(rs: Obj) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _resolve(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        amount = int(value[:-1]) * total / 100
        return math.ceil(amount) if round_up else math.floor(amount)
    return int(value or 0)


class ReplicaSetController:
    """Keeps ``spec.replicas`` pods per ReplicaSet and reports their readiness."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.res = BY_PLURAL["replicasets"]

    def sync(self) -> None:
        """Reconcile every ReplicaSet."""
        pods_by_owner = by_controller(self.api.store.scan("pods"))
        for rs in self.api.store.scan("replicasets"):
            self._sync_one(rs, pods_by_owner.get(rs["metadata"]["uid"], []))

    def _sync_one(self, rs: Obj, pods: list[Obj]) -> None:
        meta, spec = rs["metadata"], rs["spec"]
        ns = meta["namespace"]
        active = [p for p in pods if not p["metadata"].get("deletionTimestamp")
                  and (p.get("status") or {}).get("phase") not in TERMINAL]
        failure: str | None = None
        if not meta.get("deletionTimestamp"):
            diff = len(active) - int(spec.get("replicas", 1))
            if diff < 0:
                failure = self._create_pods(rs, -diff)
            elif diff > 0:
                def rank(p: Obj) -> tuple[int, int, int, str]:
                    st = p.get("status") or {}
                    return (1 if p["spec"].get("nodeName") else 0, 1 if st.get("phase") == "Running" else 0,
                            1 if is_ready(p) else 0, "~" + p["metadata"].get("creationTimestamp", ""))
                for victim in sorted(active, key=rank)[:diff]:
                    self.api.internal_delete(BY_PLURAL["pods"], ns, victim["metadata"]["name"])
                    active.remove(victim)
        min_ready = int(spec.get("minReadySeconds", 0))
        template_labels = (spec.get("template", {}).get("metadata") or {}).get("labels") or {}

        def update(obj: Obj) -> None:
            st = obj.setdefault("status", {})
            st["replicas"] = len(active)
            st["fullyLabeledReplicas"] = sum(
                1 for p in active if all((p["metadata"].get("labels") or {}).get(k) == v
                                         for k, v in template_labels.items()))
            st["readyReplicas"] = sum(1 for p in active if is_ready(p))
            st["availableReplicas"] = sum(1 for p in active if is_available(p, min_ready))
            st["observedGeneration"] = obj["metadata"].get("generation", 1)
            if failure:
                set_condition(st, "ReplicaFailure", "True", "FailedCreate", failure)
            elif condition(obj, "ReplicaFailure") is not None and len(active) >= int(obj["spec"].get("replicas", 1)):
                st["conditions"] = [c for c in st["conditions"] if c["type"] != "ReplicaFailure"]
                if not st["conditions"]:
                    st.pop("conditions")
            for key in ("readyReplicas", "availableReplicas", "fullyLabeledReplicas"):
                if not st[key]:
                    st.pop(key)

        self.api.internal_status(self.res, ns, meta["name"], update)

    def _create_pods(self, rs: Obj, count: int) -> str | None:
        for _ in range(count):
            try:
                create_pod(self.api, rs, "replicaset-controller")
            except ApiError as exc:
                return exc.message
        return None


class DeploymentController:
    """Rolls Deployments out through ReplicaSets and reports rollout status."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.res = BY_PLURAL["deployments"]
        self.rs_res = BY_PLURAL["replicasets"]

    def sync(self) -> None:
        """Reconcile every Deployment."""
        owned = by_controller(rs for rs in self.api.store.scan("replicasets")
                              if not rs["metadata"].get("deletionTimestamp"))
        for d in self.api.store.scan("deployments"):
            if not d["metadata"].get("deletionTimestamp"):
                self._sync_one(d, owned.get(d["metadata"]["uid"], []))

    def _scale(self, d: Obj, rs: Obj, replicas: int) -> None:
        old = int(rs["spec"].get("replicas", 0))
        if old == replicas:
            return

        def put(obj: Obj) -> None:
            obj["spec"]["replicas"] = replicas
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations["deployment.kubernetes.io/desired-replicas"] = str(d["spec"].get("replicas", 1))
        self.api.internal_update(self.rs_res, rs["metadata"]["namespace"], rs["metadata"]["name"], put)
        rs["spec"]["replicas"] = replicas
        verb = "up" if replicas > old else "down"
        self.api.record_event(d, "ScalingReplicaSet", f"Scaled {verb} replica set {rs['metadata']['name']} from "
                              f"{old} to {replicas}", component="deployment-controller")

    def _sync_one(self, d: Obj, rss: list[Obj]) -> None:
        meta, spec = d["metadata"], d["spec"]
        ns = meta["namespace"]
        rss = [copy.deepcopy(rs) for rs in rss]
        template = spec["template"]
        new_rs = next((rs for rs in rss if _without_hash(rs["spec"]["template"]) == template), None)
        max_rev = max((_revision(rs) for rs in rss), default=0)
        created_reason: str | None = None
        if new_rs is None and not spec.get("paused"):
            new_rs = self._create_rs(d, max_rev + 1)
            if new_rs is None:
                return
            rss.append(new_rs)
            created_reason = "NewReplicaSetCreated"
        elif new_rs is not None and _revision(new_rs) < max_rev:
            rev = str(max_rev + 1)

            def bump(obj: Obj) -> None:
                obj["metadata"].setdefault("annotations", {})[REVISION] = rev
            self.api.internal_update(self.rs_res, ns, new_rs["metadata"]["name"], bump)
            new_rs["metadata"].setdefault("annotations", {})[REVISION] = rev
            created_reason = "FoundNewReplicaSet"
        old_rss = sorted((rs for rs in rss if rs is not new_rs), key=lambda r: r["metadata"]["creationTimestamp"])
        if new_rs is not None:
            revision = str(_revision(new_rs))
            if (meta.get("annotations") or {}).get(REVISION) != revision:
                def annotate(obj: Obj) -> None:
                    obj["metadata"].setdefault("annotations", {})[REVISION] = revision
                self.api.internal_update(self.res, ns, meta["name"], annotate)
            if not spec.get("paused"):
                self._rollout(d, new_rs, old_rss)
        self._cleanup(d, old_rss)
        self._status(d, new_rs, rss, created_reason)

    def _create_rs(self, d: Obj, revision: int) -> Obj | None:
        template = copy.deepcopy(d["spec"]["template"])
        pod_hash = template_hash(template, int((d.get("status") or {}).get("collisionCount", 0)))
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
        replicas = int(d["spec"].get("replicas", 1))
        surge = _resolve(((d["spec"].get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", 0),
                         replicas, True)
        rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
            "name": f"{d['metadata']['name']}-{pod_hash}", "namespace": d["metadata"]["namespace"],
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {REVISION: str(revision), "deployment.kubernetes.io/desired-replicas": str(replicas),
                            "deployment.kubernetes.io/max-replicas": str(replicas + surge)},
            "ownerReferences": [owner_ref(d)]},
            "spec": {"replicas": 0, "minReadySeconds": int(d["spec"].get("minReadySeconds", 0)),
                     "selector": selector, "template": template}}
        try:
            created = self.api.internal_create(self.rs_res, rs)
        except ApiError as exc:
            if exc.code == 409:
                def collide(obj: Obj) -> None:
                    st = obj.setdefault("status", {})
                    st["collisionCount"] = int(st.get("collisionCount", 0)) + 1
                self.api.internal_status(self.res, d["metadata"]["namespace"], d["metadata"]["name"], collide)
            return None
        return copy.deepcopy(created)

    def _rollout(self, d: Obj, new_rs: Obj, old_rss: list[Obj]) -> None:
        spec = d["spec"]
        desired = int(spec.get("replicas", 1))
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            for rs in old_rss:
                self._scale(d, rs, 0)
            if any(int((rs.get("status") or {}).get("replicas", 0)) > 0 for rs in old_rss):
                return
            self._scale(d, new_rs, desired)
            return
        rolling = strategy.get("rollingUpdate") or {}
        surge = _resolve(rolling.get("maxSurge", "25%"), desired, True)
        unavailable = _resolve(rolling.get("maxUnavailable", "25%"), desired, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        new_count = int(new_rs["spec"].get("replicas", 0))
        total = new_count + sum(int(rs["spec"].get("replicas", 0)) for rs in old_rss)
        if new_count < desired:
            up = min(desired + surge - total, desired - new_count)
            if up > 0:
                self._scale(d, new_rs, new_count + up)
        elif new_count > desired:
            self._scale(d, new_rs, desired)
        if not any(int(rs["spec"].get("replicas", 0)) for rs in old_rss):
            return
        all_count = sum(int(rs["spec"].get("replicas", 0)) for rs in [new_rs, *old_rss])
        min_available = desired - unavailable
        new_unavailable = int(new_rs["spec"].get("replicas", 0)) - int(
            (new_rs.get("status") or {}).get("availableReplicas", 0))
        budget = all_count - min_available - new_unavailable
        if budget <= 0:
            return
        for rs in old_rss:
            unhealthy = int(rs["spec"].get("replicas", 0)) - int((rs.get("status") or {}).get("availableReplicas", 0))
            step = min(budget, max(unhealthy, 0))
            if step > 0:
                self._scale(d, rs, int(rs["spec"]["replicas"]) - step)
                budget -= step
        available = sum(int((rs.get("status") or {}).get("availableReplicas", 0)) for rs in [new_rs, *old_rss])
        budget = min(budget, available - min_available)
        for rs in old_rss:
            if budget <= 0:
                break
            step = min(budget, int(rs["spec"].get("replicas", 0)))
            if step > 0:
                self._scale(d, rs, int(rs["spec"]["replicas"]) - step)
                budget -= step

    def _cleanup(self, d: Obj, old_rss: list[Obj]) -> None:
        limit = int(d["spec"].get("revisionHistoryLimit", 10))
        idle = [rs for rs in old_rss if not int(rs["spec"].get("replicas", 0))
                and not int((rs.get("status") or {}).get("replicas", 0))]
        idle.sort(key=_revision)
        for rs in idle[:max(0, len(idle) - limit)]:
            self.api.internal_delete(self.rs_res, rs["metadata"]["namespace"], rs["metadata"]["name"])

    def _status(self, d: Obj, new_rs: Obj | None, rss: list[Obj], created_reason: str | None) -> None:
        spec = d["spec"]
        desired = int(spec.get("replicas", 1))
        rss = [self.api.store.peek("replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"]) or rs
               for rs in rss]
        if new_rs is not None:
            new_rs = next((rs for rs in rss if rs["metadata"]["uid"] == new_rs["metadata"]["uid"]), new_rs)

        def count(rs: Obj | None, key: str) -> int:
            return int(((rs or {}).get("status") or {}).get(key, 0))
        replicas = sum(count(rs, "replicas") for rs in rss)
        updated = count(new_rs, "replicas")
        ready = sum(count(rs, "readyReplicas") for rs in rss)
        available = sum(count(rs, "availableReplicas") for rs in rss)
        spec_total = sum(int(rs["spec"].get("replicas", 0)) for rs in rss)
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        max_unavailable = _resolve(rolling.get("maxUnavailable", 0), desired, False) \
            if (spec.get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate" else 0
        rs_name = new_rs["metadata"]["name"] if new_rs is not None else ""
        deadline = spec.get("progressDeadlineSeconds")
        failure = condition(new_rs, "ReplicaFailure") if new_rs is not None else None

        def update(obj: Obj) -> None:
            st = obj.setdefault("status", {})
            old = dict(st)
            st.update(observedGeneration=obj["metadata"].get("generation", 1), replicas=replicas,
                      updatedReplicas=updated, readyReplicas=ready, availableReplicas=available,
                      unavailableReplicas=max(spec_total - available, 0))
            for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"):
                if not st[key]:
                    st.pop(key)
            if available >= desired - max_unavailable:
                set_condition(st, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum "
                              "availability.", update_time=True)
            else:
                set_condition(st, "Available", "False", "MinimumReplicasUnavailable", "Deployment does not have "
                              "minimum availability.", update_time=True)
            if failure is not None:
                set_condition(st, "ReplicaFailure", "True", "FailedCreate", failure.get("message", ""),
                              update_time=True)
            elif condition(obj, "ReplicaFailure") is not None:
                st["conditions"] = [c for c in st["conditions"] if c["type"] != "ReplicaFailure"]
            if spec.get("paused"):
                set_condition(st, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused",
                              update_time=True)
                return
            if deadline is None:
                return
            current = condition(obj, "Progressing")
            if created_reason == "NewReplicaSetCreated":
                set_condition(st, "Progressing", "True", created_reason, f'Created new replica set "{rs_name}"',
                              update_time=True, touch=True)
                return
            if created_reason == "FoundNewReplicaSet":
                set_condition(st, "Progressing", "True", created_reason, f'Found new replica set "{rs_name}"',
                              update_time=True, touch=True)
                return
            complete_now = (updated == desired and replicas == desired and available == desired)
            if current is not None and current.get("reason") == "NewReplicaSetAvailable" and replicas == updated:
                return
            progressed = (updated > int(old.get("updatedReplicas", 0)) or ready > int(old.get("readyReplicas", 0))
                          or available > int(old.get("availableReplicas", 0))
                          or (replicas - updated) < int(old.get("replicas", 0)) - int(old.get("updatedReplicas", 0)))
            if complete_now:
                set_condition(st, "Progressing", "True", "NewReplicaSetAvailable",
                              f'ReplicaSet "{rs_name}" has successfully progressed.', update_time=True)
            elif progressed:
                set_condition(st, "Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is '
                              "progressing.", update_time=True, touch=True)
            elif current is not None and current.get("reason") != "ProgressDeadlineExceeded":
                since = parse_time(current.get("lastUpdateTime"))
                if since is not None and (utcnow() - since).total_seconds() > float(deadline):
                    set_condition(st, "Progressing", "False", "ProgressDeadlineExceeded",
                                  f'ReplicaSet "{rs_name}" has timed out progressing.', update_time=True)
            elif current is None:
                set_condition(st, "Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is '
                              "progressing.", update_time=True)

        self.api.internal_status(self.res, d["metadata"]["namespace"], d["metadata"]["name"], update)
