"""`nb2prod status`: what is deployed, read back from Jobs and Deployments.

Runs come from the Jobs' labels (a deploy's Job per stage and its promote
Job, or one Job per in-cluster run), services from their Deployments'
status and the roll-out verdict `nb2prod.roller` computes for the in-cluster
roller too.
"""

from __future__ import annotations

import contextlib
import json

from nb2prod import manifests
from nb2prod.manifests import Obj
from nb2prod.pipeline import Pipeline
from nb2prod.roller import rollout_verdict
from nb2prod.run_verdict import promotion_verdict
from nb2prod.runners.kubernetes.cluster import Kube
from nb2prod.runners.kubernetes.pod_state import condition_true
from nb2prod.runners.kubernetes.rollout import ROLLOUT_ANNOTATION


def _job_state(job: Obj) -> str:
    if condition_true(job, "Complete"):
        return "Complete"
    failed = condition_true(job, "Failed")
    if failed:
        return f"Failed ({failed.get('reason', '')})".replace(" ()", "")
    if condition_true(job, "Suspended"):
        return "Suspended"  # how a stopped deploy leaves the Job it stopped
    status = job.get("status") or {}
    if status.get("active"):
        return "Running"
    return "Pending"


def runs_from_jobs(jobs: list[Obj]) -> list[dict]:
    """The runs the Jobs show, newest first (by when their first Job was created).

    A deploy's run is its stage Jobs plus a promote Job; one without a promote
    Job and with nothing running never reached promotion (its `nb2prod deploy`
    was killed, or lost the cluster): "incomplete", as `nb2prod runs` calls it
    in the store, never "succeeded".
    """
    runs: dict[str, dict] = {}
    for job in jobs:
        labels = job["metadata"].get("labels") or {}
        run = labels.get(manifests.RUN_ID_LABEL, "?")
        component = labels.get("app.kubernetes.io/component", "?")
        created = job["metadata"].get("creationTimestamp") or ""
        state = _job_state(job)
        if component == "run":  # an in-cluster run (schedule, --no-wait): one Job, its name
            runs[job["metadata"]["name"]] = {
                "run_id": job["metadata"]["name"], "stages": {}, "in_cluster": True,
                "promotion": "see `nb2prod history`", "created": created,
                "status": {"Complete": "succeeded", "Running": "running",
                           "Pending": "pending"}.get(state, "failed")}
            continue
        entry = runs.setdefault(run, {"run_id": run, "stages": {}, "promotion": None,
                                      "created": created})
        entry["created"] = min(entry["created"], created)
        with contextlib.suppress(ValueError, TypeError):
            stopped = json.loads((job["metadata"].get("annotations") or {}).get(
                manifests.STOPPED_ANNOTATION) or "null")
            if isinstance(stopped, dict):
                entry["stopped"] = stopped  # the deploy was stopped (the panel's Stop)
                if state in ("Suspended", "Running", "Pending"):
                    state = "Stopped"  # the Job the stop ended (suspended: pods gone)
        if component == manifests.RECORD:
            continue  # bookkeeping, not a stage
        if component == manifests.PROMOTE:
            entry["promotion"] = {"Complete": "promoted", "Running": "running",
                                  "Pending": "pending", "Stopped": "stopped"}.get(
                state, "not promoted / failed")
            notes = job["metadata"].get("annotations") or {}
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                if notes.get(ROLLOUT_ANNOTATION):
                    entry["rollout"] = json.loads(notes[ROLLOUT_ANNOTATION])
                for stage, source in json.loads(notes.get(manifests.CACHED_ANNOTATION)
                                                or "{}").items():
                    entry["stages"].setdefault(stage, f"cached ({source})")  # no Job of its own
                gate = json.loads(notes.get(manifests.PROMOTION_ANNOTATION) or "{}")
                if gate.get("promoted") is False:  # the deploy read the gate's verdict
                    entry["promotion"] = "not promoted"
                    # why, in the words `nb2prod runs` uses for the run in the store
                    entry["verdict"] = promotion_verdict({**gate, "status": "succeeded"})
        else:
            entry["stages"][component] = state
    for entry in runs.values():
        if not entry.get("in_cluster"):
            entry["status"] = _deploy_run_status(entry)
    return sorted(runs.values(), key=lambda r: (r["created"], r["run_id"]), reverse=True)


def _deploy_run_status(entry: dict) -> str:
    states = list(entry["stages"].values())
    if entry.get("stopped"):
        return "stopped"
    if any(s.startswith("Failed") for s in states) or \
            (entry.get("rollout") or {}).get("status") == "failed":
        return "failed"  # a batch stage, or the roll-out after promotion
    if entry["promotion"] == "not promoted":
        return "not promoted"  # the gate said no (its Job may still be retrying the pod)
    if any(s in ("Running", "Pending") for s in states) or entry["promotion"] in (
            "running", "pending"):
        return "running"
    if entry["promotion"] is None:
        return "incomplete"  # every Job ended, but the deploy never started the promotion
    return "succeeded"


def status(pipeline: Pipeline, namespace: str, *, context: str | None = None) -> dict:
    """What is deployed: runs (newest first) with Job states, services with readiness."""
    kube = Kube(context)
    ordered = runs_from_jobs(kube.list("Job", namespace, manifests.selector(pipeline)))
    services = {}
    for name in pipeline.services:
        dname = manifests.service_name(pipeline, name)
        dep = kube.read("Deployment", namespace, dname)
        if dep is None:
            services[name] = {"deployment": dname, "exists": False}
            continue
        st = dep.get("status") or {}
        notes = (dep["spec"]["template"]["metadata"].get("annotations") or {})
        verdict = rollout_verdict(dep)
        services[name] = {
            "deployment": dname, "exists": True,
            "replicas": int(dep["spec"].get("replicas", 1)),
            "ready": int(st.get("readyReplicas", 0)),
            "available": int(st.get("availableReplicas", 0)),
            "model_run_id": notes.get(manifests.MODEL_RUN_ID),
            "rollout": "complete" if verdict and verdict[0] else (
                "failed" if verdict else "in progress"),
            "url": manifests.service_url(pipeline, pipeline.stages[name], namespace),
        }
    return {"pipeline": pipeline.name, "namespace": namespace, "stages": pipeline.order,
            "runs": ordered, "last_run": ordered[0] if ordered else None, "services": services}


