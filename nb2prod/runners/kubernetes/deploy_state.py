"""What one `deploy` knows while it runs: its units (Jobs), services and verdict.

The deploy is one state machine split by concern (`jobs.BatchJobs`: the
batch Jobs in DAG order; `rollout.RollOuts`: the service Deployments;
`deployer.Deployer`: the whole sequence); this base holds the state they
share and the events they emit.  Events have the same shape as `nb2prod
run`'s (`{"stage", "state", "message", "elapsed", "run_id"}`), so
`progress.Progress` and the JupyterLab extension show both the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nb2prod import manifests
from nb2prod.manifests import Obj
from nb2prod.pipeline import Pipeline
from nb2prod.runners.kubernetes.cluster import Kube
from nb2prod.runners.kubernetes.pod_state import PendingPods, unschedulable_grace
from nb2prod.runners.kubernetes.streams import LogFollower

Event = dict
OnEvent = Callable[[Event], None]
OnLog = Callable[[str], None]


@dataclass
class Unit:
    """One Job of the run (a batch stage or the promotion) and what we know of it."""

    name: str
    job: Obj
    preds: list[str]
    state: str = "waiting"   # waiting | running | done | failed | skipped
    message: str = ""
    submitted: float | None = None
    finished: float | None = None
    started: float | None = None
    pods: dict[str, LogFollower] = field(default_factory=dict)
    failed_pods: set[str] = field(default_factory=set)
    exit_codes: list[int] = field(default_factory=list)
    termination: str = ""    # last failed container's termination message (its log tail)

    @property
    def elapsed(self) -> float:
        if self.submitted is None:
            return 0.0
        return (self.finished or time.time()) - self.submitted


class DeployState:
    """One `deploy` of one pipeline for one run id: the state its steps share."""

    def __init__(self, kube: Kube, pipeline: Pipeline, opts: manifests.Options,
                 on_event: OnEvent | None = None, on_log: OnLog | None = None,
                 use_cache: bool = True) -> None:
        self.kube = kube
        self.pipeline = pipeline
        self.opts = opts
        self.ns = opts.namespace
        self.plan = manifests.plan(pipeline, opts)
        self.on_event = on_event or (lambda event: None)
        self.on_log = on_log or (lambda line: None)
        self.units: dict[str, Unit] = {}
        self.timeline: list[dict] = []   # (what, unit, time): for benchmarks and debugging
        self.services: dict[str, dict] = {}
        self.promoted: bool | None = None
        self.reason = ""
        self.grace = unschedulable_grace(pipeline)
        self.pending = PendingPods(self.grace)
        self.use_cache = use_cache
        self.cache_keys: dict[str, str] = {}
        self.reused: dict[str, str] = {}   # stage -> run it was reused from
        self.checked = False

    # -- events ---------------------------------------------------------------------------------
    def emit(self, stage: str, state: str, message: str = "", elapsed: float = 0.0) -> None:
        self.on_event({"stage": stage, "state": state, "message": message,
                       "elapsed": round(elapsed, 3), "run_id": self.opts.run_id})

    def mark(self, what: str, unit: str) -> None:
        self.timeline.append({"event": what, "unit": unit, "time": time.time()})

    def set_state(self, unit: Unit, state: str, message: str = "") -> None:
        unit.state = state
        unit.message = message
        if state in ("done", "failed", "skipped") and unit.finished is None:
            unit.finished = time.time()
        self.emit(unit.name, state, message, unit.elapsed)
