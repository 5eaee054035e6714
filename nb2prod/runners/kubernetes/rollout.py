"""The deploy's serving part: roll each service Deployment to the new run, or back.

The Deployment is created, or replaced with the new pod template while the
old one is kept in an annotation (the same annotations the in-cluster roller
writes, so either can roll back the other's change), then watched until the
new template is available.  A roll-out that fails (progress deadline, a new
pod that cannot start) is rolled back; a failed first deploy is removed.  The
outcome is recorded where `status` and `runs` look.
"""

from __future__ import annotations

import copy
import json
import queue
import time
from typing import Any

from nb2prod import k8s_retry, manifests
from nb2prod.errors import PipelineFailure
from nb2prod.manifests import Obj
from nb2prod.roller import (
    DEADLINE_SLACK,
    TEMPLATE_HASH,
    rollout_verdict,
    template_hash,
    with_pod_problem,
)
from nb2prod.runners.kubernetes.apply import ensure_networking
from nb2prod.runners.kubernetes.deploy_state import DeployState
from nb2prod.runners.kubernetes.pod_state import PendingPods
from nb2prod.runners.kubernetes.streams import Watcher, response_lines

#: On a run's promote Job: the roll-out's outcome, so `status` tells what `deploy` told.
ROLLOUT_ANNOTATION = "nb2prod.io/rollout"


