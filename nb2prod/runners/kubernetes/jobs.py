"""The deploy's batch part: one Job per batch stage, started in DAG order, watched.

A stage's Job is created the moment its last predecessor's Job reports
`Complete` (independent stages run in parallel); the state comes from Job
conditions delivered by a watch (never a sleep loop), pod logs are followed
and printed with a `[stage]` prefix, and a pod that cannot start (image pull,
missing Secret, unschedulable past its grace) fails its stage at once.  A stage
whose cache key the store knows is not run at all (as in `nb2prod run`).  The
promotion Job (`python -m nb2prod_runtime promote`) runs last, in the cluster,
where the store credentials are.
"""

from __future__ import annotations

import json
import queue
import time

from nb2prod import k8s_retry, manifests
from nb2prod.manifests import Obj
from nb2prod.roller import DEADLINE_SLACK, stuck_reason, summary_line
from nb2prod.runners.kubernetes.deploy_state import DeployState, Unit
from nb2prod.runners.kubernetes.pod_state import condition_true, has_started, terminated_states
from nb2prod.runners.kubernetes.streams import LogFollower, Watcher, response_lines

PROMOTE_UNIT = "(promote)"
PROMOTE_NOT_PASSED_CODE = manifests.PROMOTE_NOT_PASSED


class BatchJobs(DeployState):
    """Runs the batch Jobs and the promotion Job of one deploy (see the module doc)."""

    def run_jobs(self) -> bool:
        """Run every batch Job and the promotion Job in DAG order; True if all batch succeeded."""
        batch = self.pipeline.batch
        for name in batch:
            preds = [p for p in self.pipeline.predecessors(name) if p in batch]
            self.units[name] = Unit(name, self.plan.jobs[name], preds)
        if self.plan.promote is not None:
            self.units[PROMOTE_UNIT] = Unit(PROMOTE_UNIT, self.plan.promote, list(batch))
        if not self.units:
            return True
        by_job = {u.job["metadata"]["name"]: u for u in self.units.values()}
        events: queue.Queue[tuple[str, str, Obj]] = queue.Queue()
        selector = f"{manifests.selector(self.pipeline)},{manifests.RUN_ID_LABEL}={self.opts.run_id}"
        watchers = [
            Watcher(self.kube.batch.list_namespaced_job, self.ns,
                    lambda t, o: events.put(("job", t, o)), label_selector=selector),
            Watcher(self.kube.core.list_namespaced_pod, self.ns,
                    lambda t, o: events.put(("pod", t, o)), label_selector=selector),
        ]
        for unit in self.units.values():
            self.emit(unit.name, "waiting")
        for watcher in watchers:
            watcher.start()
        try:
            for unit in list(self.units.values()):
                if not unit.preds:
                    self.submit(unit)
            while any(u.state in ("waiting", "running") for u in self.units.values()):
                self.check_pending()
                try:
                    kind, etype, obj = events.get(timeout=1.0)
                except queue.Empty:
                    self.check_deadlines()
                    continue
                unit = by_job.get(obj["metadata"].get("name") if kind == "job" else
                                  obj["metadata"].get("labels", {}).get("job-name", ""))
                if unit is None and kind == "pod":
                    owners = obj["metadata"].get("ownerReferences") or []
                    unit = next((by_job.get(o.get("name")) for o in owners
                                 if o.get("kind") == "Job"), None)
                if unit is None or unit.state != "running":
                    continue
                if kind == "job":
                    self.on_job(unit, etype, obj)
                else:
                    self.on_pod(unit, etype, obj)
        except BaseException:
            self.abort_running()
            raise
        finally:
            for watcher in watchers:
                watcher.stop()
        return all(self.units[name].state == "done" for name in batch)

    # -- the stage cache (as `nb2prod run`: stages found in the store are not run) -------------
    def cached(self, unit: Unit) -> bool:
        """True when `unit`'s batch stage was reused from the store's cache (no Job then).

        The deploying machine reads the store itself (s3://); where it cannot
        (pvc://, no credentials here) every stage runs, as without a cache.
        """
        from nb2prod import artifacts, cache

        stage = self.pipeline.stages.get(unit.name)
        if stage is None or stage.type != "batch" or not cache.enabled(stage):
            return False
        try:
            store = artifacts.open_store(self.opts.store)
            key = cache.key_for(store, self.pipeline, stage, dict(self.opts.params),
                                self.opts.run_id, self.opts.files.get(unit.name),
                                cache.job_environ(unit.job),  # the pod's, not ours
                                here=False)
            if key is None:
                return False
            self.cache_keys[unit.name] = key
            hit = cache.lookup(store, self.pipeline.name, unit.name, key) if \
                self.use_cache else None
            if hit is None:
                return False
            cache.reuse(store, self.pipeline.name, unit.name, hit, self.opts.run_id)
        except Exception:  # noqa: BLE001 - a cache we cannot read is a miss
            return False
        unit.submitted = time.time()
        unit.state, unit.message, unit.finished = "done", f"cached (run {hit['run_id']})", \
            time.time()
        self.reused[unit.name] = hit["run_id"]
        self.mark("cached", unit.name)
        self.emit(unit.name, "cached", f"run {hit['run_id']}")
        return True

    def remember(self, unit: Unit) -> None:
        """A stage Job completed: index its outputs for later runs (best effort)."""
        from nb2prod import artifacts, cache

        key = self.cache_keys.get(unit.name)
        if key is None:
            return
        try:
            cache.remember(artifacts.open_store(self.opts.store), self.pipeline.name, unit.name,
                           key, self.opts.run_id)
        except Exception:  # noqa: BLE001, S110 - the next run just runs the stage again
            pass

    def submit(self, unit: Unit) -> None:
        if self.cached(unit):
            self.release(unit)
            return
        self.mark("create", unit.name)
        if unit.name == PROMOTE_UNIT and self.reused:  # what `status` shows for stages with no Job
            unit.job["metadata"].setdefault("annotations", {})[manifests.CACHED_ANNOTATION] = \
                json.dumps(self.reused, sort_keys=True)
        try:
            self.kube.create(unit.job)
        except Exception as exc:  # noqa: BLE001 - reported as the stage's failure
            self.fail(unit, f"cannot create Job {unit.job['metadata']['name']}: "
                            f"{k8s_retry.message_of(exc)}")
            return
        unit.submitted = time.time()
        self.set_state(unit, "running", f"Job {unit.job['metadata']['name']}")

    def on_job(self, unit: Unit, etype: str, job: Obj) -> None:
        if etype == "DELETED":
            self.fail(unit, f"Job {job['metadata']['name']} was deleted")
            return
        if condition_true(job, "Complete"):
            self.mark("complete", unit.name)
            if unit.name == PROMOTE_UNIT:
                self.finish_promote(unit, passed=True)
                return
            self.set_state(unit, "done")
            self.remember(unit)
            self.release(unit)
            return
        failed = condition_true(job, "Failed")
        if failed:
            if unit.name == PROMOTE_UNIT and PROMOTE_NOT_PASSED_CODE in unit.exit_codes:
                return  # already reported as "not promoted"
            why = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".rstrip(": ")
            self.fail(unit, why)

    def on_pod(self, unit: Unit, etype: str, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        if etype == "DELETED":
            return
        waiting = self.pending.waiting(name)
        reason = self.pending.check(pod, unit.name)
        if reason is not None:
            self.fail(unit, f"pod {name} cannot start: {reason}", delete_job=True)
            return
        if self.pending.waiting(name):
            if not waiting:
                self.emit(unit.name, "running", f"waiting up to {self.grace:.0f}s for a node: "
                          f"{stuck_reason(pod)}", unit.elapsed)
            return
        if has_started(pod) and name not in unit.pods:
            unit.started = unit.started or time.time()
            prefix = f"[{unit.name.strip('()')}] "
            follower = LogFollower(self.kube, self.ns, name,
                                   pod["spec"]["containers"][0]["name"], prefix, self.on_log)
            unit.pods[name] = follower
            follower.start()
        for term in terminated_states(pod):
            code = int(term.get("exitCode", 0))
            if code == 0 or name in unit.failed_pods:
                continue
            unit.failed_pods.add(name)
            unit.exit_codes.append(code)
            unit.termination = str(term.get("message") or "").strip() or \
                f"exit code {code} ({term.get('reason', 'Error')})"
            if unit.name == PROMOTE_UNIT and code == PROMOTE_NOT_PASSED_CODE:
                self.finish_promote(unit, passed=False, pod=pod)
                return
            retries = int(unit.job["spec"].get("backoffLimit", 0))
            attempt = len(unit.failed_pods)
            if attempt <= retries:
                self.emit(unit.name, "running", f"attempt {attempt} failed (exit code {code}"
                          f"{', ' + term['reason'] if term.get('reason') else ''}); retrying "
                          f"({attempt}/{retries})", unit.elapsed)

    def release(self, unit: Unit) -> None:
        """A unit finished: submit every waiting unit whose predecessors are all done."""
        for other in self.units.values():
            if other.state == "waiting" and unit.name in other.preds and \
                    all(self.units[p].state == "done" for p in other.preds):
                self.submit(other)

    def fail(self, unit: Unit, why: str, *, delete_job: bool = False) -> None:
        if unit.state not in ("waiting", "running"):
            return
        self.pending.forget(unit.name)
        if delete_job:
            try:
                self.kube.delete("Job", self.ns, unit.job["metadata"]["name"])
            except Exception:  # noqa: BLE001, S110 - the TTL cleans it up eventually
                pass
        detail = self.failure_detail(unit)
        message = f"{why}" + (f" -- {detail}" if detail and detail not in why else "")
        self.set_state(unit, "failed", message)
        for other in self.descendants(unit.name):
            if other.state == "waiting":
                self.set_state(other, "skipped", f"'{unit.name}' failed")

    def failure_detail(self, unit: Unit) -> str | None:
        """The stage's own last words: the runtime's summary line from its log."""
        for follower in unit.pods.values():
            follower.join(timeout=3.0)
        lines = [line for f in unit.pods.values() for line in f.lines]
        found = summary_line(lines) or summary_line(unit.termination.splitlines())
        if found is None and unit.termination:
            found = unit.termination.splitlines()[-1].strip()
        return found

    def descendants(self, name: str) -> list[Unit]:
        found: list[Unit] = []
        frontier = [name]
        while frontier:
            current = frontier.pop()
            for unit in self.units.values():
                if current in unit.preds and unit not in found:
                    found.append(unit)
                    frontier.append(unit.name)
        return found

    def check_pending(self) -> None:
        """Fail the stages of pods that stayed unschedulable past the grace period."""
        for pod, owner, reason in self.pending.overdue():
            unit = self.units.get(owner)
            if unit is not None and unit.state == "running":
                self.fail(unit, f"pod {pod} cannot start: {reason}", delete_job=True)

    def check_deadlines(self) -> None:
        """Backstop for a cluster that never sets a condition (a dead Job controller)."""
        now = time.time()
        for unit in self.units.values():
            if unit.state != "running" or unit.submitted is None:
                continue
            limit = float(unit.job["spec"].get("activeDeadlineSeconds", 3600)) + DEADLINE_SLACK
            if now - unit.submitted > limit:
                self.fail(unit, f"no Complete/Failed condition on Job "
                                f"{unit.job['metadata']['name']} after {limit:.0f}s",
                          delete_job=True)

    def abort_running(self) -> None:
        """Ctrl-C, SIGTERM or a crash: stop this run's Jobs rather than leave them orphaned;
        a deliberate stop (the panel's Stop: a stop note) marks them stopped, by whom."""
        from nb2prod.runners.interrupts import stop_note, stopped_text

        note = stop_note()
        state, message = ("stopped", stopped_text(note)) if note else ("failed", "interrupted")
        for unit in self.units.values():
            if unit.state == "running":
                # A stop suspends the Job (the cluster ends its pods) and leaves it with the
                # note: a run stopped in its first stage has no other Job `status` could
                # show it by.  A deleted Job is the fallback, and Ctrl-C's way.
                if note is None or not self.note_stop(unit, note, suspend=True):
                    try:
                        self.kube.delete("Job", self.ns, unit.job["metadata"]["name"])
                    except Exception:  # noqa: BLE001, S110
                        pass
                self.set_state(unit, state, message)
            elif note is not None and unit.submitted is not None:
                self.note_stop(unit, note)

    def note_stop(self, unit: Unit, note: dict, suspend: bool = False) -> bool:
        """A stopped run's Jobs that stay say so (`nb2prod status`: stopped, by whom);
        `suspend` also stops a running one.  False when the Job could not be patched."""
        patch: dict = {"metadata": {"annotations": {
            manifests.STOPPED_ANNOTATION: json.dumps(note)}}}
        if suspend:
            patch["spec"] = {"suspend": True}
        try:
            k8s_retry.call(self.kube.batch.patch_namespaced_job, unit.job["metadata"]["name"],
                           self.ns, patch, _request_timeout=(10, 30))
        except Exception:  # noqa: BLE001 - a note; the stop itself went through
            return False
        return True

    def finish_promote(self, unit: Unit, passed: bool, pod: Obj | None = None) -> None:
        if passed:
            self.promoted = True
            self.reason = summary_line(self.promote_log(unit, pod)) or "promoted"
            self.set_state(unit, "done", self.reason)
            return
        self.promoted = False
        line = summary_line(self.promote_log(unit, pod)) or "promotion gate not passed"
        # the runtime says "not promoted: run ID of PIPELINE: WHY"; every report of it
        # adds "not promoted" and the run itself (`status` and `runs` say WHY alone)
        self.reason = line.removeprefix("not promoted:").strip().removeprefix(
            f"run {self.opts.run_id} of {self.pipeline.name}:").strip()
        self.set_state(unit, "skipped", self.reason)
        # The Job retries the pod (exit 3 is a verdict, not a failure; promote is
        # idempotent): note the verdict on it, so `status` says "not promoted" at once
        # instead of "running" and then "failed".
        try:
            k8s_retry.call(self.kube.batch.patch_namespaced_job, unit.job["metadata"]["name"],
                           self.ns, {"metadata": {"annotations": {
                               manifests.PROMOTION_ANNOTATION: json.dumps(
                                   {"promoted": False, "reason": self.reason})}}},
                           _request_timeout=(10, 60))
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            self.on_log(f"nb2prod: could not note the promotion verdict on its Job: "
                        f"{k8s_retry.message_of(exc)}")

    def promote_log(self, unit: Unit, pod: Obj | None) -> list[str]:
        """The promotion verdict is the last line the promote command printed."""
        names = [pod["metadata"]["name"]] if pod is not None else list(unit.pods)
        lines: list[str] = []
        for name in names:
            try:
                resp = k8s_retry.call(self.kube.core.read_namespaced_pod_log, name, self.ns,
                                      container=manifests.PROMOTE, _preload_content=False,
                                      _request_timeout=(10, 30))
                lines += list(response_lines(resp))
            except Exception:  # noqa: BLE001 - fall back to what the follower saw
                follower = unit.pods.get(name)
                if follower is not None:
                    lines += follower.lines
        return lines
