"""In-cluster runs on Kubernetes: `schedule`, `unschedule`, `history`, `deploy --no-wait`.

The objects come from :mod:`nb2prod.retrain` (pure); this module applies them
and reads back what happened.  Nothing here waits for a run: the cluster runs
it (the CronJob controller, the Job's pod), and `history` reconstructs each
run from its Job and pod status, including the termination messages the
stage runtime and the roller leave behind.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from nb2prod import cron, manifests, retrain
from nb2prod.errors import Problem, UserError
from nb2prod.manifests import Obj
from nb2prod.pipeline import Pipeline
from nb2prod.roller import stuck_reason, summary_line
from nb2prod.runners.kubernetes.apply import (
    check_claim,
    ensure_namespace,
    ensure_networking,
    ensure_object,
)
from nb2prod.runners.kubernetes.cluster import Kube
from nb2prod.runners.kubernetes.options import upload_input_files
from nb2prod.runners.kubernetes.pod_state import condition_true


def promoted_run(pipeline: Pipeline, store: str, timeout: float = 10.0) -> str | None:
    """The run id of the store's latest.json, if the store answers from here in time.

    A service Deployment that `schedule` or `deploy --no-wait` has to create
    then serves that run at once, instead of waiting with zero replicas for
    the first run to pass.  A pvc:// store, missing credentials, or a store
    reachable only from inside the cluster (a hung connection: hence the
    thread and the timeout) all mean None, and the zero-replica start.
    """
    if not store.startswith("s3://"):
        return None
    import threading

    from nb2prod import artifacts

    found: dict[str, str | None] = {}

    def read() -> None:
        try:
            latest = artifacts.read_latest(store, pipeline.name)
        except Exception:  # noqa: BLE001 - unreadable from here: start idle
            return
        found["run"] = latest["run_id"] if latest else None

    reader = threading.Thread(target=read, name="nb2prod-read-latest", daemon=True)
    reader.start()
    reader.join(timeout)
    return found.get("run")


def apply_plan(kube: Kube, plan: retrain.RetrainPlan, opts: manifests.Options) -> dict[str, str]:
    """Create what a run needs; a Deployment that exists is left exactly as it is.

    Returns service stage -> "created" / "kept".  Serving only ever changes
    through a run that passed (the roller), never by scheduling.  A pvc:// claim
    that does not exist stops this before anything is created.
    """
    check_claim(kube, opts)
    ensure_namespace(kube, plan.namespace)
    for obj in plan.setup:
        ensure_object(kube, obj)
    services = {}
    for name, objs in plan.services.items():
        services[name] = "created" if kube.create(objs[0]) is not None else "kept"
        for obj in objs[1:]:
            ensure_networking(kube, obj)
    return services


def start_run(pipeline: Pipeline, opts: manifests.Options, *, context: str | None = None,
              use_cache: bool = True) -> dict:
    """Start one in-cluster run now (`deploy --no-wait`); returns at once.

    Its stages use the cache as scheduled runs do (`[schedule] CACHE = true`),
    unless `use_cache` is False (`--no-cache`).
    """
    serving = promoted_run(pipeline, opts.store) if pipeline.services else None
    plan = retrain.plan(pipeline, opts, serving=serving, use_cache=use_cache)
    job = plan.run_job(pipeline, opts.run_id, opts.namespace)
    upload_input_files(pipeline, opts)
    kube = Kube(context)
    services = apply_plan(kube, plan, opts)
    if kube.create(job) is None:
        raise UserError(Problem(f"Job {job['metadata']['name']} exists already in namespace "
                                f"{opts.namespace}"))
    return {"run_id": job["metadata"]["name"], "pipeline": pipeline.name,
            "namespace": opts.namespace, "status": "started", "services": services,
            "serving": serving}


def scheduled_objects(pipeline: Pipeline, opts: manifests.Options, cron_expr: str,
                      time_zone: str | None, suspend: bool, *, serving: str | None = None
                      ) -> tuple[retrain.RetrainPlan, Obj]:
    """The plan and CronJob of a schedule (pure; cron and zone already checked)."""
    plan = retrain.plan(pipeline, opts, serving=serving)
    return plan, retrain.cronjob(pipeline, plan, opts.namespace, cron_expr, time_zone, suspend)


def schedule(pipeline: Pipeline, opts: manifests.Options, cron_expr: str,
             time_zone: str | None = None, suspend: bool = False, *,
             context: str | None = None) -> dict:
    """Create or update the pipeline's CronJob (and everything its runs need)."""
    parsed = cron.checked(cron_expr, time_zone)
    serving = promoted_run(pipeline, opts.store) if pipeline.services else None
    plan, cronjob = scheduled_objects(pipeline, opts, cron_expr, time_zone, suspend,
                                      serving=serving)
    upload_input_files(pipeline, opts)
    kube = Kube(context)
    services = apply_plan(kube, plan, opts)
    name = cronjob["metadata"]["name"]
    action = "created"
    if kube.create(cronjob) is None:
        current = kube.read("CronJob", opts.namespace, name)
        body = dict(cronjob)
        body["metadata"] = {**cronjob["metadata"],
                            "resourceVersion": current["metadata"]["resourceVersion"]}
        kube.replace(body)
        action = "updated"
    upcoming = None if suspend else cron.next_run(parsed, time_zone)
    return {"cronjob": name, "action": action, "schedule": cronjob["spec"]["schedule"],
            "time_zone": time_zone, "suspend": suspend, "namespace": opts.namespace,
            "next_run": upcoming.isoformat() if upcoming else None, "services": services,
            "serving": serving}


