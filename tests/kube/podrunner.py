"""Running one pod as local processes: container lifecycle, restarts, probes, status.

Per pod, one thread drives the init containers (in order) and then the app
containers through the states a real kubelet reports: waiting
(ContainerCreating, ErrImagePull/ImagePullBackOff, CreateContainerConfigError,
CrashLoopBackOff), running, terminated (exitCode, reason). Readiness,
liveness and startup probes (httpGet, tcpSocket, exec) run against the
remapped local ports. Pod phase and conditions are derived from those states
and written to ``pods/status``, so controllers and clients see what a cluster
would show.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .logs import LogFile, pump
from .node import NodeConfig
from .podenv import NotReadyError, PodEnv
from .reaper import reaper
from .resources import BY_PLURAL
from .util import condition, iso, set_condition

if TYPE_CHECKING:
    from .api import Api
    from .store import Obj

PODS = BY_PLURAL["pods"]
TERMINATION_MESSAGE_LIMIT = 4096  # kubecontainer.MaxContainerTerminationMessageLength
#: Exec'd in front of a non-root container's command when the stand-in runs as root: drops
#: every capability from the bounding set, so after exec the process (still uid 0) has none
#: and file modes bind it like the non-root user it stands for (a 0444 file is read-only).
DROP_CAPABILITIES = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "for cap in range(64):\n"
    "    if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22: break\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n")


def runs_as_non_root(pod: Obj, container: Obj) -> bool:
    """What the container's (else the pod's) securityContext says about its user."""
    pod_ctx = pod["spec"].get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    if user is not None:
        return int(user) != 0
    return bool(ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")))


def without_root_powers(argv: list[str], env: dict[str, str]) -> list[str]:
    """`argv` behind :data:`DROP_CAPABILITIES` when this process is root, else unchanged.

    The process kubelet cannot switch users (the host Python and the test files belong
    to whoever runs the tests), so a container that a real runtime would start as uid
    1000 keeps root's permission overrides here; without them, a container that writes
    over its own read-only files fails here exactly as it does in a cluster.
    """
    if os.geteuid() != 0:
        return argv
    found = shutil.which(argv[0], path=env.get("PATH")) if "/" not in argv[0] else argv[0]
    if found is None:
        return argv  # let Popen fail as it would (StartError)
    return [sys.executable, "-I", "-S", "-c", DROP_CAPABILITIES, found, *argv[1:]]


@dataclass
class ProbeState:
    """Scheduling and consecutive-result counters of one probe."""

    next_at: float
    successes: int = 0
    failures: int = 0


@dataclass
class ContainerRun:
    """A container of the pod and its current process, if any."""

    spec: dict[str, Any]
    init: bool
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    proc: subprocess.Popen[bytes] | None = None
    logs: list[LogFile] = field(default_factory=list)
    next_attempt: float = 0.0
    finished: bool = False
    exit_code: int | None = None
    pull_attempts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str]] = field(default_factory=list)
    termination_file: Path | None = None
    cwd: str = ""
    probes: dict[str, ProbeState] = field(default_factory=dict)
    started_at: str = ""
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Container name."""
        return str(self.spec["name"])


