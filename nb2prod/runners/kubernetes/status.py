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
from nb2prod.runners.kubernetes.cluster import Kube
from nb2prod.runners.kubernetes.pod_state import condition_true
from nb2prod.runners.kubernetes.rollout import ROLLOUT_ANNOTATION


def _job_state(job: Obj) -> str:
    if condition_true(job, "Complete"):
        return "Complete"
    failed = condition_true(job, "Failed")
    if failed:
        return f"Failed ({failed.get('reason', '')})".replace(" ()", "")
    status = job.get("status") or {}
    if status.get("active"):
        return "Running"
    return "Pending"


def status(pipeline: Pipeline, namespace: str, *, context: str | None = None) -> dict:
    """What is deployed: runs (newest first) with Job states, services with readiness."""
    kube = Kube(context)
    sel = manifests.selector(pipeline)
    runs: dict[str, dict] = {}
    for job in kube.list("Job", namespace, sel):
        labels = job["metadata"].get("labels") or {}
        run = labels.get(manifests.RUN_ID_LABEL, "?")
        component = labels.get("app.kubernetes.io/component", "?")
        if component == "run":  # an in-cluster run (schedule, --no-wait): one Job, its name
            state = _job_state(job)
            runs[job["metadata"]["name"]] = {
                "run_id": job["metadata"]["name"], "stages": {}, "in_cluster": True,
                "promotion": "see `nb2prod history`",
                "created": job["metadata"].get("creationTimestamp"),
                "status": {"Complete": "succeeded", "Running": "running",
                           "Pending": "pending"}.get(state, "failed")}
            continue
        entry = runs.setdefault(run, {"run_id": run, "stages": {}, "promotion": None,
                                      "created": job["metadata"].get("creationTimestamp")})
        state = _job_state(job)
        if component == manifests.RECORD:
            continue  # bookkeeping, not a stage
        if component == manifests.PROMOTE:
            entry["promotion"] = {"Complete": "promoted", "Running": "running",
                                  "Pending": "pending"}.get(state, "not promoted / failed")
            note = (job["metadata"].get("annotations") or {}).get(ROLLOUT_ANNOTATION)
            if note:
                with contextlib.suppress(ValueError):
                    entry["rollout"] = json.loads(note)
        else:
            entry["stages"][component] = state
    for entry in runs.values():
        if entry.get("in_cluster"):
            continue
        states = list(entry["stages"].values())
        if any(s.startswith("Failed") for s in states) or \
                (entry.get("rollout") or {}).get("status") == "failed":
            entry["status"] = "failed"  # a batch stage, or the roll-out after promotion
        elif any(s in ("Running", "Pending") for s in states) or entry["promotion"] in (
                "running", "pending"):
            entry["status"] = "running"
        else:
            entry["status"] = "succeeded"
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
    ordered = sorted(runs.values(), key=lambda r: r["run_id"], reverse=True)
    return {"pipeline": pipeline.name, "namespace": namespace, "stages": pipeline.order,
            "runs": ordered, "last_run": ordered[0] if ordered else None, "services": services}