def unschedule(pipeline: Pipeline, namespace: str, *, context: str | None = None) -> bool:
    """Delete the CronJob; runs already started finish, and their history is kept.

    (Orphan propagation: the Jobs stay, labelled as the pipeline's, so `history`
    still shows them and `delete` removes them.)  False when nothing was scheduled.
    """
    kube = Kube(context)
    name = retrain.cronjob_name(pipeline)
    if kube.read("CronJob", namespace, name) is None:
        return False
    kube.delete("CronJob", namespace, name, propagation="Orphan")
    return True


# -- history --------------------------------------------------------------------------------
def _message(status: Obj) -> tuple[Obj, str]:
    """(JSON verdict, text) of a container's termination message."""
    term = (status.get("state") or {}).get("terminated") or {}
    text = (term.get("message") or "").strip()
    if text.startswith("{"):
        try:
            return json.loads(text), text
        except ValueError:
            pass
    return {}, text


def _reason_of(status: Obj) -> str:
    verdict, text = _message(status)
    if verdict.get("reason"):
        return str(verdict["reason"])
    lines = text.splitlines()
    line = summary_line(lines) or (lines[-1].strip() if lines else "")
    term = (status.get("state") or {}).get("terminated") or {}
    return line or f"exit code {term.get('exitCode')} ({term.get('reason', 'Error')})"


def _flat_metrics(metrics: Any) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for stage, values in (metrics or {}).items():
        if isinstance(values, dict):
            for name, value in values.items():
                flat[f"{stage}.{name}"] = value
        else:
            flat[stage] = values
    return flat


#: What `kubectl create job --from=cronjob/NAME` puts on the Job it makes.
INSTANTIATE = "cronjob.kubernetes.io/instantiate"


def trigger(job: Obj) -> str:
    """"schedule" for a Job the CronJob controller started, else "manual" (`kubectl create
    job --from=cronjob/...` owns its Job to the CronJob too, but says so; `deploy --no-wait`)."""
    meta = job["metadata"]
    if (meta.get("annotations") or {}).get(INSTANTIATE) == "manual":
        return "manual"
    owners = [o.get("kind") for o in meta.get("ownerReferences") or []]
    return "schedule" if "CronJob" in owners else "manual"


def store_of(pod_spec: Obj) -> str | None:
    """The store URI a run pod uses, as the user gives it (`pvc://CLAIM/path` for a claim)."""
    containers = (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or [])
    value = next((e.get("value") for c in containers for e in c.get("env") or []
                  if e.get("name") == "NB2PROD_STORE"), None)
    if not value:
        return None
    claim = next((v["persistentVolumeClaim"]["claimName"] for v in pod_spec.get("volumes") or []
                  if v.get("name") == "store" and v.get("persistentVolumeClaim")), None)
    local = f"file://{manifests.STORE_DIR}"
    if claim and (value == local or value.startswith(local + "/")):
        return f"pvc://{claim}{value[len(local):] or '/'}"
    return value


