"""`nb2prod deploy` / `status` / `logs` / `delete`: a pipeline on Kubernetes.

The objects come from `nb2prod.manifests` (pure); this module only talks to the
API server, through the official client, and decides *when* each object is
created:

1. namespace, ServiceAccounts/Role/RoleBinding and the code ConfigMaps
   (create; an existing, identical object is left alone, so re-deploying
   unchanged inputs writes nothing but the new run);
2. one Job per batch stage, created the moment its last predecessor's Job
   reports `Complete` (independent stages run in parallel); the state comes
   from Job conditions delivered by a watch (never a sleep loop), pod logs are
   followed and printed with a `[stage]` prefix, and a pod that cannot start
   (image pull, missing Secret, unschedulable) fails its stage at once;
3. the promotion Job (`python -m nb2prod_runtime promote`), in the cluster, where the
   store credentials are;
4. each service stage's Deployment rolled to the new run and watched until
   available; a rollout that does not become ready is rolled back to the pod
   template nb2prod saved in an annotation before changing it, and a failed
   first deploy is removed.

Events have the same shape as `nb2prod run`'s (`{"stage", "state", "message",
"elapsed", "run_id"}`), so `progress.Progress` and the JupyterLab extension
show both the same way.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nb2prod import k8s_retry, manifests, workdir
from nb2prod.errors import PipelineFailure, Problem, UserError
from nb2prod.manifests import Obj
from nb2prod.pipeline import Pipeline, load_pipeline, notebook_parameters, run_parameters
from nb2prod.roller import (
    TEMPLATE_HASH,
    rollout_verdict,
    stuck_reason,
    summary_line,
    template_hash,
    with_pod_problem,
)
from nb2prod.settings import PROJECT, check_value, checked_option, endpoint_url, image_ref

Event = dict
OnEvent = Callable[[Event], None]
OnLog = Callable[[str], None]

PROMOTE_UNIT = "(promote)"
#: On a run's promote Job: the roll-out's outcome, so `status` tells what `deploy` told.
ROLLOUT_ANNOTATION = "nb2prod.io/rollout"
WATCH_SECONDS = 60
#: Extra time past a Job's activeDeadlineSeconds before we stop waiting for its condition.
DEADLINE_SLACK = 120.0


# -- cluster access ---------------------------------------------------------------------------
@contextlib.contextmanager
def api_errors(what: str = "Kubernetes API") -> Iterator[None]:
    """Turn an API or connection error that survived the retries into one line (exit 1)."""
    try:
        yield
    except (UserError, PipelineFailure):
        raise
    except Exception as exc:
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException) or k8s_retry.is_transient(exc) or \
                isinstance(exc, OSError):
            raise PipelineFailure(f"{what}: {k8s_retry.message_of(exc)}") from None
        raise


class Kube:
    """API clients for one cluster: kubeconfig (with `context`) or the in-cluster account."""

    def __init__(self, context: str | None = None) -> None:
        from kubernetes import client, config

        # The client reads KUBECONFIG once, at import; read it now so a changed
        # environment (tests, a long-lived Jupyter server) is honoured.
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            api_client = config.new_client_from_config(config_file=path, context=context)
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            if context:
                raise UserError(Problem(f"--context {context}: {str(exc).splitlines()[0]}")
                                ) from None
            try:
                cfg = client.Configuration()
                config.load_incluster_config(client_configuration=cfg)
                api_client = client.ApiClient(cfg)
            except config.ConfigException:
                raise UserError(Problem(
                    "no Kubernetes configuration found: set KUBECONFIG or create ~/.kube/config "
                    "(or run inside a cluster)")) from None
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.net = client.NetworkingV1Api(api_client)

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host).rstrip("/")

    # Kinds nb2prod creates: (api attribute, snake-case resource name in the client's methods)
    KINDS: ClassVar[dict[str, tuple[str, str]]] = {
        "ServiceAccount": ("core", "service_account"),
        "ConfigMap": ("core", "config_map"),
        "Service": ("core", "service"),
        "Pod": ("core", "pod"),
        "Role": ("rbac", "role"),
        "RoleBinding": ("rbac", "role_binding"),
        "Job": ("batch", "job"),
        "CronJob": ("batch", "cron_job"),
        "Deployment": ("apps", "deployment"),
        "ReplicaSet": ("apps", "replica_set"),
        "Ingress": ("net", "ingress"),
        "NetworkPolicy": ("net", "network_policy"),
        "PersistentVolumeClaim": ("core", "persistent_volume_claim"),
    }

    def method(self, verb: str, kind: str) -> Callable[..., Any]:
        api, snake = self.KINDS[kind]
        return getattr(getattr(self, api), f"{verb}_namespaced_{snake}")

    def json(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call an API method (with retries) and return the response body as plain JSON."""
        resp = k8s_retry.call(fn, *args, _preload_content=False, _request_timeout=(10, 60),
                              **kwargs)
        return json.loads(resp.data or b"null")

    def read(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.json(self.method("read", kind), name, namespace)
        except Exception as exc:
            if k8s_retry.status_of(exc) == 404:
                return None
            raise

    def create(self, obj: Obj) -> Obj | None:
        """Create; None if an object of that name exists already."""
        meta = obj["metadata"]
        resp = k8s_retry.create(self.method("create", obj["kind"]), meta["namespace"], obj,
                                _preload_content=False, _request_timeout=(10, 60))
        return None if resp is None else json.loads(resp.data)

    def replace(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return self.json(self.method("replace", obj["kind"]), meta["name"], meta["namespace"],
                         obj)

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background"
               ) -> None:
        # Raw response: depending on the kind and version the server answers with the
        # object or a Status, which the typed client would fail to deserialize.
        k8s_retry.delete(self.method("delete", kind), name, namespace,
                         propagation_policy=propagation, _preload_content=False,
                         _request_timeout=(10, 60))

    def list(self, kind: str, namespace: str, selector: str) -> list[Obj]:
        data = self.json(self.method("list", kind), namespace, label_selector=selector)
        return list(data.get("items") or [])


def kubeconfig_contexts() -> dict[str, Any]:
    """The contexts of the kubeconfig (KUBECONFIG or ~/.kube/config) and the current one.

    For the JupyterLab deploy form's context list; a missing or unreadable
    kubeconfig is an answer (`error`), not a failure.
    """
    from kubernetes import config

    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        contexts, current = config.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        return {"contexts": [], "current": None, "error": str(exc).splitlines()[0] if str(exc)
                else f"no kubeconfig at {path}"}
    return {"contexts": [str(c.get("name")) for c in contexts or []],
            "current": (current or {}).get("name"), "error": None}


def cluster_check(context: str | None = None) -> dict[str, str]:
    """One cheap call (GET /version) that says whether this machine reaches the cluster.

    Run before a deploy re-splits or creates anything, so "no cluster" is one
    early line: UserError without a usable kubeconfig, PipelineFailure naming
    the API server when it does not answer.
    """
    from kubernetes import client

    kube = Kube(context)
    with api_errors(f"cannot reach the Kubernetes API at {kube.host}"):
        info = client.VersionApi(kube.api_client).get_code(_request_timeout=(5, 15))
    return {"host": kube.host, "version": str(getattr(info, "git_version", "") or "")}


def _lines(resp: Any) -> Iterator[str]:
    """Lines of a streamed response, the last one even without a trailing newline."""
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk if isinstance(chunk, bytes) else str(chunk).encode()
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", errors="replace")
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


def _close(resp: Any) -> None:
    for what in ("close", "release_conn"):
        try:
            getattr(resp, what)()
        except Exception:  # noqa: BLE001, S110 - best effort on a dead connection
            pass


class Watcher(threading.Thread):
    """List, then watch from the list's resourceVersion; re-list when the version expires.

    Every object seen is passed to `sink(type, obj)` (type SYNC for listed
    ones).  Transient errors are retried with backoff for as long as the owner
    wants the watch; the owner stops it with `stop()`.
    """

    def __init__(self, list_fn: Callable[..., Any], namespace: str, sink: Callable[[str, Obj], None],
                 *, label_selector: str | None = None, field_selector: str | None = None) -> None:
        super().__init__(daemon=True, name="nb2prod-watch")
        self.list_fn = list_fn
        self.namespace = namespace
        self.sink = sink
        self.selectors = {k: v for k, v in (("label_selector", label_selector),
                                            ("field_selector", field_selector)) if v}
        self.stopped = threading.Event()
        self.resp: Any = None
        self.failure: str | None = None

    def stop(self) -> None:
        self.stopped.set()
        resp = self.resp
        if resp is not None:
            import socket

            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def run(self) -> None:
        version: str | None = None
        errors = 0
        while not self.stopped.is_set():
            try:
                if version is None:
                    resp = self.list_fn(self.namespace, _preload_content=False,
                                        _request_timeout=(10, 60), **self.selectors)
                    data = json.loads(resp.data)
                    for item in data.get("items") or []:
                        self.sink("SYNC", item)
                    version = data["metadata"]["resourceVersion"]
                self.resp = self.list_fn(
                    self.namespace, watch=True, resource_version=version,
                    timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True,
                    _preload_content=False, _request_timeout=(10, WATCH_SECONDS + 15),
                    **self.selectors)
                try:
                    for line in _lines(self.resp):
                        if self.stopped.is_set():
                            return
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            if obj.get("code") == 410:
                                version = None  # expired: list again
                                break
                            raise RuntimeError(f"watch error: {obj.get('message')}")
                        version = obj.get("metadata", {}).get("resourceVersion") or version
                        if event.get("type") != "BOOKMARK":
                            self.sink(event["type"], obj)
                finally:
                    resp, self.resp = self.resp, None
                    _close(resp)
                errors = 0
            except Exception as exc:  # noqa: BLE001 - a watch must outlive API hiccups
                if self.stopped.is_set():
                    return
                if k8s_retry.status_of(exc) == 410:
                    version = None
                    continue
                errors += 1
                self.failure = k8s_retry.message_of(exc)
                self.stopped.wait(min(0.2 * 2 ** errors, 5.0))


class LogFollower(threading.Thread):
    """Follow one container's log through the API server, each line prefixed.

    Reconnects after a dropped stream and skips the lines it already printed,
    so a flaky connection neither loses nor repeats output.
    """

    def __init__(self, kube: Kube, namespace: str, pod: str, container: str, prefix: str,
                 sink: Callable[[str], None]) -> None:
        super().__init__(daemon=True, name=f"nb2prod-log-{pod}")
        self.kube, self.namespace, self.pod, self.container = kube, namespace, pod, container
        self.prefix = prefix
        self.sink = sink
        self.lines: list[str] = []

    def run(self) -> None:
        attempts = 0
        while attempts < 30:
            try:
                resp = self.kube.core.read_namespaced_pod_log(
                    self.pod, self.namespace, container=self.container, follow=True,
                    _preload_content=False, _request_timeout=(10, 600))
                try:
                    for index, line in enumerate(_lines(resp)):
                        if index < len(self.lines):
                            continue
                        self.lines.append(line)
                        self.sink(f"{self.prefix}{line}")
                finally:
                    _close(resp)
                return
            except Exception as exc:  # noqa: BLE001 - logs are best effort
                status = k8s_retry.status_of(exc)
                if status == 404:
                    return
                attempts += 1
                time.sleep(0.5 if status == 400 else min(0.2 * 2 ** attempts, 3.0))


# -- helpers ------------------------------------------------------------------------------------
def _conditions(obj: Obj) -> dict[str, Obj]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def condition_true(obj: Obj, kind: str) -> Obj | None:
    cond = _conditions(obj).get(kind)
    return cond if cond is not None and cond.get("status") == "True" else None


class PendingPods:
    """Unschedulable pods, given time to be scheduled before their stage fails.

    The other stuck reasons (image pulls, missing Secrets) do not resolve by
    themselves; ``PodScheduled=False, reason=Unschedulable`` often does: a
    cluster autoscaler adds a node, or a parallel stage finishes and frees the
    CPU a small cluster lacked.  A pod still unschedulable after ``grace``
    seconds (``[kubernetes] UNSCHEDULABLE_GRACE_SECONDS``) fails its stage with
    the scheduler's message; 0 fails it at once.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.since: dict[str, tuple[float, str, str]] = {}  # pod -> (first seen, reason, owner)

    def check(self, pod: Obj, owner: str = "") -> str | None:
        """Why the pod's stage should fail now; None while it is fine or still waiting."""
        name = pod["metadata"]["name"]
        reason = stuck_reason(pod)
        if reason is None or self.grace <= 0 or not reason.startswith("Unschedulable") or \
                hopeless(reason):
            self.since.pop(name, None)
            return reason
        first = self.since.get(name, (time.monotonic(), reason, owner))[0]
        self.since[name] = (first, reason, owner)
        return self._late(first, reason)

    def waiting(self, name: str) -> bool:
        return name in self.since

    def overdue(self) -> list[tuple[str, str, str]]:
        """(pod, owner, reason) of every pod whose grace is over; they are forgotten."""
        found = []
        for name, (first, reason, owner) in list(self.since.items()):
            late = self._late(first, reason)
            if late is not None:
                del self.since[name]
                found.append((name, owner, late))
        return found

    def forget(self, owner: str) -> None:
        for name in [n for n, v in self.since.items() if v[2] == owner]:
            del self.since[name]

    def _late(self, first: float, reason: str) -> str | None:
        waited = time.monotonic() - first
        return f"{reason} (for {waited:.0f}s)" if waited >= self.grace else None


#: Scheduler messages no new or freed node can fix (a claim that does not exist).
_HOPELESS = re.compile(r'persistentvolumeclaim "[^"]*" not found')


def hopeless(reason: str) -> bool:
    """An Unschedulable reason that waiting will not resolve."""
    return bool(_HOPELESS.search(reason))


def unschedulable_grace(pipeline: Pipeline) -> float:
    """`[kubernetes] UNSCHEDULABLE_GRACE_SECONDS` of nb2prod.ini (default 120), checked."""
    key = ("kubernetes", "UNSCHEDULABLE_GRACE_SECONDS")
    raw = pipeline.value(*key, "120")
    bad = check_value(PROJECT[key], raw, str(pipeline.root / "nb2prod.ini"), *key)
    if bad:
        raise UserError(bad)
    return float(raw)


def _terminated(pod: Obj) -> list[Obj]:
    status = pod.get("status") or {}
    found = []
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            found.append(term)
    return found


def _started(pod: Obj) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False


# -- applying objects ------------------------------------------------------------------------
def ensure_namespace(kube: Kube, namespace: Obj) -> bool:
    """Create the namespace unless it exists (or we may not even look: then assume it does).

    True when this call created it (a deploy that then fails at once removes it again).
    """
    try:
        exists = kube.json(kube.core.read_namespace, namespace["metadata"]["name"])
    except Exception as exc:
        status = k8s_retry.status_of(exc)
        if status == 403:
            return False  # no cluster-scope rights: assume an admin made it for us
        if status != 404:
            raise
        exists = None
    if exists is None:
        return k8s_retry.create(kube.core.create_namespace, namespace,
                                _request_timeout=(10, 60)) is not None
    return False


def remove_namespace(kube: Kube, name: str) -> None:
    """Delete a namespace this deploy created for an attempt that failed before running."""
    with contextlib.suppress(Exception):  # best effort: the failure is what gets reported
        k8s_retry.delete(kube.core.delete_namespace, name, _preload_content=False,
                         _request_timeout=(10, 60))


def check_claim(kube: Kube, opts: manifests.Options) -> None:
    """A pvc:// store's claim must exist before anything is created: no node can fix a
    missing one (the scheduler would keep every pod Pending).  Unreadable (403): go on."""
    claim = manifests.store_mount(opts.store).claim
    if claim is None:
        return
    try:
        kube.json(kube.core.read_namespaced_persistent_volume_claim, claim, opts.namespace)
    except Exception as exc:
        status = k8s_retry.status_of(exc)
        if status == 404:
            raise UserError(Problem(
                f"--store {opts.store}: PersistentVolumeClaim {claim} not found in namespace "
                f"{opts.namespace}; create it first (pvc:// mounts an existing claim)")) from None
        if status != 403:
            raise


def ensure_object(kube: Kube, obj: Obj) -> None:
    """Create `obj`; if it exists with different content (RBAC only), bring it up to date."""
    if kube.create(obj) is not None or obj["kind"] == "ConfigMap":
        return  # ConfigMaps are named by content: same name, same data
    meta = obj["metadata"]

    def read() -> Obj:
        return kube.json(kube.method("read", obj["kind"]), meta["name"], meta["namespace"])

    def write(current: Obj) -> Obj | None:
        body = copy.deepcopy(current)
        changed = False
        for key in ("rules", "subjects", "automountServiceAccountToken"):
            if key in obj and body.get(key) != obj[key]:
                body[key] = obj[key]
                changed = True
        labels = {**(body["metadata"].get("labels") or {}), **meta["labels"]}
        if labels != body["metadata"].get("labels"):
            body["metadata"]["labels"] = labels
            changed = True
        return kube.replace(body) if changed else None

    k8s_retry.update(read, write)


def ensure_networking(kube: Kube, obj: Obj) -> None:
    """Create the Service/Ingress, or converge an existing one's spec to ours."""
    if kube.create(obj) is not None:
        return
    meta = obj["metadata"]

    def read() -> Obj:
        return kube.json(kube.method("read", obj["kind"]), meta["name"], meta["namespace"])

    def write(current: Obj) -> Obj | None:
        body = copy.deepcopy(current)
        if obj["kind"] == "Service":
            body["spec"]["selector"] = obj["spec"]["selector"]
            body["spec"]["ports"] = obj["spec"]["ports"]
        else:
            body["spec"] = obj["spec"]
        body["metadata"]["labels"] = {**(body["metadata"].get("labels") or {}),
                                      **meta["labels"]}
        if body == current:
            return None
        return kube.replace(body)

    k8s_retry.update(read, write)


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


# -- deploy -------------------------------------------------------------------------------------
class Deployer:
    """One `deploy` of one pipeline for one run id."""

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

    # -- batch ----------------------------------------------------------------------------------
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
                                self.opts.run_id)
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
        if _started(pod) and name not in unit.pods:
            unit.started = unit.started or time.time()
            prefix = f"[{unit.name.strip('()')}] "
            follower = LogFollower(self.kube, self.ns, name,
                                   pod["spec"]["containers"][0]["name"], prefix, self.on_log)
            unit.pods[name] = follower
            follower.start()
        for term in _terminated(pod):
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
        """Ctrl-C or a crash: stop this run's Jobs rather than leave them orphaned."""
        for unit in self.units.values():
            if unit.state == "running":
                try:
                    self.kube.delete("Job", self.ns, unit.job["metadata"]["name"])
                except Exception:  # noqa: BLE001, S110
                    pass
                self.set_state(unit, "failed", "interrupted")

    def finish_promote(self, unit: Unit, passed: bool, pod: Obj | None = None) -> None:
        if passed:
            self.promoted = True
            self.reason = summary_line(self.promote_log(unit, pod)) or "promoted"
            self.set_state(unit, "done", self.reason)
            return
        self.promoted = False
        line = summary_line(self.promote_log(unit, pod)) or "promotion gate not passed"
        # the runtime says "not promoted: WHY"; every report of it adds "not promoted" itself
        self.reason = line.removeprefix("not promoted:").strip()
        self.set_state(unit, "skipped", self.reason)

    def promote_log(self, unit: Unit, pod: Obj | None) -> list[str]:
        """The promotion verdict is the last line the promote command printed."""
        names = [pod["metadata"]["name"]] if pod is not None else list(unit.pods)
        lines: list[str] = []
        for name in names:
            try:
                resp = k8s_retry.call(self.kube.core.read_namespaced_pod_log, name, self.ns,
                                      container=manifests.PROMOTE, _preload_content=False,
                                      _request_timeout=(10, 30))
                lines += list(_lines(resp))
            except Exception:  # noqa: BLE001 - fall back to what the follower saw
                follower = unit.pods.get(name)
                if follower is not None:
                    lines += follower.lines
        return lines

    # -- services -------------------------------------------------------------------------------
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
            return "\n".join(_lines(resp))
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