class PodRunner(threading.Thread):
    """Runs one pod's containers as process groups until they end or the pod is deleted."""

    def __init__(self, api: Api, config: NodeConfig, pod: Obj, root: Path, pvc_root: Path, pod_ip: str,
                 on_done: Callable[[], None], token_for: Callable[[str, str], str] | None = None) -> None:
        super().__init__(daemon=True, name=f"pod-{pod['metadata']['name']}")
        self.api = api
        self.config = config
        self.pod = pod
        self.ns, self.pod_name, self.uid = (pod["metadata"]["namespace"], pod["metadata"]["name"],
                                            pod["metadata"]["uid"])
        self.pod.setdefault("status", {})["podIP"] = pod_ip
        self.pod["status"]["hostIP"] = "127.0.0.1"
        self.root = root
        self.pod_ip = pod_ip
        self.penv = PodEnv(api.store, self.pod, root, pvc_root, token_for)
        self.init_runs = [ContainerRun(c, True) for c in pod["spec"].get("initContainers") or []]
        self.main_runs = [ContainerRun(c, False) for c in pod["spec"].get("containers") or []]
        for run in self.main_runs:
            if self.init_runs:
                run.state = {"waiting": {"reason": "PodInitializing"}}
        self.stop_event = threading.Event()
        self.stop_grace = 30.0
        self.done = threading.Event()
        self.on_done = on_done
        self.start_time = iso()
        self.sandbox_ready = False
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    # ------------------------------------------------------------------ control (other threads)
    @property
    def runs(self) -> dict[str, ContainerRun]:
        """All containers by name (init first)."""
        return {r.name: r for r in self.init_runs + self.main_runs}

    def request_stop(self, grace: float) -> None:
        """Terminate the pod: SIGTERM, then SIGKILL after ``grace`` seconds (pod deletion)."""
        self.stop_grace = min(self.stop_grace, max(0.0, grace)) if self.stop_event.is_set() else max(0.0, grace)
        self.stop_event.set()

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` to every running container (fault injection); True if one was running."""
        hit = False
        with self._lock:
            for run in self.init_runs + self.main_runs:
                if run.proc is not None and run.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(run.proc.pid, sig)
                    hit = True
        return hit

    def local_port(self, container_port: int) -> int | None:
        """The local port standing in for ``container_port`` while a container runs."""
        running = any(r.proc is not None for r in self.main_runs)
        return self.penv.ports.get(container_port) if running else None

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        """Thread body: sandbox, init containers, app containers, termination."""
        try:
            self._run()
        except Exception:  # noqa: BLE001 - a kubelet bug must not kill the test process silently
            traceback.print_exc()
        finally:
            self._terminate_all(0.0)
            with contextlib.suppress(Exception):
                self._publish()
            self.done.set()
            self.on_done()

    def _run(self) -> None:
        self._publish()
        while not self.stop_event.is_set():
            try:
                self.penv.materialise()
                break
            except NotReadyError as exc:
                self._event_once("FailedMount", exc.message, "Warning")
                for run in self.init_runs[:1] + ([] if self.init_runs else self.main_runs):
                    run.state = {"waiting": {"reason": "ContainerCreating"}}
                self._publish()
                self.stop_event.wait(0.5)
        self.penv.allocate_ports()
        self.sandbox_ready = True
        for run in self.init_runs:
            if not self._loop([run]) or run.exit_code != 0:
                return
        for run in self.main_runs:
            run.state = {"waiting": {"reason": "ContainerCreating"}}
        self._loop(self.main_runs)

    def _loop(self, runs: list[ContainerRun]) -> bool:
        """Drive ``runs`` until all are finished (True) or the pod is being deleted (False)."""
        while True:
            if self.stop_event.is_set():
                self._terminate_all(self.stop_grace)
                self._publish()
                return False
            now = time.monotonic()
            changed = False
            for run in runs:
                changed = self._step(run, now) or changed
            if changed:
                self._publish()
            if all(r.finished for r in runs):
                return True
            self.stop_event.wait(0.05)

    # ------------------------------------------------------------------ one container
    def _step(self, run: ContainerRun, now: float) -> bool:
        if run.proc is not None:
            rc = run.proc.poll()
            if rc is None:
                return self._probe_all(run, now)
            self._on_exit(run, rc, now)
            return True
        if run.finished or now < run.next_attempt:
            return False
        return self._try_start(run, now)

    def _try_start(self, run: ContainerRun, now: float) -> bool:
        image = str(run.spec.get("image", ""))
        if image in self.config.unpullable_images:
            first = run.pull_attempts % 2 == 0
            run.pull_attempts += 1
            run.next_attempt = now + self.config.image_pull_retry_seconds
            if first:
                message = (f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '
                           "pull access denied, repository does not exist or may require authorization")
                run.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
                self._event_once(f"pull:{image}", f"Failed to pull image \"{image}\": {message}", "Warning",
                                 reason="Failed")
            else:
                run.state = {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}}
            return True
        try:
            run.termination_file = self.penv.termination_file(run.spec, len(run.logs))
            run.mounts = self.penv.mounts(run.spec, run.termination_file)
            base = self._base_env()
            env = self.penv.environment(run.spec, base)
            # Only what the pod spec sets is in the container's file system: the host's own
            # values (PATH with this interpreter's directory, HOME, PYTHONPATH) are local paths
            # already, and remapping them would hide a venv under /tmp behind an emptyDir there.
            env = {k: v if base.get(k) == v else self.penv.remap(v, run.mounts)
                   for k, v in env.items()}
            argv = self.penv.argv(run.spec, env, run.mounts)
        except NotReadyError as exc:
            run.state = {"waiting": {"reason": exc.reason, "message": exc.message}}
            run.next_attempt = now + 0.5
            return True
        if not argv:
            run.state = {"waiting": {"reason": "CreateContainerError", "message": (
                "the Kubernetes stand-in cannot run an image's default entrypoint: set command/args")}}
            run.next_attempt = now + 5
            return True
        if runs_as_non_root(self.pod, run.spec):
            argv = without_root_powers(argv, env)
        run.env = env
        run.cwd = self._workdir(run)
        if run.logs:
            run.restart_count += 1
        log = LogFile(self.root / "logs" / run.name / f"{len(run.logs)}.log")
        run.logs.append(log)
        run.started_at = iso()
        try:
            with self._lock:
                run.proc = subprocess.Popen(
                    argv, cwd=run.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True)
                reaper().watch(run.proc.pid)  # killed with its group should this process die
        except OSError as exc:
            log.append(f"exec {argv[0]!r}: {exc}".encode())
            log.stream_done()
            log.stream_done()
            run.proc = None
            self._finish_instance(run, 128, "StartError", now, message=(
                f'failed to create containerd task: exec: "{argv[0]}": {exc.strerror}'))
            return True
        assert run.proc.stdout is not None and run.proc.stderr is not None
        run.readers = [threading.Thread(target=pump, args=(s, log), daemon=True)
                       for s in (run.proc.stdout, run.proc.stderr)]
        for reader in run.readers:
            reader.start()
        run.state = {"running": {"startedAt": run.started_at}}
        run.probes = {k: ProbeState(now + float(run.spec[k].get("initialDelaySeconds", 0)))
                      for k in ("startupProbe", "readinessProbe", "livenessProbe") if run.spec.get(k)}
        run.started = "startupProbe" not in run.probes
        run.ready = run.started and "readinessProbe" not in run.probes and not run.init
        self.api.record_event(self.pod, "Started", f"Started container {run.name}", component="kubelet")
        return True

    def _base_env(self) -> dict[str, str]:
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        port = str(self.config.apiserver_port)
        return {"PATH": path, "HOME": str(home), "HOSTNAME": self.pod_name, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": port, "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}", **self.config.extra_env}

    def _workdir(self, run: ContainerRun) -> str:
        wanted = run.spec.get("workingDir")
        if wanted:
            remapped = self.penv.remap(wanted, run.mounts)
            if remapped != wanted or os.path.isdir(wanted):
                return remapped
            local = self.root / "rootfs" / wanted.lstrip("/")
        else:
            local = self.root / "rootfs"
        local.mkdir(parents=True, exist_ok=True)
        return str(local)

    def _on_exit(self, run: ContainerRun, rc: int, now: float) -> None:
        code = rc if rc >= 0 else 128 - rc
        assert run.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, signal.SIGKILL)  # PID 1 exited: the container's other processes die too
        reaper().forget(run.proc.pid)
        # The last lines may still be in the pipes: the container is reported terminated
        # only once they are in its log (as a node does), not 2 s later whatever a busy
        # machine's reader threads got.  The bound is for a process that left the group
        # and still holds a pipe (a kernel whose parent was killed: it exits on its own).
        for reader in run.readers:
            reader.join(timeout=30)
        with self._lock:
            run.proc = None
        self._finish_instance(run, code, "Completed" if code == 0 else "Error", now,
                              message=self._termination_message(run, code))

    def _termination_message(self, run: ContainerRun, code: int) -> str | None:
        """What the kubelet reports as ``terminated.message``: the last 4096 bytes of the
        terminationMessagePath file; with FallbackToLogsOnError and a non-zero exit code, the
        log tail (last 80 lines, at most 2048 bytes) when that file is empty."""
        data = b""
        if run.termination_file is not None:
            with contextlib.suppress(OSError), run.termination_file.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - TERMINATION_MESSAGE_LIMIT))
                data = fh.read()
        if not data and code != 0 and run.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError" \
                and run.logs:
            return run.logs[-1].tail_text() or None
        return data.decode(errors="replace") or None

    def _finish_instance(self, run: ContainerRun, code: int, reason: str, now: float,
                         message: str | None = None) -> None:
        terminated: dict[str, Any] = {"exitCode": code, "reason": reason, "startedAt": run.started_at or iso(),
                                      "finishedAt": iso(), "containerID": self._container_id(run)}
        if message:
            terminated["message"] = message
        run.ready = False
        run.started = False
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if run.init:
            restart = code != 0 and policy != "Never"
        else:
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if self.stop_event.is_set():
            restart = False
        if restart:
            delay = min(self.config.crash_backoff_seconds * 2 ** run.restart_count,
                        self.config.crash_backoff_max_seconds)
            run.last_state = {"terminated": terminated}
            run.state = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                f"back-off {delay:g}s restarting failed container={run.name} pod={self.pod_name}_{self.ns}"
                f"({self.uid})")}}
            run.next_attempt = now + delay
            self.api.record_event(self.pod, "BackOff", "Back-off restarting failed container "
                                  f"{run.name} in pod {self.pod_name}_{self.ns}({self.uid})", "Warning", "kubelet")
        else:
            run.state = {"terminated": terminated}
            run.finished = True
            run.exit_code = code

    def _container_id(self, run: ContainerRun) -> str:
        digest = hashlib.sha256(f"{self.uid}/{run.name}/{run.restart_count}".encode()).hexdigest()
        return f"containerd://{digest}"

    # ------------------------------------------------------------------ probes
    def _probe_all(self, run: ContainerRun, now: float) -> bool:
        before = (run.ready, run.started)
        if not run.started:
            state = run.probes.get("startupProbe")
            if state is not None and now >= state.next_at:
                if self._probe(run, "startupProbe", state, now):
                    run.started = True
                elif state.failures >= int(run.spec["startupProbe"].get("failureThreshold", 3)):
                    self._kill_unhealthy(run, "Startup")
        if run.started and run.proc is not None:
            state = run.probes.get("readinessProbe")
            if state is None:
                run.ready = not run.init
            elif now >= state.next_at:
                probe = run.spec["readinessProbe"]
                ok = self._probe(run, "readinessProbe", state, now)
                if ok and state.successes >= int(probe.get("successThreshold", 1)):
                    run.ready = True
                elif not ok and state.failures >= int(probe.get("failureThreshold", 3)):
                    run.ready = False
            state = run.probes.get("livenessProbe")
            if state is not None and now >= state.next_at and not self._probe(run, "livenessProbe", state, now) \
                    and state.failures >= int(run.spec["livenessProbe"].get("failureThreshold", 3)):
                self._kill_unhealthy(run, "Liveness")
        return before != (run.ready, run.started)

    def _kill_unhealthy(self, run: ContainerRun, kind: str) -> None:
        self.api.record_event(self.pod, "Killing", f"Container {run.name} failed {kind.lower()} probe, will be "
                              "restarted", "Normal", "kubelet")
        with self._lock:
            if run.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGKILL)

    def _probe(self, run: ContainerRun, kind: str, state: ProbeState, now: float) -> bool:
        probe = run.spec[kind]
        state.next_at = now + float(probe.get("periodSeconds", 10))
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            ok = self._probe_once(run, probe, timeout)
        except (OSError, http.client.HTTPException, subprocess.SubprocessError, ValueError):
            ok = False
        if ok:
            state.successes, state.failures = state.successes + 1, 0
        else:
            state.successes, state.failures = 0, state.failures + 1
            if state.failures == 1:
                self.api.record_event(self.pod, "Unhealthy", f"{kind[:-5].capitalize()} probe failed",
                                      "Warning", "kubelet")
        return ok

    def _resolve_port(self, run: ContainerRun, port: Any) -> int:
        if isinstance(port, str) and not port.isdigit():
            for c in self.pod["spec"].get("containers") or []:
                for p in c.get("ports") or []:
                    if p.get("name") == port:
                        port = p["containerPort"]
                        break
        number = int(port)
        return self.penv.ports.get(number, number)

    def _probe_once(self, run: ContainerRun, probe: Obj, timeout: float) -> bool:
        if probe.get("httpGet") is not None:
            get = probe["httpGet"]
            conn = http.client.HTTPConnection("127.0.0.1", self._resolve_port(run, get.get("port")), timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                headers.setdefault("User-Agent", "kube-probe/1.30")
                conn.request("GET", get.get("path", "/"), headers=headers)
                return 200 <= conn.getresponse().status < 400
            finally:
                conn.close()
        if probe.get("tcpSocket") is not None or probe.get("grpc") is not None:
            port = (probe.get("tcpSocket") or probe.get("grpc") or {}).get("port")
            with socket.create_connection(("127.0.0.1", self._resolve_port(run, port)), timeout=timeout):
                return True
        if probe.get("exec") is not None:
            argv = self.penv.argv({"command": probe["exec"].get("command") or []}, run.env, run.mounts)
            result = subprocess.run(argv, cwd=run.cwd, env=run.env, capture_output=True,
                                    timeout=timeout, check=False)
            return result.returncode == 0
        return False

    # ------------------------------------------------------------------ termination
    def _terminate_all(self, grace: float) -> None:
        """SIGTERM every running container, SIGKILL what is left after ``grace`` seconds."""
        runs = [r for r in self.init_runs + self.main_runs if r.proc is not None]
        for run in runs:
            self._signal(run, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(r.proc is not None and r.proc.poll() is None for r in runs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for run in runs:
            if run.proc is not None and run.proc.poll() is None:
                self._signal(run, signal.SIGKILL)
            if run.proc is not None:
                try:
                    rc = run.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    rc = -signal.SIGKILL
                self._on_exit(run, rc, time.monotonic())
        if self.stop_event.is_set():
            for run in self.init_runs + self.main_runs:
                run.finished = True  # a deleted pod starts nothing more

    def _signal(self, run: ContainerRun, sig: int) -> None:
        with self._lock:
            if run.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.proc.pid, sig)

    # ------------------------------------------------------------------ status
    def _event_once(self, key: str, message: str, etype: str = "Normal", reason: str | None = None) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self.api.record_event(self.pod, reason or key, message, etype, "kubelet")

    def _phase(self) -> str:
        if any(r.finished and r.exit_code != 0 for r in self.init_runs):
            return "Failed"
        if not all(r.finished for r in self.init_runs):
            return "Pending"
        if self.main_runs and all(r.finished for r in self.main_runs):
            return "Succeeded" if all(r.exit_code == 0 for r in self.main_runs) else "Failed"
        if any(r.proc is not None or r.logs for r in self.main_runs):
            return "Running"
        return "Pending"

    def _status_of(self, run: ContainerRun) -> dict[str, Any]:
        image = str(run.spec.get("image", ""))
        status: dict[str, Any] = {
            "name": run.name, "state": run.state, "lastState": run.last_state, "ready": run.ready,
            "restartCount": run.restart_count, "image": image,
            "imageID": f"{image}@sha256:{hashlib.sha256(image.encode()).hexdigest()}" if run.logs else "",
            "started": run.proc is not None and run.started,
        }
        if run.logs:
            status["containerID"] = self._container_id(run)
        return status

    def _publish(self) -> None:
        phase = self._phase()
        init_pending = [r.name for r in self.init_runs if not (r.finished and r.exit_code == 0)]
        unready = [r.name for r in self.main_runs if not r.ready]
        init_statuses = [self._status_of(r) for r in self.init_runs]
        statuses = [self._status_of(r) for r in self.main_runs]

        def update(pod: Obj) -> None:
            st = pod.setdefault("status", {})
            st.update(phase=phase, hostIP="127.0.0.1", hostIPs=[{"ip": "127.0.0.1"}], podIP=self.pod_ip,
                      podIPs=[{"ip": self.pod_ip}], startTime=self.start_time)
            scheduled = condition(pod, "PodScheduled")
            conditions = [c for c in st.get("conditions") or [] if c["type"] != "PodScheduled"]
            st["conditions"] = conditions
            set_condition(st, "PodReadyToStartContainers", "True" if self.sandbox_ready else "False")
            if init_pending:
                set_condition(st, "Initialized", "False", "ContainersNotInitialized",
                              f"containers with incomplete status: [{' '.join(init_pending)}]")
            else:
                set_condition(st, "Initialized", "True")
            terminal = phase in ("Succeeded", "Failed")
            for ctype in ("Ready", "ContainersReady"):
                if terminal:
                    set_condition(st, ctype, "False", "PodCompleted")
                elif unready:
                    set_condition(st, ctype, "False", "ContainersNotReady",
                                  f"containers with unready status: [{' '.join(unready)}]")
                else:
                    set_condition(st, ctype, "True")
            if scheduled is not None:
                st["conditions"].append(scheduled)
            if init_statuses:
                st["initContainerStatuses"] = init_statuses
            st["containerStatuses"] = statuses

        self.api.internal_status(PODS, self.ns, self.pod_name, update)
