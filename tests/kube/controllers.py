"""The controller manager: one background thread running level-triggered controllers.

Each controller looks at the whole store and converges it one step (as
kube-controller-manager's reconcilers do): garbage collection of dependents,
namespace deletion, PVC binding, Endpoints, ReplicaSets, Deployments, Jobs and
CronJobs. The loop wakes on every store write and at least every 0.2 s, which
also drives the time-based rules (deadlines, minReadySeconds, TTLs).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from .batch import CronJobController, JobController
from .errors import ApiError
from .resources import BY_PLURAL, RESOURCES
from .workloads import DeploymentController, ReplicaSetController

if TYPE_CHECKING:
    from .api import Api
    from .store import Obj


class ControllerManager:
    """Runs all controllers in one thread until stopped."""

    def __init__(self, api: Api, job_backoff_seconds: float = 0.2) -> None:
        self.api = api
        self.jobs = JobController(api, job_backoff_seconds)
        self.cronjobs = CronJobController(api)
        self.controllers: list[Callable[[], None]] = [
            self.garbage_collect, self.namespaces, self.bind_claims, self.endpoints,
            ReplicaSetController(api).sync, DeploymentController(api).sync, self.jobs.sync, self.cronjobs.sync,
        ]
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="controller-manager")
        self._managed_endpoints: set[tuple[str, str]] = set()
        api.store.add_listener(self._wake.set)

    def start(self) -> None:
        """Start the loop thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop thread."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            self.run_once()
            time.sleep(0.01)

    def run_once(self) -> None:
        """One pass of every controller; a failing controller does not stop the others."""
        for controller in self.controllers:
            if self._stopping.is_set():
                return
            try:
                controller()
            except ApiError:
                continue
            except Exception:  # noqa: BLE001 - keep reconciling; print so the bug is visible
                traceback.print_exc()

    # ------------------------------------------------------------------ garbage collector
    def garbage_collect(self) -> None:
        """Delete dependents whose owners are gone; finish foreground deletions."""
        objects = list(self.api.store.all_objects())
        by_uid = {o["metadata"]["uid"]: o for _, o in objects}
        referenced: set[str] = set()
        for plural, obj in objects:
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if not refs:
                continue
            owners = [by_uid.get(r.get("uid")) for r in refs]
            referenced.update(r.get("uid") for r in refs if r.get("blockOwnerDeletion"))
            if meta.get("deletionTimestamp"):
                continue
            res = BY_PLURAL[plural]
            if all(o is None for o in owners):
                self.api.internal_delete(res, meta.get("namespace", ""), meta["name"], "Background")
            elif any(o is not None and o["metadata"].get("deletionTimestamp")
                     and "foregroundDeletion" in (o["metadata"].get("finalizers") or []) for o in owners):
                self.api.internal_delete(res, meta.get("namespace", ""), meta["name"], "Foreground")
        for plural, obj in objects:
            meta = obj["metadata"]
            if meta.get("deletionTimestamp") and "foregroundDeletion" in (meta.get("finalizers") or []) \
                    and meta["uid"] not in referenced:
                def drop(o: Obj) -> None:
                    o["metadata"]["finalizers"] = [f for f in o["metadata"]["finalizers"] if f != "foregroundDeletion"]
                    if not o["metadata"]["finalizers"]:
                        o["metadata"].pop("finalizers")
                self.api.internal_update(BY_PLURAL[plural], meta.get("namespace", ""), meta["name"], drop)

    # ------------------------------------------------------------------ namespaces
    def namespaces(self) -> None:
        """Empty terminating namespaces, then remove them."""
        store = self.api.store
        for ns_obj in store.scan("namespaces"):
            if not ns_obj["metadata"].get("deletionTimestamp"):
                continue
            ns = ns_obj["metadata"]["name"]
            remaining = 0
            for res in RESOURCES:
                if not res.namespaced:
                    continue
                for obj in store.scan(res.plural, ns):
                    remaining += 1
                    if not obj["metadata"].get("deletionTimestamp"):
                        self.api.internal_delete(res, ns, obj["metadata"]["name"], "Background")
            if remaining == 0:
                store.remove("namespaces", "", ns)

    # ------------------------------------------------------------------ PVC binder
    def bind_claims(self) -> None:
        """Bind every pending claim at once (a dynamic provisioner with WaitForFirstConsumer off)."""
        for pvc in self.api.store.scan("persistentvolumeclaims"):
            if (pvc.get("status") or {}).get("phase") == "Bound" or pvc["metadata"].get("deletionTimestamp"):
                continue

            def bind(claim: Obj) -> None:
                spec = claim["spec"]
                spec.setdefault("volumeName", f"pvc-{claim['metadata']['uid']}")
                claim["status"] = {"phase": "Bound", "accessModes": list(spec.get("accessModes") or []),
                                   "capacity": {"storage": spec["resources"]["requests"]["storage"]}}
            meta = pvc["metadata"]
            self.api.internal_status(BY_PLURAL["persistentvolumeclaims"], meta["namespace"], meta["name"], bind)

    # ------------------------------------------------------------------ endpoints
    def endpoints(self) -> None:
        """Maintain an Endpoints object per selector Service from its ready/unready pods."""
        from .selectors import from_label_selector, matches

        store, res = self.api.store, BY_PLURAL["endpoints"]
        wanted: set[tuple[str, str]] = set()
        for svc in store.scan("services"):
            selector = (svc.get("spec") or {}).get("selector")
            if not selector:
                continue
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            wanted.add((ns, name))
            reqs = from_label_selector({"matchLabels": selector})
            ready: list[Obj] = []
            not_ready: list[Obj] = []
            for pod in store.scan("pods", ns):
                ip = (pod.get("status") or {}).get("podIP")
                if not ip or pod["metadata"].get("deletionTimestamp") or not matches(
                        reqs, pod["metadata"].get("labels")):
                    continue
                address = {"ip": ip, "nodeName": pod["spec"].get("nodeName", ""), "targetRef": {
                    "kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}}
                is_ready = any(c["type"] == "Ready" and c["status"] == "True"
                               for c in (pod.get("status") or {}).get("conditions") or [])
                (ready if is_ready else not_ready).append(address)
            ports = [{"name": p.get("name"), "port": p["targetPort"] if isinstance(p.get("targetPort"), int)
                      else p["port"], "protocol": p.get("protocol", "TCP")} for p in svc["spec"].get("ports") or []]
            for p in ports:
                if not p["name"]:
                    p.pop("name")
            subset: Obj = {}
            if ready:
                subset["addresses"] = ready
            if not_ready:
                subset["notReadyAddresses"] = not_ready
            subsets = [dict(subset, ports=ports)] if subset else []
            current = store.peek("endpoints", ns, name)
            if current is None:
                self.api.internal_create(res, {"apiVersion": "v1", "kind": "Endpoints", "metadata": {
                    "name": name, "namespace": ns, "labels": dict(svc["metadata"].get("labels") or {})},
                    "subsets": subsets})
                self._managed_endpoints.add((ns, name))
            elif current.get("subsets", []) != subsets:
                def put(o: Obj, s: list[Obj] = subsets) -> None:
                    o["subsets"] = s
                self.api.internal_update(res, ns, name, put)
        for ns, name in list(self._managed_endpoints - wanted):
            self._managed_endpoints.discard((ns, name))
            self.api.internal_delete(res, ns, name)
