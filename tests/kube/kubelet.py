"""Scheduler and process kubelet for the single stand-in node.

The scheduler binds pending pods to the node unless the test made the node
unschedulable, the pod's nodeSelector does not match, or its resource
requests exceed what is left of the node's capacity; then the pod stays
Pending with ``PodScheduled=False, reason=Unschedulable`` as on a cluster.

The kubelet starts a :class:`~tests.kube.podrunner.PodRunner` per bound pod,
finishes graceful deletions (the pod object disappears only after its
processes are gone), serves logs and local ports to the API server, and kills
everything at shutdown.
"""

from __future__ import annotations

import copy
import signal
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ApiError, bad_request
from .logs import LogFile
from .node import NODE_NAME, NodeConfig
from .podrunner import PodRunner
from .resources import BY_PLURAL, Resource
from .selectors import from_label_selector, matches
from .util import condition, set_condition
from .validation import parse_quantity

if TYPE_CHECKING:
    from .api import Api
    from .store import Obj

TERMINAL = ("Succeeded", "Failed")


def pod_requests(pod: Obj) -> dict[str, float]:
    """Effective requests: sum over containers, at least the largest init container (limits default requests)."""
    def of(c: Obj) -> dict[str, float]:
        res = c.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: parse_quantity(v) for k, v in merged.items()}

    total: dict[str, float] = {}
    for c in pod["spec"].get("containers") or []:
        for k, v in of(c).items():
            total[k] = total.get(k, 0.0) + v
    for c in pod["spec"].get("initContainers") or []:
        for k, v in of(c).items():
            total[k] = max(total.get(k, 0.0), v)
    return total