def run_summary(job: Obj, pods: list[Obj]) -> dict:
    """One run of the history from its Job and pods (pure).

    status: running, pending, succeeded, not_promoted or failed; for a failure
    the stage that failed (a stage name, "promote-and-roll", or the Job itself
    when it ran out of time) and why, from termination messages and conditions.
    """
    meta, jstatus = job["metadata"], job.get("status") or {}
    failed_cond = condition_true(job, "Failed")
    record: dict[str, Any] = {
        "run_id": meta["name"],
        "trigger": trigger(job),
        "start": jstatus.get("startTime") or meta.get("creationTimestamp"),
        "end": jstatus.get("completionTime") or (failed_cond or {}).get("lastTransitionTime"),
        "status": "succeeded" if condition_true(job, "Complete") else (
            "failed" if failed_cond else ("running" if jstatus.get("active") else "pending")),
        "promoted": None, "metrics": {}, "failed_stage": None, "reason": None, "stages": {},
        "cached": {},   # stage -> the run whose outputs it reused (run-stage's verdict)
    }
    pods = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    if not pods:
        if failed_cond:
            record["reason"] = f"{failed_cond.get('reason')}: {failed_cond.get('message', '')}"
            if failed_cond.get("reason") == "BackoffLimitExceeded":
                # backoffLimit 0 and no pod: the one pod went away (`kubectl delete pod`,
                # eviction) while it ran, taking which stage it was in with it
                record["reason"] = ("its pod was deleted or evicted before the run ended "
                                    f"({record['reason']})")
        return record
    pod = pods[-1]
    names = json.loads((pod["metadata"].get("annotations") or {}).get(
        retrain.STAGES_ANNOTATION, "{}"))
    pstatus = pod.get("status") or {}
    statuses = [(names.get(s["name"], s["name"]), s)
                for s in pstatus.get("initContainerStatuses") or []]
    statuses += [(s["name"], s) for s in pstatus.get("containerStatuses") or []]
    for stage, status in statuses:
        state = status.get("state") or {}
        term = state.get("terminated")
        if term is not None:
            ok = term.get("exitCode") == 0
            record["stages"][stage] = "succeeded" if ok else "failed"
            cached_from = _message(status)[0].get("cached_from")
            if ok and cached_from:
                record["cached"][stage] = str(cached_from)
            if not ok and record["failed_stage"] is None:
                record["failed_stage"], record["reason"] = stage, _reason_of(status)
        elif "running" in state:
            record["stages"][stage] = "running"
        else:
            waiting = (state.get("waiting") or {}).get("reason", "waiting")
            record["stages"][stage] = "pending" if waiting == "PodInitializing" else waiting
    verdict, _ = _message(next((s for n, s in statuses if n == retrain.FINISH), {}))
    if verdict:
        record["metrics"] = _flat_metrics(verdict.get("metrics"))
        record["promoted"] = verdict.get("promoted")
        if verdict.get("status") == "not_promoted":
            record["status"] = "not_promoted"
            record["failed_stage"] = None
            record["reason"] = verdict.get("reason")
    if record["status"] in ("pending", "running"):
        # Not failed (yet): say what it waits for when that will not fix itself
        # (an image pull, a missing Secret) or needs a node (Unschedulable).
        record["reason"] = stuck_reason(pod)
    if record["status"] == "failed" and record["failed_stage"] is None:
        stuck = stuck_reason(pod)
        running = [n for n, st in record["stages"].items() if st != "succeeded"]
        record["failed_stage"] = running[0] if running else None
        record["reason"] = stuck or (f"{failed_cond.get('reason')}: "
                                     f"{failed_cond.get('message', '')}" if failed_cond else None)
    return record


def history(pipeline: Pipeline, namespace: str, *, context: str | None = None) -> list[dict]:
    """Every in-cluster run still recorded in the cluster, newest first."""
    kube = Kube(context)
    sel = f"{manifests.selector(pipeline)},app.kubernetes.io/component={retrain.RUN}"
    jobs = kube.list("Job", namespace, sel)
    by_job: dict[str, list[Obj]] = {}
    for pod in kube.list("Pod", namespace, sel):
        job_name = (pod["metadata"].get("labels") or {}).get("job-name")
        if job_name:
            by_job.setdefault(job_name, []).append(pod)
    runs = [run_summary(job, by_job.get(job["metadata"]["name"], [])) for job in jobs]
    for run, job in zip(runs, jobs):
        run["store"] = store_of(job["spec"]["template"]["spec"])
    return sorted(runs, key=lambda r: (r["start"] or "", r["run_id"]), reverse=True)


def cron_status(pipeline: Pipeline, namespace: str, *, context: str | None = None
                ) -> Obj | None:
    """The CronJob's schedule, suspension and last schedule time (None if unscheduled)."""
    kube = Kube(context)
    obj = kube.read("CronJob", namespace, retrain.cronjob_name(pipeline))
    if obj is None:
        return None
    spec, status = obj["spec"], obj.get("status") or {}
    return {"cronjob": obj["metadata"]["name"], "schedule": spec["schedule"],
            "store": store_of(spec["jobTemplate"]["spec"]["template"]["spec"]),
            "time_zone": spec.get("timeZone"), "suspend": bool(spec.get("suspend")),
            "last_schedule": status.get("lastScheduleTime"),
            "active": [a.get("name") for a in status.get("active") or []]}


def format_time(value: str | None) -> str:
    """An API timestamp as local `YYYY-MM-DD HH:MM:SS` (or "-")."""
    if not value:
        return "-"
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