class RollOuts(DeployState):
    """Rolls the service stages of one deploy (see the module doc)."""

    def roll_out(self, name: str, model_run_id: str) -> dict:
        """Create or update one service stage; wait until available, else roll back."""
        stage = self.pipeline.stages[name]
        objs = self.plan.services[name]
        desired = copy.deepcopy(objs[0])
        if model_run_id != self.opts.run_id:
            desired = manifests.deployment(self.pipeline, stage, self.plan.codes[name], self.opts,
                                           model_run_id)
        dname = desired["metadata"]["name"]
        new_hash = template_hash(desired["spec"]["template"])
        desired["metadata"].setdefault("annotations", {})[TEMPLATE_HASH] = new_hash
        result = {"deployment": dname, "service": dname, "model_run_id": model_run_id,
                  "url": manifests.service_url(self.pipeline, stage, self.ns),
                  "proxy_url": f"{self.kube.host}/api/v1/namespaces/{self.ns}/services/"
                               f"{dname}:80/proxy{manifests.route(stage)}",
                  "port_forward": f"kubectl -n {self.ns} port-forward svc/{dname} 8080:80"}
        started = time.time()
        self.emit(name, "running", f"rolling out run {model_run_id}")
        first = False
        previous: Obj | None = None
        created = self.kube.create(desired)
        if created is not None:
            first = True
        else:
            def read() -> Obj:
                return self.kube.json(self.kube.apps.read_namespaced_deployment, dname, self.ns)

            def write(current: Obj) -> Obj:
                nonlocal previous
                body = copy.deepcopy(desired)
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                notes = dict(current["metadata"].get("annotations") or {})
                if notes.get(TEMPLATE_HASH) != new_hash:
                    previous = current["spec"]["template"]
                    notes[manifests.PREVIOUS_TEMPLATE] = json.dumps(previous, sort_keys=True)
                notes[TEMPLATE_HASH] = new_hash
                body["metadata"]["annotations"] = notes
                body["metadata"]["labels"] = {**(current["metadata"].get("labels") or {}),
                                              **desired["metadata"]["labels"]}
                return self.kube.replace(body)

            k8s_retry.update(read, write)
        for obj in objs[1:]:
            self.ensure_networking(obj)
        self.remove_stale(dname, {o["kind"] for o in objs})
        ok, why = self.await_rollout(dname, stage, model_run_id, new_hash)
        elapsed = time.time() - started
        if ok:
            result["status"] = "serving"
            self.emit(name, "serving", f"run {model_run_id} at {result['url']}", elapsed)
            return result
        if first:
            for kind in ("Ingress", "NetworkPolicy", "Service", "Deployment"):
                self.kube.delete(kind, self.ns, dname)
            result["status"] = "removed"
            result["message"] = f"{why}; first deploy removed"
        else:
            restored = self.roll_back(dname, stage)
            result["status"] = "rolled_back"
            result["message"] = f"{why}; rolled back to run {restored}"
            result["model_run_id"] = restored
        self.emit(name, "failed", result["message"], elapsed)
        return result

    def ensure_networking(self, obj: Obj) -> None:
        ensure_networking(self.kube, obj)

    def remove_stale(self, name: str, wanted: set[str]) -> None:
        """Remove our Ingress / NetworkPolicy of `name` that the config no longer asks for."""
        for kind in ("Ingress", "NetworkPolicy"):
            if kind in wanted:
                continue
            existing = self.kube.read(kind, self.ns, name)
            if existing and (existing["metadata"].get("labels") or {}).get(
                    "app.kubernetes.io/managed-by") == "nb2prod":
                self.kube.delete(kind, self.ns, name)

    def await_rollout(self, dname: str, stage: Any, model_run_id: str,
                      wanted_hash: str | None) -> tuple[bool, str]:
        """Watch the Deployment until the new template is fully available, or it fails.

        Failure: `Progressing=False, reason=ProgressDeadlineExceeded` (set by the
        controller after progressDeadlineSeconds), a new pod that cannot start
        (image pull, config error), or our own backstop past the deadline.
        """
        deadline_s = float(stage.integer("service", "MAX_STARTUP_TIME_SECONDS", 120))
        events: queue.Queue[tuple[str, str, Obj]] = queue.Queue()
        sel = ",".join(f"{k}={v}" for k, v in
                       {"app.kubernetes.io/instance": self.pipeline.name,
                        "app.kubernetes.io/component": stage.name}.items())
        watchers = [
            Watcher(self.kube.apps.list_namespaced_deployment, self.ns,
                    lambda t, o: events.put(("deployment", t, o)),
                    field_selector=f"metadata.name={dname}"),
            Watcher(self.kube.core.list_namespaced_pod, self.ns,
                    lambda t, o: events.put(("pod", t, o)), label_selector=sel),
        ]
        for watcher in watchers:
            watcher.start()
        limit = time.monotonic() + deadline_s + DEADLINE_SLACK
        pending = PendingPods(self.grace)
        pods: dict[str, Obj] = {}   # the new template's pods, as last seen
        try:
            while time.monotonic() < limit:
                for pod, _, reason in pending.overdue():
                    return False, f"pod {pod} cannot start: {reason}"
                try:
                    kind, etype, obj = events.get(timeout=1.0)
                except queue.Empty:
                    continue
                if kind == "pod":
                    notes = obj["metadata"].get("annotations") or {}
                    if notes.get(manifests.MODEL_RUN_ID) != model_run_id:
                        continue
                    if etype == "DELETED":
                        pods.pop(obj["metadata"]["name"], None)
                        continue
                    pods[obj["metadata"]["name"]] = obj
                    reason = pending.check(obj)
                    if reason:
                        return False, f"pod {obj['metadata']['name']} cannot start: {reason}"
                    continue
                if etype == "DELETED":
                    return False, f"Deployment {dname} was deleted"
                if wanted_hash and (obj["metadata"].get("annotations") or {}).get(
                        TEMPLATE_HASH) not in (wanted_hash, None):
                    continue  # an older version of the object
                verdict = rollout_verdict(obj)
                if verdict is not None:
                    ok, why = verdict
                    return ok, why if ok else self.with_pod_problem(why, pods.values())
            return False, self.with_pod_problem(
                f"Deployment {dname} not available after {deadline_s:.0f}s", pods.values())
        finally:
            for watcher in watchers:
                watcher.stop()

    def with_pod_problem(self, why: str, pods: Any) -> str:
        """`why` plus what is wrong with one of the new pods (:func:`with_pod_problem`)."""
        def read_log(name: str, container: str, previous: bool) -> str:
            resp = k8s_retry.call(self.kube.core.read_namespaced_pod_log, name, self.ns,
                                  container=container, tail_lines=20, previous=previous,
                                  _preload_content=False, _request_timeout=(10, 30))
            return "\n".join(response_lines(resp))
        return with_pod_problem(why, pods, read_log)

    def roll_back(self, dname: str, stage: Any) -> str:
        """Put back the pod template saved before this deploy changed it; return its run id."""
        restored = "?"
        restored_hash: str | None = None

        def read() -> Obj:
            return self.kube.json(self.kube.apps.read_namespaced_deployment, dname, self.ns)

        def write(current: Obj) -> Obj:
            nonlocal restored, restored_hash
            notes = dict(current["metadata"].get("annotations") or {})
            saved = notes.get(manifests.PREVIOUS_TEMPLATE)
            if not saved:
                raise PipelineFailure(f"Deployment {dname}: no saved previous template to roll "
                                      "back to")
            template = json.loads(saved)
            template.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
            restored = (template.get("metadata", {}).get("annotations") or {}).get(
                manifests.MODEL_RUN_ID, "?")
            body = copy.deepcopy(current)
            body["spec"]["template"] = template
            restored_hash = notes[TEMPLATE_HASH] = template_hash(template)
            body["metadata"]["annotations"] = notes
            return self.kube.replace(body)

        k8s_retry.update(read, write)
        self.emit(stage.name, "running", f"rolling back to run {restored}")
        ok, why = self.await_rollout(dname, stage, restored, restored_hash)
        if not ok:
            self.on_log(f"[{stage.name}] rollback to run {restored} not complete: {why}")
        return restored

    def record_rollout(self, status: str) -> None:
        """Note the roll-out's outcome where `status` and `runs` look: on the run's promote
        Job (an annotation) and, when it failed, through a short Job in the store's run.json
        (as the in-cluster roller does; a success is what run.json says already).  Neither
        is worth failing the deploy for."""
        if self.plan.promote is None:
            return
        failed = status != "succeeded"
        note = json.dumps({"status": "failed" if failed else "serving",
                           "reason": self.reason if failed else ""})
        values: Obj = {"rollout": {s["deployment"]: {k: s[k] for k in ("status", "model_run_id",
                                                                     "message") if k in s}
                                   for s in self.services.values()}}
        if failed:
            values.update(status="failed", reason=self.reason)
        code = self.plan.codes[self.pipeline.batch[0]]
        actions = [("on the promote Job", lambda: k8s_retry.call(
            self.kube.batch.patch_namespaced_job, self.plan.promote["metadata"]["name"],
            self.ns, {"metadata": {"annotations": {ROLLOUT_ANNOTATION: note}}},
            _request_timeout=(10, 60)))]
        if failed:
            actions.append(("in the store", lambda: self.kube.create(manifests.record_job(
                self.pipeline, code, self.opts, values))))
        for what, action in actions:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                self.on_log(f"nb2prod: could not record the roll-out {what}: "
                            f"{k8s_retry.message_of(exc)}")
