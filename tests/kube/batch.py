"""Job and CronJob controllers.

Jobs: pods named ``<job>-<random5>`` from the template (labels ``job-name``,
``controller-uid``, ``batch.kubernetes.io/job-name``,
``batch.kubernetes.io/controller-uid``, a controller ownerReference), retries
up to ``backoffLimit`` with a (shortened) exponential delay,
``activeDeadlineSeconds``, ``ttlSecondsAfterFinished``, and terminal
conditions as Kubernetes >= 1.31 reports them (``SuccessCriteriaMet`` then
``Complete``; ``FailureTarget`` then ``Failed`` with reason
``BackoffLimitExceeded`` / ``DeadlineExceeded``).

CronJobs are not run on a clock: a test calls :meth:`CronJobController.trigger`
for a scheduled time, and the Job is created exactly as the real controller
would (name ``<cronjob>-<unix minutes>``, labels/annotations from the
jobTemplate, the ``batch.kubernetes.io/cronjob-scheduled-timestamp``
annotation, a controller ownerReference), honouring ``suspend``,
``startingDeadlineSeconds``, ``concurrencyPolicy`` and the history limits.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
import zoneinfo
from typing import TYPE_CHECKING, Any

from . import cron
from .errors import ApiError, not_found
from .podtemplate import create_pod
from .resources import BY_PLURAL
from .util import by_controller, condition, iso, owner_ref, parse_time, set_condition, utcnow

if TYPE_CHECKING:
    from .api import Api
    from .store import Obj

TERMINAL = ("Succeeded", "Failed")
SCHEDULED_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"


def job_finished(job: Obj) -> str | None:
    """``Complete`` / ``Failed`` if the Job has that condition True, else None."""
    for ctype in ("Complete", "Failed"):
        cond = condition(job, ctype)
        if cond is not None and cond.get("status") == "True":
            return ctype
    return None


class JobController:
    """Runs Jobs to completion or failure."""

    def __init__(self, api: Api, backoff_seconds: float) -> None:
        self.api = api
        self.backoff_seconds = backoff_seconds
        self.res = BY_PLURAL["jobs"]
        # job uid -> pod uid -> "active" / "Succeeded" / "Failed" (what the job-tracking finalizer records)
        self._seen: dict[str, dict[str, str]] = {}
        self._last_failure: dict[str, float] = {}

    def sync(self) -> None:
        """Reconcile every Job."""
        pods_by_owner = by_controller(self.api.store.scan("pods"))
        live = set()
        for job in self.api.store.scan("jobs"):
            live.add(job["metadata"]["uid"])
            self._sync_one(job, pods_by_owner.get(job["metadata"]["uid"], []))
        for uid in list(self._seen):
            if uid not in live:
                self._seen.pop(uid)
                self._last_failure.pop(uid, None)

    def _sync_one(self, job: Obj, pods: list[Obj]) -> None:
        meta, spec = job["metadata"], job["spec"]
        ns, uid = meta["namespace"], meta["uid"]
        if meta.get("deletionTimestamp"):
            return
        finished = job_finished(job)
        if finished:
            self._ttl(job)
            return
        seen = self._seen.setdefault(uid, {})
        new_succeeded = new_failed = 0
        present = set()
        for pod in pods:
            puid = pod["metadata"]["uid"]
            present.add(puid)
            phase = (pod.get("status") or {}).get("phase")
            if phase in TERMINAL and seen.get(puid) not in TERMINAL:
                seen[puid] = phase
                if phase == "Succeeded":
                    new_succeeded += 1
                else:
                    new_failed += 1
                    self._last_failure[uid] = time.monotonic()
            elif phase not in TERMINAL:
                seen.setdefault(puid, "active")
        for puid, state in list(seen.items()):
            if puid not in present and state == "active":  # deleted before finishing: counts as failed
                seen[puid] = "Failed"
                new_failed += 1
                self._last_failure[uid] = time.monotonic()
        status = job.get("status") or {}
        succeeded = int(status.get("succeeded", 0)) + new_succeeded
        failed = int(status.get("failed", 0)) + new_failed
        active = [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL
                  and not p["metadata"].get("deletionTimestamp")]
        terminating = [p for p in pods if p["metadata"].get("deletionTimestamp")
                       and (p.get("status") or {}).get("phase") not in TERMINAL]
        restarts = sum(s.get("restartCount", 0) for p in active
                       for s in (p.get("status") or {}).get("containerStatuses") or [])
        start = parse_time(status.get("startTime")) or utcnow()
        completions = spec.get("completions")
        parallelism = int(spec.get("parallelism", 1))
        outcome: tuple[str, str, str] | None = None
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and (utcnow() - start).total_seconds() >= int(deadline):
            outcome = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        elif failed + restarts > int(spec.get("backoffLimit", 6)):
            outcome = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif (completions is not None and succeeded >= int(completions)) or (
                completions is None and succeeded > 0 and not active):
            outcome = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        if outcome is not None and outcome[0] == "Failed":
            failed += len(active)  # terminated by the controller: counted as failed, as upstream does
            for pod in active:
                seen[pod["metadata"]["uid"]] = "Failed"
        if outcome is not None or spec.get("suspend"):
            for pod in active:
                self.api.internal_delete(BY_PLURAL["pods"], ns, pod["metadata"]["name"])
            terminating += active
            active = []
        else:
            want = parallelism if completions is None else min(parallelism, int(completions) - succeeded)
            delay = self.backoff_seconds * 2 ** max(failed - 1, 0)
            backed_off = time.monotonic() - self._last_failure.get(uid, 0.0) >= delay
            if len(active) < want and backed_off:
                for _ in range(want - len(active)):
                    created = self._create_pod(job)
                    if created is None:
                        break
                    seen[created["metadata"]["uid"]] = "active"
                    active.append(created)
            elif len(active) > want:
                for pod in active[want:]:
                    self.api.internal_delete(BY_PLURAL["pods"], ns, pod["metadata"]["name"])
                active = active[:want]
        ready = sum(1 for p in active if (condition(p, "Ready") or {}).get("status") == "True")
        if outcome is not None:
            self.api.record_event(job, outcome[1] if outcome[0] == "Failed" else "Completed",
                                  outcome[2] if outcome[0] == "Failed" else "Job completed",
                                  "Warning" if outcome[0] == "Failed" else "Normal", "job-controller")

        def update(obj: Obj) -> None:
            st = obj.setdefault("status", {})
            st.setdefault("startTime", iso(start))
            for key, value in (("active", len(active)), ("succeeded", succeeded), ("failed", failed)):
                if value:
                    st[key] = value
                else:
                    st.pop(key, None)
            st["ready"] = ready
            st["terminating"] = len(terminating)
            st["uncountedTerminatedPods"] = {}
            if spec.get("suspend") and outcome is None:
                set_condition(st, "Suspended", "True", "JobSuspended", "Job suspended", probe_time=True)
            elif condition(obj, "Suspended") is not None:
                set_condition(st, "Suspended", "False", "JobResumed", "Job resumed", probe_time=True)
            if outcome is not None:
                kind, reason, message = outcome
                first = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
                set_condition(st, first, "True", reason, message, probe_time=True)
                set_condition(st, kind, "True", reason, message, probe_time=True)
                if kind == "Complete":
                    st["completionTime"] = iso()

        self.api.internal_status(self.res, ns, meta["name"], update)

    def _create_pod(self, job: Obj) -> Obj | None:
        try:
            return create_pod(self.api, job, "job-controller", {"batch.kubernetes.io/job-tracking": ""})
        except ApiError:
            return None

    def _ttl(self, job: Obj) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        status = job.get("status") or {}
        finished_at = parse_time(status.get("completionTime"))
        if finished_at is None:
            cond = condition(job, "Failed")
            finished_at = parse_time(cond.get("lastTransitionTime")) if cond else None
        if finished_at is not None and (utcnow() - finished_at).total_seconds() >= int(ttl):
            self.api.internal_delete(self.res, job["metadata"]["namespace"], job["metadata"]["name"], "Background")


class CronJobController:
    """Creates Jobs for triggered schedule times and keeps CronJob status/history."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.res = BY_PLURAL["cronjobs"]
        self.jobs = BY_PLURAL["jobs"]

    def trigger(self, namespace: str, name: str, scheduled_time: dt.datetime | None = None) -> Obj | None:
        """Run the schedule for ``scheduled_time`` (default: the latest scheduled time <= now).

        Returns the created Job, or None when the real controller would not create
        one (suspended, missed starting deadline, Forbid with a running Job, or a
        Job for that time already exists).
        """
        cj = self.api.store.get("cronjobs", namespace, name)
        if cj is None:
            raise not_found("cronjobs", "batch", name)
        spec = cj["spec"]
        if spec.get("suspend"):
            return None
        tz = zoneinfo.ZoneInfo(spec["timeZone"]) if spec.get("timeZone") else dt.timezone.utc
        now = utcnow()
        if scheduled_time is None:
            scheduled = cron.parse(spec["schedule"]).latest_at_or_before(now.astimezone(tz))
        else:
            aware = scheduled_time if scheduled_time.tzinfo else scheduled_time.replace(tzinfo=dt.timezone.utc)
            scheduled = aware.astimezone(tz).replace(second=0, microsecond=0)
        sds = spec.get("startingDeadlineSeconds")
        if sds is not None and (now - scheduled).total_seconds() > int(sds):
            self.api.record_event(cj, "MissSchedule", f"Missed scheduled time to start a job: {iso(scheduled)}",
                                  "Warning", "cronjob-controller")
            return None
        active = self._active_jobs(cj)
        policy = spec.get("concurrencyPolicy", "Allow")
        if active and policy == "Forbid":
            self.api.record_event(cj, "JobAlreadyActive", "Not starting job because prior execution is running "
                                  "and concurrency policy is Forbid", component="cronjob-controller")
            return None
        job_name = f"{name}-{int(scheduled.timestamp()) // 60}"
        if self.api.store.peek("jobs", namespace, job_name) is not None:
            return None
        if active and policy == "Replace":
            for running in active:
                self.api.internal_delete(self.jobs, namespace, running["metadata"]["name"], "Background")
                self.api.record_event(cj, "SuccessfulDelete", f"Deleted job {running['metadata']['name']}",
                                      component="cronjob-controller")
        template = spec.get("jobTemplate") or {}
        tmeta = template.get("metadata") or {}
        job: Obj = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
            "name": job_name, "namespace": namespace, "labels": dict(tmeta.get("labels") or {}),
            "annotations": {**(tmeta.get("annotations") or {}), SCHEDULED_ANNOTATION: _rfc3339(scheduled)},
            "ownerReferences": [owner_ref(cj)]}, "spec": copy.deepcopy(template.get("spec") or {})}
        if not job["metadata"]["labels"]:
            job["metadata"].pop("labels")
        created = self.api.internal_create(self.jobs, job)
        ref = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "namespace": namespace,
               "uid": created["metadata"]["uid"], "resourceVersion": created["metadata"]["resourceVersion"]}

        def record(obj: Obj) -> None:
            st = obj.setdefault("status", {})
            st["active"] = [*(st.get("active") or []), ref]
            st["lastScheduleTime"] = iso(scheduled)
        self.api.internal_status(self.res, namespace, name, record)
        self.api.record_event(cj, "SuccessfulCreate", f"Created job {job_name}", component="cronjob-controller")
        return created

    def _active_jobs(self, cj: Obj) -> list[Obj]:
        ns = cj["metadata"]["namespace"]
        jobs = [self.api.store.peek("jobs", ns, ref["name"]) for ref in (cj.get("status") or {}).get("active") or []]
        return [j for j in jobs if j is not None and not job_finished(j) and not j["metadata"].get("deletionTimestamp")]

    def sync(self) -> None:
        """Prune ``status.active``, record ``lastSuccessfulTime``, enforce the history limits."""
        jobs_by_owner = by_controller(self.api.store.scan("jobs"))
        for cj in self.api.store.scan("cronjobs"):
            if not cj["metadata"].get("deletionTimestamp"):
                self._sync_one(cj, jobs_by_owner.get(cj["metadata"]["uid"], []))

    def _sync_one(self, cj: Obj, jobs: list[Obj]) -> None:
        ns, name = cj["metadata"]["namespace"], cj["metadata"]["name"]
        live = {j["metadata"]["uid"]: j for j in jobs if not j["metadata"].get("deletionTimestamp")}
        succeeded = [j for j in live.values() if job_finished(j) == "Complete"]
        failed = [j for j in live.values() if job_finished(j) == "Failed"]
        last_success = max((j["status"].get("completionTime", "") for j in succeeded), default=None)

        def update(obj: Obj) -> None:
            st = obj.setdefault("status", {})
            kept = [r for r in st.get("active") or [] if r["uid"] in live and not job_finished(live[r["uid"]])]
            if kept:
                st["active"] = kept
            else:
                st.pop("active", None)
            if last_success and last_success > st.get("lastSuccessfulTime", ""):
                st["lastSuccessfulTime"] = last_success
        self.api.internal_status(self.res, ns, name, update)
        spec = cj["spec"]
        for finished, limit in ((succeeded, spec.get("successfulJobsHistoryLimit", 3)),
                                (failed, spec.get("failedJobsHistoryLimit", 1))):
            finished.sort(key=_scheduled_key)
            for job in finished[:max(0, len(finished) - int(limit))]:
                self.api.internal_delete(self.jobs, ns, job["metadata"]["name"], "Background")
                self.api.record_event(cj, "SuccessfulDelete", f"Deleted job {job['metadata']['name']}",
                                      component="cronjob-controller")


def _scheduled_key(job: Obj) -> Any:
    stamp = (job["metadata"].get("annotations") or {}).get(SCHEDULED_ANNOTATION)
    parsed = parse_time(stamp) if stamp else None
    return parsed or parse_time(job["metadata"]["creationTimestamp"])


def _rfc3339(when: dt.datetime) -> str:
    text = when.isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")