class Kubelet:
    """Scheduler + kubelet loop over the pods in the store."""

    def __init__(self, api: Api, config: NodeConfig, root: Path,
                 token_for: Callable[[str, str], str] | None = None) -> None:
        self.api = api
        self.config = config
        self.root = root
        self.token_for = token_for
        self.runners: dict[str, PodRunner] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="kubelet")
        self._ips = 0
        self._lock = threading.Lock()
        self._sched_messages: dict[str, str] = {}
        api.store.add_listener(self._wake.set)

    def start(self) -> None:
        """Start the kubelet thread."""
        self._thread.start()

    def wake(self) -> None:
        """Run a sync pass now (e.g. after a test changed the node's schedulability)."""
        self._wake.set()

    def stop(self, grace: float = 1.0) -> None:
        """Stop the loop and terminate every pod's processes (SIGTERM, SIGKILL after ``grace``)."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with self._lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.request_stop(grace)
        for runner in runners:
            runner.join(timeout=grace + 10)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.sync()
            except ApiError:
                continue
            except Exception:  # noqa: BLE001 - keep the node alive; print so the bug is visible
                traceback.print_exc()

    # ------------------------------------------------------------------ reconcile
    def sync(self) -> None:
        """One pass over all pods: schedule, start, terminate, finish deletions."""
        store = self.api.store
        seen = set()
        for pod in store.scan("pods"):
            meta, spec = pod["metadata"], pod.get("spec") or {}
            uid = meta["uid"]
            seen.add(uid)
            deleting = bool(meta.get("deletionTimestamp"))
            if not spec.get("nodeName"):
                if deleting:
                    store.remove("pods", meta["namespace"], meta["name"])
                else:
                    self._schedule(pod)
                continue
            with self._lock:
                runner = self.runners.get(uid)
            if deleting:
                if runner is not None and not runner.done.is_set():
                    runner.request_stop(float(meta.get("deletionGracePeriodSeconds", 30)))
                elif not meta.get("finalizers"):
                    current = store.peek("pods", meta["namespace"], meta["name"])
                    if current is not None and current["metadata"]["uid"] == uid:
                        store.remove("pods", meta["namespace"], meta["name"])
                continue
            if runner is None and (pod.get("status") or {}).get("phase") not in TERMINAL:
                self._start(pod)
        with self._lock:
            gone = [uid for uid in self.runners if uid not in seen]
            for uid in gone:
                runner = self.runners[uid]
                if runner.done.is_set():
                    del self.runners[uid]
                else:
                    runner.request_stop(0.0)  # force-deleted: kill now

    def _start(self, pod: Obj) -> None:
        meta = pod["metadata"]
        with self._lock:
            self._ips += 1
            ip = f"127.1.{self._ips // 250}.{self._ips % 250 + 1}"
            root = self.root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
            runner = PodRunner(self.api, self.config, pod_copy(pod), root, self.root / "pvc", ip, self._wake.set,
                               self.token_for)
            self.runners[meta["uid"]] = runner
        runner.start()

    def _schedule(self, pod: Obj) -> None:
        meta = pod["metadata"]
        reasons = self._unfit(pod)
        if reasons:
            message = (f"0/1 nodes are available: {', '.join(reasons)}. preemption: 0/1 nodes are available: "
                       "1 Preemption is not helpful for scheduling.")
            if reasons[0].startswith("persistentvolumeclaim"):  # a pre-filter: as kube-scheduler 1.36 says it
                message = f"0/1 nodes are available: {reasons[0]}. not found"

            def unschedulable(p: Obj) -> None:
                set_condition(p.setdefault("status", {}), "PodScheduled", "False", "Unschedulable", message,
                              probe_time=condition(p, "PodScheduled") is None)

            self.api.internal_status(self.api_pods(), meta["namespace"], meta["name"], unschedulable)
            if self._sched_messages.get(meta["uid"]) != message:
                self._sched_messages[meta["uid"]] = message
                self.api.record_event(pod, "FailedScheduling", message, "Warning", "default-scheduler")
            return

        def bind(p: Obj) -> None:
            p["spec"]["nodeName"] = NODE_NAME
            status = p.setdefault("status", {})
            set_condition(status, "PodScheduled", "True")
            for cond in status["conditions"]:
                if cond["type"] == "PodScheduled":
                    cond.pop("lastProbeTime", None)
                    cond.pop("reason", None)
                    cond.pop("message", None)

        self.api.internal_status(self.api_pods(), meta["namespace"], meta["name"], bind)
        self._sched_messages.pop(meta["uid"], None)
        self.api.record_event(pod, "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} to "
                              f"{NODE_NAME}", component="default-scheduler")

    def api_pods(self) -> Resource:
        """The pods resource descriptor."""
        return BY_PLURAL["pods"]

    def _unfit(self, pod: Obj) -> list[str]:
        # The scheduler's VolumeBinding pre-filter: a claim that does not exist fails the
        # pod before any node is looked at (and no node can ever fix it).
        for volume in pod["spec"].get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and self.api.store.peek("persistentvolumeclaims", pod["metadata"]["namespace"],
                                             claim) is None:
                return [f'persistentvolumeclaim "{claim}" not found']
        if self.config.unschedulable:
            return ["1 node(s) were unschedulable"]
        selector = pod["spec"].get("nodeSelector") or {}
        if selector and not matches(from_label_selector({"matchLabels": selector}), self.config.labels):
            return ["1 node(s) didn't match Pod's node affinity/selector"]
        used: dict[str, float] = {}
        count = 0
        for other in self.api.store.scan("pods"):
            if other["spec"].get("nodeName") == NODE_NAME and (other.get("status") or {}).get("phase") not in TERMINAL:
                count += 1
                for k, v in pod_requests(other).items():
                    used[k] = used.get(k, 0.0) + v
        reasons = []
        for name, value in sorted(pod_requests(pod).items()):
            capacity = self.config.capacity.get(name)
            if capacity is not None and used.get(name, 0.0) + value > parse_quantity(capacity):
                reasons.append(f"1 Insufficient {name}")
        if count + 1 > parse_quantity(self.config.capacity.get("pods", "110")):
            reasons.append("1 Too many pods")
        return reasons

    # ------------------------------------------------------------------ API server hooks
    def _runner(self, pod: Obj) -> PodRunner | None:
        with self._lock:
            return self.runners.get(pod["metadata"]["uid"])

    def log_source(self, pod: Obj, container: str | None, previous: bool) -> LogFile:
        """The log of a container instance, or the 400 the apiserver returns when there is none."""
        name = pod["metadata"]["name"]
        mains = [c["name"] for c in pod["spec"].get("containers") or []]
        inits = [c["name"] for c in pod["spec"].get("initContainers") or []]
        if container is None:
            if len(mains) != 1:
                extra = f" or one of the init containers: [{' '.join(inits)}]" if inits else ""
                raise bad_request(f"a container name must be specified for pod {name}, choose one of: "
                                  f"[{' '.join(mains)}]{extra}")
            container = mains[0]
        if container not in mains + inits:
            raise bad_request(f"container {container} is not valid for pod {name}")
        runner = self._runner(pod)
        run = runner.runs.get(container) if runner is not None else None
        logs = list(run.logs) if run is not None else []
        if previous:
            if len(logs) < 2:
                raise bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
            return logs[-2]
        if not logs:
            statuses = (pod.get("status") or {}).get("containerStatuses", []) + \
                (pod.get("status") or {}).get("initContainerStatuses", [])
            waiting: dict[str, str] = next((s["state"].get("waiting", {}) for s in statuses if s["name"] == container), {})
            reason = waiting.get("reason", "ContainerCreating")
            text = {"ErrImagePull": "trying and failing to pull image",
                    "ImagePullBackOff": "trying and failing to pull image"}.get(reason, reason)
            raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: {text}')
        return logs[-1]

    def local_port(self, pod_uid: str, container_port: int) -> int | None:
        """Local port of a running pod's container port (used by the proxy)."""
        with self._lock:
            runner = self.runners.get(pod_uid)
        return runner.local_port(container_port) if runner is not None else None

    def kill_pod(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> bool:
        """Signal the processes of a pod (fault injection); False if nothing was running."""
        pod = self.api.store.peek("pods", namespace, name)
        if pod is None:
            return False
        runner = self._runner(pod)
        return runner.kill(sig) if runner is not None else False

    def pod_root(self, pod: Obj) -> Path | None:
        """Local root directory of a pod, if it was started."""
        runner = self._runner(pod)
        return runner.root if runner is not None else None


def pod_copy(pod: Obj) -> Obj:
    """A private deep copy for a runner (the stored object must not be mutated)."""
    return copy.deepcopy(pod)