PROMOTE_NOT_PASSED_CODE = manifests.PROMOTE_NOT_PASSED


def _params(pipeline: Pipeline, params: Mapping[str, object] | Sequence[str] | None
            ) -> dict[str, object]:
    """`--param k=v` strings (typed like the notebook defaults) or an already typed mapping."""
    if params is None:
        return run_parameters(pipeline, [])
    if isinstance(params, Mapping):
        values = run_parameters(pipeline, [])
        defaults: dict[str, object] = {}
        for stage in pipeline.stages.values():
            defaults.update(notebook_parameters(stage))
        for key, value in params.items():
            if key not in defaults:
                raise UserError(Problem(f"parameter '{key}' is not in the notebook's parameters "
                                        f"cell (known: {', '.join(sorted(defaults)) or 'none'})"))
            values[key] = value
        return values
    return run_parameters(pipeline, list(params))


def deploy_endpoint(pipeline: Pipeline) -> str | None:
    """The S3 endpoint the pods get; one with credentials in it is refused, never copied."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            where, value = name, os.environ[name]
            break
    else:
        where, value = "[artifacts] ENDPOINT_URL", pipeline.value("artifacts", "ENDPOINT_URL")
    if not value:
        return None
    try:
        endpoint_url(value)
    except ValueError as exc:  # the value itself is not shown: it may hold a password
        raise UserError(Problem(f"{where}: {exc}")) from None
    return value


def options_for(pipeline: Pipeline, namespace: str, *, image: str | None = None,
                store: str | None = None, params: Mapping[str, object] | Sequence[str] | None
                = None, run_id: str | None = None) -> manifests.Options:
    """Deploy options from the pipeline, the command line and the deploying environment."""
    from nb2prod import artifacts

    if not namespace:
        namespace = pipeline.value("kubernetes", "NAMESPACE")
    if not namespace:
        raise UserError(Problem("--namespace is required (or set [kubernetes] NAMESPACE in "
                                "nb2prod.ini)"))
    if not manifests._DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise UserError(Problem(f"--namespace {namespace}: not a valid namespace name "
                                "(lowercase letters, digits and '-')"))
    endpoint = deploy_endpoint(pipeline)
    checked_option(image_ref, image or None, "--image")
    return manifests.Options(
        namespace=namespace, store=pipeline.store_uri(store),
        run_id=run_id or artifacts.new_run_id(), image=image or None,
        params=_params(pipeline, params), endpoint_url=endpoint,
        boto3_requirement=manifests.default_boto3_requirement(),
        files={name: workdir.describe(workdir.stage_files(pipeline, name))
               for name in pipeline.order})


def upload_input_files(pipeline: Pipeline, opts: manifests.Options) -> int:
    """Put the stages' input files in the store, content-addressed; returns how many were new.

    Pods fetch them from there by sha256 (DESIGN.md "Files and local code"), so
    this machine must be able to write the store: a `pvc://` claim it cannot reach
    is refused when there are files to ship.
    """
    from nb2prod import artifacts

    sources: dict[str, Path] = {}
    for name, described in opts.files.items():
        found = workdir.stage_files(pipeline, name) if described else {}
        for rel, entry in described.items():
            sources.setdefault(entry["sha256"], found[rel])
    if not sources:
        return 0
    if manifests.store_mount(opts.store).claim:
        raise UserError(Problem(
            f"stages need input files ({len(sources)}), which deploy puts in the store, but "
            f"{opts.store} is a claim this machine cannot write: use an s3:// store, or leave "
            "them out of FILES ([files] EXCLUDE) and bake them into --image"))
    uploaded = 0
    try:
        store = artifacts.open_store(opts.store)
        for sha, path in sorted(sources.items()):
            key = artifacts.files_key(pipeline.name, sha)
            if not store.exists(key):
                store.upload(key, path)
                uploaded += 1
    except Exception as exc:  # noqa: BLE001 - credentials, network, bucket: one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(Problem(f"cannot put the input files in the store {opts.store}: "
                                f"{first}")) from None
    return uploaded


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


# -- status ---------------------------------------------------------------------------------------
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


# -- logs -----------------------------------------------------------------------------------------
def stage_pods(kube: Kube, pipeline: str, namespace: str, stage: str, run_id: str | None
               ) -> tuple[list[Obj], str | None]:
    """Pods of a stage (oldest first): a batch stage's pods of one run, or a service's pods."""
    sel = (f"app.kubernetes.io/managed-by=nb2prod,app.kubernetes.io/instance={pipeline},"
           f"{manifests.STAGE_LABEL}={stage}")
    pods = kube.list("Pod", namespace, sel)
    if not pods or (run_id and not any(
            (p["metadata"].get("labels") or {}).get(manifests.RUN_ID_LABEL) == run_id
            for p in pods)):
        in_cluster = run_pods(kube, pipeline, namespace, stage, run_id)
        if in_cluster:
            return in_cluster, run_id or (in_cluster[-1]["metadata"].get("labels") or {}).get(
                "job-name")
    runs = sorted({(p["metadata"].get("labels") or {}).get(manifests.RUN_ID_LABEL)
                   for p in pods} - {None})
    chosen = run_id
    if runs:
        chosen = run_id or runs[-1]
        pods = [p for p in pods if (p["metadata"].get("labels") or {}).get(
            manifests.RUN_ID_LABEL) == chosen]
    elif run_id:  # service pods: the run they serve
        pods = [p for p in pods if (p["metadata"].get("annotations") or {}).get(
            manifests.MODEL_RUN_ID) == run_id]
    pods.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                             p["metadata"]["name"]))
    return pods, chosen


def run_pods(kube: Kube, pipeline: str, namespace: str, stage: str, run_id: str | None
             ) -> list[Obj]:
    """Pods of in-cluster runs (one container per batch stage) that ran `stage`, oldest first."""
    sel = (f"app.kubernetes.io/managed-by=nb2prod,app.kubernetes.io/instance={pipeline},"
           "app.kubernetes.io/component=run")
    pods = [p for p in kube.list("Pod", namespace, sel) if stage_container(p, stage)]
    if run_id:
        pods = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == run_id]
    pods.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                             p["metadata"]["name"]))
    return pods if run_id else pods[-1:]


def stage_container(pod: Obj, stage: str) -> str | None:
    """The container of `pod` that runs `stage` (the only one, for a stage's own pods)."""
    from nb2prod.retrain import STAGES_ANNOTATION

    names = (pod["metadata"].get("annotations") or {}).get(STAGES_ANNOTATION)
    if names is None:
        return pod["spec"]["containers"][0]["name"]
    return next((c for c, s in json.loads(names).items() if s == stage), None)


def logs(pipeline: str, namespace: str, stage: str, *, run_id: str | None = None,
         follow: bool = False, context: str | None = None,
         echo: Callable[[str], None] = print) -> int:
    """Print a stage's logs; returns the number of pods shown (0 when none exist)."""
    kube = Kube(context)
    pods, _chosen = stage_pods(kube, pipeline, namespace, stage, run_id)
    if not pods:
        return 0
    many = len(pods) > 1
    followers = []
    for pod in pods:
        name = pod["metadata"]["name"]
        container = stage_container(pod, stage) or pod["spec"]["containers"][0]["name"]
        prefix = f"[{stage} {name}] " if many else f"[{stage}] "
        if follow:
            follower = LogFollower(kube, namespace, name, container, prefix, echo)
            follower.start()
            followers.append(follower)
            continue
        try:
            resp = k8s_retry.call(kube.core.read_namespaced_pod_log, name, namespace,
                                  container=container, _preload_content=False,
                                  _request_timeout=(10, 60))
            for line in _lines(resp):
                echo(prefix + line)
        except Exception as exc:  # noqa: BLE001 - a pod without a log yet: say so and go on
            echo(f"{prefix}(no log: {k8s_retry.message_of(exc)})")
    for follower in followers:
        while follower.is_alive():
            follower.join(timeout=0.5)
    return len(pods)


# -- delete ---------------------------------------------------------------------------------------
DELETE_ORDER = ("CronJob", "Job", "Deployment", "ReplicaSet", "Ingress", "NetworkPolicy",
                "Service", "Pod",
                "ConfigMap", "RoleBinding", "Role", "ServiceAccount")


def delete(pipeline: Pipeline, namespace: str, *, context: str | None = None,
           purge_artifacts: bool = False, store: str | None = None, timeout: float = 120.0,
           echo: Callable[[str], None] = print) -> dict[str, int]:
    """Delete every object labelled as this pipeline's in `namespace`; wait until gone.

    The namespace itself is kept (other pipelines may live there).  Artifacts
    are kept unless `purge_artifacts`.
    """
    kube = Kube(context)
    sel = manifests.selector(pipeline)
    counts: dict[str, int] = {}
    for kind in DELETE_ORDER:
        try:
            items = kube.list(kind, namespace, sel)
        except Exception as exc:
            if k8s_retry.status_of(exc) in (403, 404):
                continue
            raise
        for item in items:
            kube.delete(kind, namespace, item["metadata"]["name"])
        if items:
            counts[kind] = len(items)
    deadline = time.monotonic() + timeout
    remaining: list[str] = []
    while time.monotonic() < deadline:
        remaining = [f"{kind}/{item['metadata']['name']}" for kind in DELETE_ORDER
                     for item in kube.list(kind, namespace, sel)]
        if not remaining:
            break
        time.sleep(0.3)
    if remaining:
        raise PipelineFailure(f"still present after {timeout:.0f}s: {', '.join(remaining[:5])}")
    if purge_artifacts:
        counts["artifacts"] = purge(pipeline, pipeline.store_uri(store))
        echo(f"deleted {counts['artifacts']} artifact file(s) of {pipeline.name} from "
             f"{pipeline.store_uri(store)}")
    return counts


def purge(pipeline: Pipeline, uri: str) -> int:
    """Remove `<store>/<pipeline>/` (s3:// or file://); the count of files removed."""
    import shutil

    from nb2prod import artifacts

    if uri.startswith("pvc://"):
        raise UserError(Problem(f"--purge-artifacts: {uri} is a volume in the cluster; delete "
                                f"{pipeline.name}/ on the claim yourself"))
    store = artifacts.open_store(uri)
    keys = store.list(f"{pipeline.name}/")
    if isinstance(store, artifacts.FileStore):
        shutil.rmtree(store.root / pipeline.name, ignore_errors=True)
        return len(keys)
    if isinstance(store, artifacts.S3Store):
        client = store.client
        full = [store._key(k) for k in keys]
        for start in range(0, len(full), 1000):
            client.delete_objects(Bucket=store.bucket, Delete={
                "Objects": [{"Key": k} for k in full[start:start + 1000]], "Quiet": True})
        return len(keys)
    raise UserError(Problem(f"--purge-artifacts: cannot delete from {uri}"))
