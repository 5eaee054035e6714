"""`nb2prod deploy`: a pipeline on Kubernetes, driven from this machine.

The objects come from `nb2prod.manifests` (pure); the deploy decides *when*
each is created:

1. namespace, ServiceAccounts/Role/RoleBinding and the code ConfigMaps
   (`apply`: an existing, identical object is left alone, so re-deploying
   unchanged inputs writes nothing but the new run);
2. the batch Jobs in DAG order, then the promotion Job (`jobs`);
3. each service stage's Deployment rolled to the new run (`rollout`).

Stage failures are not exceptions: the result's `status` says what happened,
so the CLI and the JupyterLab handler decide how to report it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nb2prod.manifests import Obj
from nb2prod.pipeline import load_pipeline
from nb2prod.runners.kubernetes.apply import (
    check_claim,
    ensure_namespace,
    ensure_object,
    remove_namespace,
)
from nb2prod.runners.kubernetes.cluster import Kube
from nb2prod.runners.kubernetes.deploy_state import OnEvent, OnLog
from nb2prod.runners.kubernetes.jobs import PROMOTE_UNIT, BatchJobs
from nb2prod.runners.kubernetes.options import options_for, upload_input_files
from nb2prod.runners.kubernetes.rollout import RollOuts


class Deployer(BatchJobs, RollOuts):
    """One `deploy` of one pipeline for one run id: set up, run the Jobs, promote, roll out."""

    # -- setup ----------------------------------------------------------------------------------
    def ensure_namespace(self) -> bool:
        return ensure_namespace(self.kube, self.plan.namespace)

    def ensure(self, obj: Obj) -> None:
        ensure_object(self.kube, obj)

    def preflight(self) -> None:
        """What must hold before anything is created (once): the pvc:// claim exists."""
        if not self.checked:
            check_claim(self.kube, self.opts)
            self.checked = True

    def setup(self) -> None:
        """Check the store's claim, upload the input files, then create the namespace, RBAC
        and code ConfigMaps; a namespace created here is removed again if the rest of the
        setup fails."""
        self.preflight()
        upload_input_files(self.pipeline, self.opts)
        created = self.ensure_namespace()
        try:
            for obj in self.plan.setup:
                self.ensure(obj)
        except BaseException:
            if created:
                remove_namespace(self.kube, self.ns)
            raise

    # -- the whole deploy -------------------------------------------------------------------
    def run(self) -> dict:
        """Set up, run the Jobs, promote, roll out; the result as a JSON-able dict."""
        started = time.time()
        self.setup()
        batch_ok = self.run_jobs()
        status = "succeeded"
        if not batch_ok:
            status = "failed"
            failed = [u for u in self.units.values() if u.state == "failed"]
            self.reason = "; ".join(f"stage '{u.name}' {u.message}" for u in failed)
        elif self.plan.promote is not None and self.promoted is not True:
            status = "not_promoted" if self.promoted is False else "failed"
            if self.promoted is None:
                unit = self.units[PROMOTE_UNIT]
                self.reason = f"promotion failed: {unit.message}"
        if status == "succeeded":
            # Without batch stages there is no new run: serve whatever latest.json names.
            model = self.opts.run_id if self.pipeline.batch else "latest"
            for name in self.pipeline.services:
                self.services[name] = self.roll_out(name, model)
            if any(s["status"] != "serving" for s in self.services.values()):
                status = "failed"
                self.reason = "; ".join(f"service '{n}': {s['message']}"
                                        for n, s in self.services.items()
                                        if s["status"] != "serving")
            if self.services:
                self.record_rollout(status)
        else:
            for name in self.pipeline.services:
                self.emit(name, "skipped", "nothing new to serve" if status == "not_promoted"
                          else "an upstream stage failed")
        return {
            "run_id": self.opts.run_id,
            "pipeline": self.pipeline.name,
            "namespace": self.ns,
            "store": self.opts.store,
            "status": status,
            "ok": status == "succeeded",
            "promoted": bool(self.promoted) if self.plan.promote is not None else None,
            "reason": self.reason,
            "seconds": round(time.time() - started, 3),
            "stages": {u.name: {"state": u.state, "message": u.message,
                                "job": u.job["metadata"]["name"],
                                "seconds": round(u.elapsed, 3),
                                "attempts": len(u.failed_pods) + (
                                    1 if u.state == "done" and u.name not in self.reused else 0),
                                **({"cached_from": self.reused[u.name]}
                                   if u.name in self.reused else {})}
                       for u in self.units.values()},
            "services": self.services,
            "timeline": self.timeline,
        }



def deploy(pipeline_dir: Path, namespace: str, *, context: str | None = None,
           image: str | None = None, store: str | None = None,
           params: Mapping[str, object] | Sequence[str] | None = None,
           on_event: OnEvent | None = None, wait: bool = True, on_log: OnLog | None = None,
           on_done: Callable[[dict], None] | None = None, use_cache: bool = True) -> dict:
    """Deploy the pipeline in `pipeline_dir` to `namespace`; the result as a dict.

    Bad input raises UserError before anything is written.  Stage failures are
    not exceptions: the result's `status` is `succeeded`, `failed` or
    `not_promoted`, so callers (CLI, JupyterLab handler) decide how to report.
    With `wait=False` the deploy continues in a background thread and
    `on_done(result)` receives the outcome; the return value then only names
    the run.
    """
    pipeline = load_pipeline(Path(pipeline_dir))
    opts = options_for(pipeline, namespace, image=image, store=store, params=params)
    kube = Kube(context)
    deployer = Deployer(kube, pipeline, opts, on_event, on_log, use_cache)
    if wait:
        return deployer.run()

    def background() -> None:
        try:
            result = deployer.run()
        except Exception as exc:  # noqa: BLE001 - the caller only has on_done
            result = {"run_id": opts.run_id, "status": "failed", "reason": str(exc)}
        if on_done is not None:
            on_done(result)

    threading.Thread(target=background, daemon=True, name="nb2prod-deploy").start()
    return {"run_id": opts.run_id, "pipeline": pipeline.name, "namespace": opts.namespace,
            "status": "running"}

