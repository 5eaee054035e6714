"""Tests of the Kubernetes stand-in (tests/kube), written as a script of official-client calls.

Everything except the ``fault injection`` tests talks to the cluster only through
``kubernetes.client`` built from a kubeconfig, so the same calls could run against
a real cluster: only the ``api`` fixture would differ. Deadlines are short to keep
the file fast; every wait has a timeout and fails loudly.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config, watch
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from tests.kube.standin import KubeStandIn

pytest_plugins = ["tests.kube.fixtures"]

T = TypeVar("T")
PY = "python:3.11-slim"  # recorded, never pulled


# --------------------------------------------------------------------------- helpers

def wait_for(fn: Callable[[], T], what: str, timeout: float = 90.0, interval: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cond(obj: Any, ctype: str) -> tuple[str, str] | None:
    """(status, reason) of a status condition, or None."""
    for c in (obj.status.conditions or []) if obj.status else []:
        if c.type == ctype:
            return c.status, c.reason
    return None


def error(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    """The Status object of an API error."""
    body: dict[str, Any] = json.loads(exc.value.body)
    assert body["kind"] == "Status"
    assert body["status"] == "Failure"
    assert body["code"] == exc.value.status
    return body


def job_outcome(batch: client.BatchV1Api, ns: str, name: str, timeout: int = 20) -> tuple[str, str]:
    """Watch a Job until it has a terminal condition; return (type, reason)."""
    w = watch.Watch()
    for event in w.stream(batch.list_namespaced_job, ns, field_selector=f"metadata.name={name}",
                          timeout_seconds=timeout):
        for ctype in ("Complete", "Failed"):
            found = cond(event["object"], ctype)
            if found and found[0] == "True":
                w.stop()
                return ctype, found[1]
    raise AssertionError(f"job {name} did not finish within {timeout}s")


def container(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    """A container spec dict."""
    return {"name": name, "image": PY, "command": command, **extra}


def pod_body(name: str, containers: list[dict[str, Any]], restart: str = "Never", **spec: Any) -> dict[str, Any]:
    """A bare pod manifest."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart, "containers": containers, **spec}}


def job_body(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A Job manifest running ``command``."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {**spec, "template": {"spec": {"restartPolicy": "Never",
                                                   "containers": [container("main", command)]}}}}


def web_deployment(name: str, port: int = 8080, **spec: Any) -> dict[str, Any]:
    """A Deployment serving HTTP with ``python -m http.server`` and an HTTP readiness probe."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, **spec,
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container(
                         "web", ["python", "-m", "http.server", str(port)],
                         ports=[{"name": "http", "containerPort": port}],
                         readinessProbe={"httpGet": {"path": "/", "port": port}, "periodSeconds": 1})]}}}}


def pods_of(v1: client.CoreV1Api, ns: str, selector: str) -> list[Any]:
    """Pods matching a label selector."""
    return list(v1.list_namespaced_pod(ns, label_selector=selector).items)


def pod_phase(v1: client.CoreV1Api, ns: str, name: str, *phases: str) -> Any:
    """The pod if its phase is one of ``phases``, else None."""
    pod = v1.read_namespaced_pod(name, ns)
    return pod if pod.status.phase in phases else None


def post_raw(api: ApiClient, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST a manifest as raw JSON (bypassing the client's own model validation)."""
    resp = api.call_api("POST", f"{api.configuration.host}{path}",
                        header_params={"Content-Type": "application/json"}, body=body)
    return resp.status, json.loads(resp.read())


def gone(read: Callable[[], Any]) -> bool:
    """True once ``read`` raises 404."""
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def api(kube_standin: KubeStandIn) -> Iterator[ApiClient]:
    """The only cluster-specific part: an ApiClient from the stand-in's kubeconfig."""
    with config.new_client_from_config(config_file=str(kube_standin.kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
def ns(api: ApiClient) -> str:
    """A fresh namespace for the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


# --------------------------------------------------------------------------- start-up and discovery

def test_kubeconfig_is_accepted_by_the_official_client_loaders(kube_standin: KubeStandIn) -> None:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kube_standin.kubeconfig), client_configuration=configuration)
    assert configuration.host == kube_standin.url
    assert os.environ["KUBECONFIG"] == str(kube_standin.kubeconfig)
    with kube_standin.api_client() as api_client:
        names = {n.metadata.name for n in client.CoreV1Api(api_client).list_namespace().items}
        assert {"default", "kube-system", "kube-public"} <= names
        assert client.VersionApi(api_client).get_code().minor == "30"
        groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
        assert {"apps", "batch", "rbac.authorization.k8s.io", "networking.k8s.io"} <= groups
        core = client.CoreV1Api(api_client).get_api_resources()
        assert {"pods/log", "services/proxy", "configmaps"} <= {r.name for r in core.resources}
        nodes = client.CoreV1Api(api_client).list_node().items
        assert [n.metadata.name for n in nodes] == ["standin-node"]


def test_cli_prints_address_and_writes_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "standin.kubeconfig"
    proc = subprocess.Popen([sys.executable, "-m", "tests.kube.standin", "--port", "0", "--kubeconfig",
                             str(kubeconfig)], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Kubernetes stand-in listening on http://127.0.0.1:")
        url = line.split()[-1]
        wait_for(kubeconfig.exists, "the kubeconfig file", timeout=60)
        configuration = client.Configuration()  # not the global default: other tests must not see it
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        with ApiClient(configuration) as api_client:
            assert api_client.configuration.host == url
            created = client.CoreV1Api(api_client).create_namespace({"metadata": {"name": "manual"}})
            assert created.status.phase == "Active"
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_pod_processes_die_with_a_killed_standin(tmp_path: Path) -> None:
    """kill -9 of the process running the stand-in stops its pods' processes too."""
    from nb2prod.lifeline import stat_fields

    kubeconfig, pids = tmp_path / "standin.kubeconfig", tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-m", "tests.kube.standin", "--port", "0", "--kubeconfig",
                             str(kubeconfig)], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, text=True)
    found: list[int] = []

    def gone(pid: int) -> bool:
        fields = stat_fields(pid)
        return fields is None or fields[0] in ("Z", "X")  # an unreaped zombie runs nothing

    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("Kubernetes stand-in")
        wait_for(kubeconfig.exists, "the kubeconfig file", timeout=30)
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        with ApiClient(configuration) as api_client:
            v1 = client.CoreV1Api(api_client)
            v1.create_namespace({"metadata": {"name": "lifeline"}})
            # PID 1 and a child of it, as a container's own processes.
            v1.create_namespaced_pod("lifeline", {"metadata": {"name": "sleeper"}, "spec": {
                "containers": [{"name": "c", "image": PY, "command": [
                    "sh", "-c", f'sleep 600 & echo "$$ $!" > {pids}.tmp && mv {pids}.tmp {pids}; wait']}]}})
            wait_for(pids.exists, "the pod's processes", timeout=120)
            # Running is published after the kubelet has told the reaper about the
            # container (which itself may run and write its pids before that, on a busy
            # machine: a kill then would leave it running).
            wait_for(lambda: pod_phase(v1, "lifeline", "sleeper", "Running"), "the pod to run")
        found = [int(p) for p in pids.read_text().split()]
        assert len(found) == 2 and not any(gone(p) for p in found)
        proc.kill()
        proc.wait(timeout=30)
        wait_for(lambda: all(gone(p) for p in found), "the pod's processes to die with the stand-in",
                 timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pid in found:  # only if the test failed: leave nothing behind
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- CRUD, selectors, patches, errors

def test_configmap_crud_selectors_patches_dry_run_and_error_shapes(api: ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    a = v1.create_namespaced_config_map(ns, {"metadata": {"name": "cm-a", "labels": {"app": "web", "tier": "front"}},
                                             "data": {"k": "1"}})
    b = v1.create_namespaced_config_map(ns, {"metadata": {"name": "cm-b", "labels": {"app": "db"}}})
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "cm-c"}})
    assert a.metadata.uid and a.metadata.creation_timestamp is not None
    assert int(b.metadata.resource_version) > int(a.metadata.resource_version)

    def names(**kwargs: str) -> list[str]:
        items = v1.list_namespaced_config_map(ns, **kwargs).items
        return sorted(i.metadata.name for i in items if i.metadata.name.startswith("cm-"))

    assert names(label_selector="app=web") == ["cm-a"]
    assert names(label_selector="app!=web") == ["cm-b", "cm-c"]
    assert names(label_selector="app in (web,db)") == ["cm-a", "cm-b"]
    assert names(label_selector="app notin (web)") == ["cm-b", "cm-c"]
    assert names(label_selector="tier") == ["cm-a"]
    assert names(label_selector="!tier") == ["cm-b", "cm-c"]
    assert names(field_selector="metadata.name=cm-b") == ["cm-b"]

    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("missing", ns)
    body = error(exc)
    assert (exc.value.status, body["reason"], body["details"]["name"]) == (404, "NotFound", "missing")
    assert body["message"] == 'configmaps "missing" not found'

    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map(ns, {"metadata": {"name": "cm-a"}})
    assert (exc.value.status, error(exc)["reason"]) == (409, "AlreadyExists")

    stale = v1.read_namespaced_config_map("cm-a", ns)
    stale.data = {"k": "2"}
    fresh = v1.replace_namespaced_config_map("cm-a", ns, stale)
    assert fresh.data == {"k": "2"}
    assert int(fresh.metadata.resource_version) > int(stale.metadata.resource_version)
    stale.data = {"k": "3"}
    with pytest.raises(ApiException) as exc:
        v1.replace_namespaced_config_map("cm-a", ns, stale)
    assert (exc.value.status, error(exc)["reason"]) == (409, "Conflict")

    merged = v1.patch_namespaced_config_map("cm-a", ns, {"data": {"k": None, "m": "x"}},
                                            _content_type="application/merge-patch+json")
    assert merged.data == {"m": "x"}
    patched = v1.patch_namespaced_config_map("cm-a", ns, [
        {"op": "add", "path": "/data/n", "value": "y"}, {"op": "replace", "path": "/data/m", "value": "z"},
        {"op": "add", "path": "/metadata/labels/extra", "value": "1"}])
    assert patched.data == {"m": "z", "n": "y"}
    assert patched.metadata.labels["extra"] == "1"
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_config_map("cm-a", ns, [{"op": "test", "path": "/data/m", "value": "nope"}])
    assert exc.value.status == 422

    dry = v1.create_namespaced_config_map(ns, {"metadata": {"name": "cm-dry"}}, dry_run="All")
    assert dry.metadata.name == "cm-dry"
    assert gone(lambda: v1.read_namespaced_config_map("cm-dry", ns))
    v1.delete_namespaced_config_map("cm-b", ns, dry_run="All")
    assert v1.read_namespaced_config_map("cm-b", ns).metadata.uid == b.metadata.uid
    v1.delete_namespaced_config_map("cm-b", ns)
    assert gone(lambda: v1.read_namespaced_config_map("cm-b", ns))

    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map(ns, {"metadata": {"name": "Bad_Name"}})
    body = error(exc)
    assert (exc.value.status, body["reason"]) == (422, "Invalid")
    assert [c["field"] for c in body["details"]["causes"]] == ["metadata.name"]
    assert "RFC 1123" in body["details"]["causes"][0]["message"]

    v1.create_namespaced_config_map(ns, {"metadata": {"name": "frozen"}, "data": {"a": "1"}, "immutable": True})
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_config_map("frozen", ns, {"data": {"a": "2"}})
    assert [c["field"] for c in error(exc)["details"]["causes"]] == ["data"]

    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map(ns, {"metadata": {"name": "huge"}, "data": {"blob": "x" * (1024 * 1024 + 1)}})
    body = error(exc)
    assert exc.value.status == 422
    assert body["details"]["causes"][0]["field"] == "data"
    assert "1048576" in body["details"]["causes"][0]["message"]

    # The pydantic client refuses unknown fields itself, so send this one as raw JSON.
    code, body = post_raw(api, f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "typo"},
                                                                      "dataa": {"a": "1"}})
    assert code == 400
    assert 'unknown field "dataa"' in body["message"]

    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("no-such-namespace", {"metadata": {"name": "x"}})
    assert (exc.value.status, error(exc)["details"]["kind"]) == (404, "namespaces")


def test_watch_resumes_from_resource_version_filters_and_times_out(api: ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    start = v1.list_namespaced_config_map(ns).metadata.resource_version
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "w", "labels": {"watch": "yes"}}})
    v1.patch_namespaced_config_map("w", ns, {"data": {"a": "1"}})
    v1.patch_namespaced_config_map("w", ns, {"metadata": {"labels": {"watch": "no"}}})
    v1.delete_namespaced_config_map("w", ns)

    began = time.monotonic()
    events = [(e["type"], e["object"].metadata.resource_version) for e in watch.Watch().stream(
        v1.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=1)
        if e["object"].metadata.name == "w"]
    assert time.monotonic() - began >= 0.9
    assert [t for t, _ in events] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    rvs = [int(rv) for _, rv in events]
    assert rvs == sorted(rvs)
    assert len(set(rvs)) == len(rvs)

    selected = [e["type"] for e in watch.Watch().stream(
        v1.list_namespaced_config_map, ns, resource_version=start, label_selector="watch=yes", timeout_seconds=1)]
    assert selected == ["ADDED", "MODIFIED", "DELETED"]  # leaving the selector reads as DELETED


# --------------------------------------------------------------------------- Jobs, pods, logs

def test_job_runs_python_with_env_volumes_and_logs(api: ApiClient, ns: str) -> None:
    v1, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "settings"},
                                         "data": {"greeting": "hello from a configmap", "MODE": "batch"}})
    v1.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}})
    script = ("import os, pathlib; "
              "print(pathlib.Path('/etc/settings/greeting').read_text()); "
              "print('token', os.environ['TOKEN'], 'mode', os.environ['MODE'], 'pod', os.environ['POD_NAME']); "
              "print('team', os.environ['TEAM'], 'ns', os.environ['POD_NS'] == os.environ['EXPECT_NS']); "
              "pathlib.Path('/scratch/out.txt').write_text('ok'); print(open('/scratch/out.txt').read())")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello"}, "spec": {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": {"team": "ml"}}, "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}, {"name": "scratch", "emptyDir": {}}],
            "containers": [container("main", ["python", "-c", script], env=[
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
                {"name": "EXPECT_NS", "value": ns}],
                envFrom=[{"configMapRef": {"name": "settings"}}],
                volumeMounts=[{"name": "cfg", "mountPath": "/etc/settings"},
                              {"name": "scratch", "mountPath": "/scratch"}])]}}}}
    start = v1.list_namespaced_pod(ns).metadata.resource_version
    created = batch.create_namespaced_job(ns, job)
    assert created.spec.backoff_limit == 0
    assert created.spec.template.metadata.labels["job-name"] == "hello"

    phases, types, rvs = [], [], []
    w = watch.Watch()
    for event in w.stream(v1.list_namespaced_pod, ns, resource_version=start, timeout_seconds=90):
        types.append(event["type"])
        rvs.append(int(event["object"].metadata.resource_version))
        phases.append(event["object"].status.phase)
        if event["object"].status.phase in ("Succeeded", "Failed"):
            w.stop()
    assert types[0] == "ADDED"
    assert set(types[1:]) == {"MODIFIED"}
    assert rvs == sorted(rvs)
    assert phases[0] == "Pending"
    assert phases[-1] == "Succeeded"

    assert job_outcome(batch, ns, "hello") == ("Complete", "CompletionsReached")
    done = batch.read_namespaced_job("hello", ns)
    assert done.status.succeeded == 1
    assert done.status.failed is None
    assert done.status.start_time <= done.status.completion_time
    assert cond(done, "SuccessCriteriaMet") == ("True", "CompletionsReached")

    [pod] = pods_of(v1, ns, "job-name=hello")
    assert pod.metadata.name.startswith("hello-")
    assert len(pod.metadata.name) == len("hello-") + 5
    assert pod.metadata.labels["batch.kubernetes.io/job-name"] == "hello"
    assert pod.metadata.labels["controller-uid"] == done.metadata.uid
    [owner] = pod.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("Job", "hello", done.metadata.uid, True)
    [status] = pod.status.container_statuses
    assert (status.state.terminated.exit_code, status.state.terminated.reason) == (0, "Completed")
    assert status.image == PY

    log = v1.read_namespaced_pod_log(pod.metadata.name, ns)
    assert log.splitlines() == ["hello from a configmap", f"token s3cr3t mode batch pod {pod.metadata.name}",
                                "team ml ns True", "ok"]
    assert v1.read_namespaced_pod_log(pod.metadata.name, ns, tail_lines=1) == "ok\n"
    stamp, first_line = v1.read_namespaced_pod_log(pod.metadata.name, ns, timestamps=True).splitlines()[0].split(" ", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp)
    assert first_line == "hello from a configmap"
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_pod_log(pod.metadata.name, ns, container="nope")
    assert exc.value.status == 400


def test_host_paths_in_the_base_environment_are_not_remapped(api: ApiClient, ns: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv under /tmp and an emptyDir at /tmp: PATH keeps the venv, the pod's own values map.

    The container gets this process's PATH (the interpreter's directory first): a host path.
    Remapping it like a path the pod spec names would send `/tmp/venv/bin` into the
    emptyDir, and the stage would no longer find its interpreter's packages.
    """
    v1, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    monkeypatch.setenv("PATH", "/tmp/nb2prod-venv/bin" + os.pathsep + os.environ.get("PATH", ""))
    # (Paths spelled in pieces: the stand-in remaps /tmp in the command line too, as it should.)
    script = ("import os; tmp = os.sep + 'tmp'; "
              "print(tmp + '/nb2prod-venv/bin' in os.environ['PATH'].split(os.pathsep)); "
              "print(not os.environ['SCRATCH'].startswith(tmp + '/work'))")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "paths"}, "spec": {
        "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "volumes": [{"name": "tmp", "emptyDir": {}}],
            "containers": [container("main", ["python", "-c", script],
                                     env=[{"name": "SCRATCH", "value": "/tmp/work"}],
                                     volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}])]}}}}
    batch.create_namespaced_job(ns, job)
    assert job_outcome(batch, ns, "paths") == ("Complete", "CompletionsReached")
    [pod] = pods_of(v1, ns, "job-name=paths")
    # PATH kept the (host) venv directory; SCRATCH, set by the pod, points into the emptyDir.
    assert v1.read_namespaced_pod_log(pod.metadata.name, ns).splitlines() == ["True", "True"]


def test_job_backoff_limit_and_active_deadline(api: ApiClient, ns: str) -> None:
    batch, v1 = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(ns, job_body("flaky", ["python", "-c", "import sys; print('boom'); sys.exit(3)"],
                                             backoffLimit=1))
    batch.create_namespaced_job(ns, job_body("slow", ["sleep", "30"], activeDeadlineSeconds=1))

    assert job_outcome(batch, ns, "flaky") == ("Failed", "BackoffLimitExceeded")
    flaky = batch.read_namespaced_job("flaky", ns)
    assert flaky.status.failed == 2
    assert cond(flaky, "FailureTarget") == ("True", "BackoffLimitExceeded")
    pods = pods_of(v1, ns, "job-name=flaky")
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Failed"
        terminated = pod.status.container_statuses[0].state.terminated
        assert (terminated.exit_code, terminated.reason) == (3, "Error")

    assert job_outcome(batch, ns, "slow") == ("Failed", "DeadlineExceeded")
    wait_for(lambda: not pods_of(v1, ns, "job-name=slow"), "the deadline-exceeded pod to be killed and removed")


def test_log_follow_streams_output_while_the_container_runs(api: ApiClient, ns: str,
                                                            tmp_path: Path) -> None:
    v1 = client.CoreV1Api(api)
    # The container goes on only once the test has read its first line from the stream
    # (a host path: the process kubelet runs it here), so a busy machine cannot let it
    # finish before the follow starts.
    go = tmp_path / "go"
    script = ("import os, time\nprint('line 0', flush=True)\ndeadline = time.time() + 120\n"
              f"while not os.path.exists({str(go)!r}) and time.time() < deadline:\n    time.sleep(0.05)\n"
              "time.sleep(0.5)\nfor i in (1, 2):\n    print('line', i, flush=True)\n    time.sleep(0.3)")
    v1.create_namespaced_pod(ns, pod_body("ticker", [container("main", ["python", "-c", script])]))
    wait_for(lambda: pod_phase(v1, ns, "ticker", "Running", "Succeeded"), "the ticker pod to start")
    wait_for(lambda: v1.read_namespaced_pod_log("ticker", ns), "the first line")

    resp = v1.read_namespaced_pod_log("ticker", ns, follow=True, _preload_content=False)
    chunks = resp.stream(amt=None)
    arrivals: list[tuple[float, bytes]] = [(time.monotonic(), next(chunks))]
    assert pod_phase(v1, ns, "ticker", "Running")  # the stream's first line came while it runs
    go.touch()
    arrivals += [(time.monotonic(), chunk) for chunk in chunks]
    resp.release_conn()
    text = b"".join(chunk for _, chunk in arrivals).decode()
    assert text == "line 0\nline 1\nline 2\n"
    assert arrivals[0][1] == b"line 0\n"
    assert arrivals[-1][0] - arrivals[0][0] >= 0.5  # streamed while running, not buffered until exit

    lines = list(watch.Watch().stream(v1.read_namespaced_pod_log, name="ticker", namespace=ns))
    assert lines == ["line 0", "line 1", "line 2"]


def test_init_containers_pvc_persistence_and_sh_commands(api: ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for(lambda: v1.read_namespaced_persistent_volume_claim("data", ns).status.phase == "Bound", "PVC bound")
    mounts = [{"name": "data", "mountPath": "/data"}, {"name": "work", "mountPath": "/work"}]
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}, {"name": "work", "emptyDir": {}}]
    writer = pod_body("writer", [container("main", ["sh", "-c", "cat /work/order > /data/result && echo wrote"],
                                           volumeMounts=mounts)], volumes=volumes, initContainers=[
        container("first", ["sh", "-c", "echo first > /work/order"], volumeMounts=mounts),
        container("second", ["bash", "-c", "echo second >> /work/order"], volumeMounts=mounts)])
    v1.create_namespaced_pod(ns, writer)
    done = wait_for(lambda: pod_phase(v1, ns, "writer", "Succeeded", "Failed"), "the writer pod to finish")
    assert done.status.phase == "Succeeded"
    assert [s.state.terminated.reason for s in done.status.init_container_statuses] == ["Completed", "Completed"]
    assert v1.read_namespaced_pod_log("writer", ns) == "wrote\n"
    assert v1.read_namespaced_pod_log("writer", ns, container="first") == ""

    reader = pod_body("reader", [container("main", ["sh", "-c", "cat /data/result"], volumeMounts=mounts[:1])],
                      volumes=volumes[:1])
    v1.create_namespaced_pod(ns, reader)
    wait_for(lambda: pod_phase(v1, ns, "reader", "Succeeded", "Failed"), "the reader pod to finish")
    assert v1.read_namespaced_pod_log("reader", ns) == "first\nsecond\n"


# --------------------------------------------------------------------------- Deployments and Services

def test_deployment_becomes_available_serves_through_service_proxy_and_rolls_out(api: ApiClient, ns: str) -> None:
    apps, v1 = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, web_deployment("web"))
    v1.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})

    def rolled_out(revision: str) -> Any:
        d = apps.read_namespaced_deployment("web", ns)
        ok = (cond(d, "Available") == ("True", "MinimumReplicasAvailable")
              and cond(d, "Progressing") == ("True", "NewReplicaSetAvailable")
              and d.status.observed_generation == d.metadata.generation
              and d.status.updated_replicas == d.status.available_replicas == d.status.replicas == 1
              and d.metadata.annotations.get("deployment.kubernetes.io/revision") == revision)
        return d if ok else None

    first = wait_for(lambda: rolled_out("1"), "the deployment to become available")
    assert first.spec.strategy.rolling_update.max_surge == "25%"  # server-side defaults
    [rs] = apps.list_namespaced_replica_set(ns, label_selector="app=web").items
    pod_hash = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"web-{pod_hash}"
    assert rs.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert rs.metadata.owner_references[0].uid == first.metadata.uid

    page = v1.connect_get_namespaced_service_proxy_with_path("web:http", ns, path="")
    assert "Directory listing" in page
    [pod] = pods_of(v1, ns, "app=web")
    assert pod.metadata.name.startswith(f"web-{pod_hash}-")
    assert "Directory listing" in v1.connect_get_namespaced_pod_proxy_with_path(f"{pod.metadata.name}:8080", ns,
                                                                                path="")
    endpoints = v1.read_namespaced_endpoints("web", ns)
    assert [a.target_ref.name for a in endpoints.subsets[0].addresses] == [pod.metadata.name]

    patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "env": [{"name": "V", "value": "2"}]}]}}}}
    apps.patch_namespaced_deployment("web", ns, patch)
    second = wait_for(lambda: rolled_out("2"), "the second revision to roll out")
    assert second.metadata.generation == 2
    assert second.spec.template.spec.containers[0].command[:3] == ["python", "-m", "http.server"]
    assert second.spec.template.spec.containers[0].env[0].value == "2"
    replica_sets = {r.metadata.annotations["deployment.kubernetes.io/revision"]: r
                    for r in apps.list_namespaced_replica_set(ns).items}
    assert replica_sets["1"].spec.replicas == 0
    assert replica_sets["2"].spec.replicas == 1
    wait_for(lambda: len(pods_of(v1, ns, "app=web")) == 1, "the old pod to terminate")
    assert "Directory listing" in v1.connect_get_namespaced_service_proxy_with_path("web:80", ns, path="")
    assert "Directory listing" in v1.connect_get_namespaced_service_proxy_with_path("web", ns, path="")

    # Roll back as `kubectl rollout undo` does: put revision 1's template back (without the hash label).
    template = replica_sets["1"].spec.template
    del template.metadata.labels["pod-template-hash"]
    current = apps.read_namespaced_deployment("web", ns)
    current.spec.template = template
    apps.replace_namespaced_deployment("web", ns, current)
    wait_for(lambda: rolled_out("3"), "the rollback to roll out")
    revisions = {r.metadata.name: r.metadata.annotations["deployment.kubernetes.io/revision"]
                 for r in apps.list_namespaced_replica_set(ns).items}
    assert revisions[rs.metadata.name] == "3"  # the first ReplicaSet is reused, not recreated
    assert len(revisions) == 2

    scaled = apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 2}})
    assert scaled.spec.replicas == 2
    wait_for(lambda: apps.read_namespaced_deployment("web", ns).status.ready_replicas == 2, "two ready replicas")


def test_rollout_that_never_becomes_ready_hits_progress_deadline(api: ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(ns, web_deployment("api", progressDeadlineSeconds=2))
    wait_for(lambda: cond(apps.read_namespaced_deployment("api", ns), "Available") == ("True",
                                                                                        "MinimumReplicasAvailable"),
             "the first revision to become available")
    broken = [{"name": "web", "command": ["python", "-c", "import time; time.sleep(60)"]}]
    apps.patch_namespaced_deployment("api", ns, {"spec": {"template": {"spec": {"containers": broken}}}})

    def timed_out() -> Any:
        d = apps.read_namespaced_deployment("api", ns)
        return d if cond(d, "Progressing") == ("False", "ProgressDeadlineExceeded") else None

    stuck = wait_for(timed_out, "ProgressDeadlineExceeded", timeout=90)
    assert cond(stuck, "Available") == ("True", "MinimumReplicasAvailable")  # old pod keeps serving
    assert stuck.status.available_replicas == 1
    assert stuck.status.updated_replicas == 1
    assert stuck.status.unavailable_replicas == 1
    message = next(c.message for c in stuck.status.conditions if c.type == "Progressing")
    assert message.endswith("has timed out progressing.")


# --------------------------------------------------------------------------- CronJobs

def test_cronjob_trigger_names_jobs_and_honours_concurrency_policy(api: ApiClient, ns: str,
                                                                   kube_standin: KubeStandIn) -> None:
    batch = client.BatchV1Api(api)
    cronjob = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"}, "spec": {
        "schedule": "*/5 * * * *", "timeZone": "Europe/Berlin", "concurrencyPolicy": "Forbid",
        "jobTemplate": {"metadata": {"labels": {"pipeline": "nightly"}}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [container("main", ["sleep", "30"])]}}}}}}
    created = batch.create_namespaced_cron_job(ns, cronjob)
    assert created.spec.successful_jobs_history_limit == 3

    noon = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    job = kube_standin.trigger_cronjob(ns, "nightly", noon)
    assert job is not None
    expected = f"nightly-{int(noon.timestamp()) // 60}"
    read = batch.read_namespaced_job(expected, ns)
    assert read.metadata.labels["pipeline"] == "nightly"
    assert read.metadata.owner_references[0].kind == "CronJob"
    assert read.metadata.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] == "2024-01-01T13:00:00+01:00"
    cj = batch.read_namespaced_cron_job("nightly", ns)
    assert [r.name for r in cj.status.active] == [expected]
    assert cj.status.last_schedule_time == noon

    assert kube_standin.trigger_cronjob(ns, "nightly", noon + dt.timedelta(minutes=5)) is None  # Forbid
    assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == [expected]

    batch.patch_namespaced_cron_job("nightly", ns, {"spec": {"concurrencyPolicy": "Replace"}})
    replacement = kube_standin.trigger_cronjob(ns, "nightly", noon + dt.timedelta(minutes=10))
    assert replacement is not None
    wait_for(lambda: gone(lambda: batch.read_namespaced_job(expected, ns)), "the replaced job to be deleted")
    before = time.time()
    latest = kube_standin.trigger_cronjob(ns, "nightly")
    after = time.time()
    assert latest is not None
    minutes = int(latest["metadata"]["name"].rsplit("-", 1)[1])
    assert minutes % 5 == 0

    def last_slot(at: float) -> int:  # the latest */5 minute at `at` (minutes since the epoch)
        return int(at // 60) // 5 * 5

    assert last_slot(before) <= minutes <= last_slot(after)  # (also across a 5-minute mark)

    with pytest.raises(ApiException) as exc:
        batch.create_namespaced_cron_job(ns, {**cronjob, "metadata": {"name": "bad"},
                                              "spec": {**cronjob["spec"], "schedule": "61 * * *",
                                                       "timeZone": "Mars/Olympus"}})
    assert sorted(c["field"] for c in error(exc)["details"]["causes"]) == ["spec.schedule", "spec.timeZone"]
    hourly = batch.create_namespaced_cron_job(ns, {**cronjob, "metadata": {"name": "hourly"},
                                                   "spec": {**cronjob["spec"], "schedule": "@hourly"}})
    assert hourly.spec.schedule == "@hourly"


def test_cronjob_history_limit_keeps_only_recent_jobs(api: ApiClient, ns: str, kube_standin: KubeStandIn) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_cron_job(ns, {"metadata": {"name": "quick"}, "spec": {
        "schedule": "0 * * * *", "successfulJobsHistoryLimit": 1, "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [container("main", ["python", "-c", "print('ran')"])]}}}}}})
    base = dt.datetime(2024, 3, 1, 0, 0, tzinfo=dt.timezone.utc)
    names = []
    for hour in range(3):
        job = kube_standin.trigger_cronjob(ns, "quick", base + dt.timedelta(hours=hour))
        assert job is not None
        names.append(job["metadata"]["name"])
        assert job_outcome(batch, ns, names[-1]) == ("Complete", "CompletionsReached")
    wait_for(lambda: [j.metadata.name for j in batch.list_namespaced_job(ns).items] == names[-1:],
             "old successful jobs to be pruned")
    wait_for(lambda: batch.read_namespaced_cron_job("quick", ns).status.last_successful_time, "lastSuccessfulTime")


# --------------------------------------------------------------------------- deletion

def test_delete_cascades_background_foreground_and_job_default_orphans(api: ApiClient, ns: str) -> None:
    apps, v1, batch = client.AppsV1Api(api), client.CoreV1Api(api), client.BatchV1Api(api)
    sleeper = [container("main", ["sleep", "60"])]
    for name in ("fg", "bg"):
        apps.create_namespaced_deployment(ns, {"metadata": {"name": name}, "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": sleeper}}}})
    for name in ("fg", "bg"):
        wait_for(lambda n=name: len([p for p in pods_of(v1, ns, f"app={n}") if p.status.phase == "Running"]) == 2,
                 f"{name} pods running")

    # A finalizer of our own holds the ReplicaSet, so the pending foreground deletion is observed
    # for certain (its sleeping pods end at once on SIGTERM: on a busy machine the whole cascade
    # could finish before the read below).
    [rs] = apps.list_namespaced_replica_set(ns, label_selector="app=fg").items
    apps.patch_namespaced_replica_set(rs.metadata.name, ns, {"metadata": {"finalizers": ["nb2prod.test/hold"]}})
    apps.delete_namespaced_deployment("fg", ns, propagation_policy="Foreground")
    pending = apps.read_namespaced_deployment("fg", ns)
    assert pending.metadata.deletion_timestamp is not None
    assert "foregroundDeletion" in pending.metadata.finalizers
    wait_for(lambda: not pods_of(v1, ns, "app=fg"), "foreground deletion of the pods")
    assert apps.read_namespaced_deployment("fg", ns).metadata.deletion_timestamp is not None  # still held
    held = apps.read_namespaced_replica_set(rs.metadata.name, ns)
    assert held.metadata.deletion_timestamp is not None and held.metadata.finalizers == ["nb2prod.test/hold"]
    apps.patch_namespaced_replica_set(rs.metadata.name, ns, [{"op": "remove", "path": "/metadata/finalizers"}])
    wait_for(lambda: gone(lambda: apps.read_namespaced_deployment("fg", ns)), "foreground deletion to finish")
    assert pods_of(v1, ns, "app=fg") == []
    assert apps.list_namespaced_replica_set(ns, label_selector="app=fg").items == []

    apps.delete_namespaced_deployment("bg", ns)
    assert gone(lambda: apps.read_namespaced_deployment("bg", ns))
    wait_for(lambda: not pods_of(v1, ns, "app=bg"), "background deletion of pods")
    assert apps.list_namespaced_replica_set(ns, label_selector="app=bg").items == []

    for name in ("orphaned", "cascaded"):
        batch.create_namespaced_job(ns, job_body(name, ["sleep", "60"]))
        wait_for(lambda n=name: pods_of(v1, ns, f"job-name={n}"), f"{name} pod")
    batch.delete_namespaced_job("orphaned", ns)  # batch/v1 default: orphan the pods
    batch.delete_namespaced_job("cascaded", ns, propagation_policy="Background")
    wait_for(lambda: not pods_of(v1, ns, "job-name=cascaded"), "the cascaded job's pods to go")
    [orphan] = pods_of(v1, ns, "job-name=orphaned")
    assert not orphan.metadata.owner_references


def test_namespace_deletion_empties_it_and_refuses_new_content(api: ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespace({"metadata": {"name": "doomed"}})
    # A finalizer of our own holds the namespace in Terminating until the checks below are
    # done (the pod's 2 s of grace alone could pass before them on a busy machine).
    v1.create_namespaced_config_map("doomed", {"metadata": {"name": "cfg",
                                                            "finalizers": ["nb2prod.test/hold"]}})
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('armed', flush=True); "
                "time.sleep(60)")
    v1.create_namespaced_pod("doomed", pod_body("sleeper", [container("c", ["python", "-c", stubborn])],
                                                terminationGracePeriodSeconds=2))
    wait_for(lambda: pod_phase(v1, "doomed", "sleeper", "Running"), "the pod to run")
    wait_for(lambda: v1.read_namespaced_pod_log("sleeper", "doomed") == "armed\n", "SIGTERM to be ignored")
    began = time.monotonic()
    v1.delete_namespace("doomed")
    assert v1.read_namespace("doomed").status.phase == "Terminating"
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("doomed", {"metadata": {"name": "late"}})
    assert (exc.value.status, error(exc)["reason"]) == (403, "Forbidden")
    wait_for(lambda: v1.read_namespaced_config_map("cfg", "doomed").metadata.deletion_timestamp,
             "the namespace's content to be deleted")
    v1.patch_namespaced_config_map("cfg", "doomed", [{"op": "remove", "path": "/metadata/finalizers"}])
    wait_for(lambda: gone(lambda: v1.read_namespace("doomed")), "the namespace to disappear")
    assert time.monotonic() - began >= 1.5  # the pod ignored SIGTERM: SIGKILL came after the grace period
    assert v1.list_pod_for_all_namespaces(field_selector="metadata.namespace=doomed").items == []


# --------------------------------------------------------------------------- other kinds and patch strategies

def test_rbac_ingress_secrets_and_strategic_merge_of_named_lists(api: ApiClient, ns: str) -> None:
    v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    rbac, net = client.RbacAuthorizationV1Api(api), client.NetworkingV1Api(api)
    v1.create_namespaced_service_account(ns, {"metadata": {"name": "runner"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "pod-reader"}, "rules": [
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]})
    binding = {"metadata": {"name": "runner-reads"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": ns}]}
    rbac.create_namespaced_role_binding(ns, binding)
    with pytest.raises(ApiException) as exc:
        rbac.patch_namespaced_role_binding("runner-reads", ns, {"roleRef": {"name": "other"}})
    assert [c["field"] for c in error(exc)["details"]["causes"]] == ["roleRef"]
    assert [r.metadata.name for r in rbac.list_namespaced_role(ns).items] == ["pod-reader"]

    ingress = net.create_namespaced_ingress(ns, {"metadata": {"name": "web"}, "spec": {"rules": [{
        "host": "web.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
            "service": {"name": "web", "port": {"number": 80}}}}]}}]}})
    assert ingress.metadata.generation == 1

    secret = v1.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"user": "ml"}})
    assert (secret.type, secret.data, secret.string_data) == ("Opaque", {"user": "bWw="}, None)

    base = web_deployment("patched", replicas=0)
    base["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"},
                                                                {"name": "B", "value": "2"}]
    base["spec"]["template"]["spec"]["volumes"] = [{"name": "cache", "emptyDir": {}}]
    apps.create_namespaced_deployment(ns, base)
    patch = {"spec": {"template": {"spec": {
        "volumes": [{"name": "models", "configMap": {"name": "models"}}],
        "containers": [{"name": "web", "env": [{"name": "B", "value": "3"}, {"name": "A", "$patch": "delete"}],
                        "volumeMounts": [{"name": "models", "mountPath": "/models"}]}]}}}}
    spec = apps.patch_namespaced_deployment("patched", ns, patch).spec.template.spec
    assert [v.name for v in spec.volumes] == ["cache", "models"]
    [web] = spec.containers
    assert web.command[:2] == ["python", "-m"]  # merged by name, not replaced
    assert [(e.name, e.value) for e in web.env] == [("B", "3")]
    assert [m.mount_path for m in web.volume_mounts] == ["/models"]

    replaced = apps.patch_namespaced_deployment(
        "patched", ns, {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}}},
        _content_type="application/merge-patch+json").spec.template.spec.containers
    assert [(c.name, c.command) for c in replaced] == [("web", None)]  # JSON merge patch replaces lists


def test_liveness_probe_failure_restarts_the_container(api: ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    probe = {"httpGet": {"path": "/missing", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}
    v1.create_namespaced_pod(ns, pod_body("sick", [container(
        "web", ["python", "-m", "http.server", "8080"], ports=[{"containerPort": 8080}], livenessProbe=probe)],
        restart="Always"))

    def restarted() -> Any:
        status = (v1.read_namespaced_pod("sick", ns).status.container_statuses or [None])[0]
        return status if status is not None and status.restart_count >= 1 else None

    status = wait_for(restarted, "a liveness restart")
    assert status.last_state.terminated.exit_code == 137
    reasons = {e.reason for e in v1.list_namespaced_event(
        ns, field_selector="involvedObject.name=sick").items}
    assert {"Unhealthy", "Killing"} <= reasons


# --------------------------------------------------------------------------- validation

def test_validation_rejects_what_an_apiserver_rejects(api: ApiClient, ns: str) -> None:
    apps, v1, batch = client.AppsV1Api(api), client.CoreV1Api(api), client.BatchV1Api(api)

    def fields(call: Callable[[], Any], code: int = 422) -> list[str]:
        with pytest.raises(ApiException) as exc:
            call()
        assert exc.value.status == code
        return sorted(c["field"] for c in error(exc).get("details", {}).get("causes", []))

    mismatched = web_deployment("mismatch")
    mismatched["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    assert fields(lambda: apps.create_namespaced_deployment(ns, mismatched)) == ["spec.template.metadata.labels"]
    no_selector = web_deployment("noselector")
    del no_selector["spec"]["selector"]  # the pydantic client would refuse this itself: send raw JSON
    code, body = post_raw(api, f"/apis/apps/v1/namespaces/{ns}/deployments", no_selector)
    assert (code, [c["field"] for c in body["details"]["causes"]]) == (422, ["spec.selector"])

    always = job_body("always", ["true"])
    always["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert fields(lambda: batch.create_namespaced_job(ns, always)) == ["spec.template.spec.restartPolicy"]
    assert fields(lambda: v1.create_namespaced_pod(ns, pod_body("noimage", [{"name": "c", "command": ["true"]}]))) \
        == ["spec.containers[0].image"]
    assert fields(lambda: v1.create_namespaced_service(ns, {"metadata": {"name": "1svc"}, "spec": {
        "ports": [{"port": 80}]}})) == ["metadata.name"]
    code, body = post_raw(api, f"/api/v1/namespaces/{ns}/pods",
                          pod_body("typo", [container("c", ["true"], imagePullPolicyy="x")]))
    assert (code, body["reason"]) == (400, "BadRequest")
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.containers[0].imagePullPolicyy"]

    batch.create_namespaced_job(ns, job_body("fixed", ["true"]))
    change = {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "other:1"}]}}}}
    assert fields(lambda: batch.patch_namespaced_job("fixed", ns, change)) == ["spec.template"]

    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_pod(ns, pod_body("nosa", [container("c", ["true"])], serviceAccountName="ghost"))
    assert (exc.value.status, error(exc)["reason"]) == (403, "Forbidden")


# --------------------------------------------------------------------------- fault injection

def test_fault_kill_pod_mid_run_fails_the_job(api: ApiClient, ns: str, kube_standin: KubeStandIn) -> None:
    batch, v1 = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(ns, job_body("victim", ["sleep", "60"], backoffLimit=0))
    pod = wait_for(lambda: [p for p in pods_of(v1, ns, "job-name=victim") if p.status.phase == "Running"],
                   "the victim pod to run")[0]
    assert kube_standin.kill_pod(ns, pod.metadata.name) is True
    assert job_outcome(batch, ns, "victim") == ("Failed", "BackoffLimitExceeded")
    terminated = v1.read_namespaced_pod(pod.metadata.name, ns).status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "Error")


def test_deleting_a_running_job_pod_is_a_failed_attempt_and_the_job_retries(
        api: ApiClient, ns: str) -> None:
    """As on the real cluster (`kubectl delete pod` of a deploy's stage pod): the
    container gets SIGTERM, the pod goes away, the Job counts a failed attempt and
    starts a new pod while attempts are left; the last one deleted fails the Job."""
    batch, v1 = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(ns, job_body("deleted", ["sleep", "60"], backoffLimit=1))

    def running() -> list[Any]:
        return [p for p in pods_of(v1, ns, "job-name=deleted") if p.status.phase == "Running"
                and not p.metadata.deletion_timestamp]

    first = wait_for(running, "the first pod to run")[0].metadata.name
    v1.delete_namespaced_pod(first, ns)
    second = wait_for(lambda: [p for p in running() if p.metadata.name != first],
                      "a replacement pod")[0].metadata.name
    wait_for(lambda: first not in {p.metadata.name for p in pods_of(v1, ns, "job-name=deleted")},
             "the deleted pod to go away")
    job = batch.read_namespaced_job("deleted", ns)
    assert (job.status.failed, cond(job, "Failed")) == (1, None)
    v1.delete_namespaced_pod(second, ns)
    assert job_outcome(batch, ns, "deleted") == ("Failed", "BackoffLimitExceeded")


def test_fault_kill_restarts_a_deployment_container(api: ApiClient, ns: str, kube_standin: KubeStandIn) -> None:
    apps, v1 = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, web_deployment("svc"))
    wait_for(lambda: apps.read_namespaced_deployment("svc", ns).status.ready_replicas == 1, "ready")
    [pod] = pods_of(v1, ns, "app=svc")
    assert kube_standin.kill_pod(ns, pod.metadata.name)
    def restarted_and_ready() -> Any:
        status = v1.read_namespaced_pod(pod.metadata.name, ns).status.container_statuses[0]
        return status if status.restart_count == 1 and status.ready else None

    restarted = wait_for(restarted_and_ready, "the container to restart")
    assert restarted.last_state.terminated.exit_code == 137
    assert '"GET / HTTP/1.1" 200' in v1.read_namespaced_pod_log(pod.metadata.name, ns, previous=True)


def test_non_root_container_restart_keeps_emptydir_and_configmap_modes(
        api: ApiClient, ns: str, kube_standin: KubeStandIn) -> None:
    """As on a real node: ConfigMap files are 0444 (defaultMode), an emptyDir outlives a
    container restart, and a non-root container cannot write over a read-only file."""
    apps, v1 = client.AppsV1Api(api), client.CoreV1Api(api)
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "code"}, "data": {"app.py": "x = 1\n"}})
    script = ("ls -l /code/app.py; cp -rL /code/* /work/ && echo copied && "
              "exec python -m http.server 8080")
    dep = web_deployment("copier")
    pod_spec = dep["spec"]["template"]["spec"]
    pod_spec["securityContext"] = {"runAsNonRoot": True, "runAsUser": 1000}
    pod_spec["volumes"] = [{"name": "code", "configMap": {"name": "code", "defaultMode": 0o444}},
                           {"name": "work", "emptyDir": {}}]
    web = pod_spec["containers"][0]
    web["command"] = ["sh", "-c", script]
    web["volumeMounts"] = [{"name": "code", "mountPath": "/code", "readOnly": True},
                           {"name": "work", "mountPath": "/work"}]
    apps.create_namespaced_deployment(ns, dep)
    wait_for(lambda: apps.read_namespaced_deployment("copier", ns).status.ready_replicas == 1, "ready")
    [pod] = pods_of(v1, ns, "app=copier")
    first = v1.read_namespaced_pod_log(pod.metadata.name, ns)
    assert "-r--r--r--" in first and "copied" in first
    assert kube_standin.kill_pod(ns, pod.metadata.name, signal.SIGTERM)

    def crashing() -> Any:
        status = v1.read_namespaced_pod(pod.metadata.name, ns).status.container_statuses[0]
        last = status.last_state.terminated
        return status if status.restart_count >= 1 and last and last.exit_code == 1 else None

    wait_for(crashing, "the restarted container to fail")  # (the first instance: 143)
    log = v1.read_namespaced_pod_log(pod.metadata.name, ns)
    assert "Permission denied" in log and "copied" not in log


def test_missing_claim_is_unschedulable_with_the_scheduler_message(api: ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod(ns, pod_body("needs-claim", [container("c", ["true"])], volumes=[
        {"name": "data", "persistentVolumeClaim": {"claimName": "missing-claim"}}]))

    def message() -> str | None:
        pod = v1.read_namespaced_pod("needs-claim", ns)
        if cond(pod, "PodScheduled") == ("False", "Unschedulable"):
            return next(c.message for c in pod.status.conditions if c.type == "PodScheduled")
        return None

    assert 'persistentvolumeclaim "missing-claim" not found' in wait_for(message, "Unschedulable")
    v1.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "missing-claim"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for(lambda: pod_phase(v1, ns, "needs-claim", "Succeeded"), "the pod to run once the claim exists")


def test_fault_injected_api_errors(api: ApiClient, ns: str, kube_standin: KubeStandIn) -> None:
    apps, v1 = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, web_deployment("flaky"))
    kube_standin.inject_api_errors(verb="patch", resource="deployments", status=500, count=2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            apps.patch_namespaced_deployment("flaky", ns, {"metadata": {"labels": {"try": "x"}}})
        assert (exc.value.status, error(exc)["reason"]) == (500, "InternalError")
    patched = apps.patch_namespaced_deployment("flaky", ns, {"metadata": {"labels": {"try": "3"}}})
    assert patched.metadata.labels["try"] == "3"

    v1.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}})
    kube_standin.inject_api_errors(verb="replace", resource="configmaps", status=409)
    current = v1.read_namespaced_config_map("cfg", ns)
    with pytest.raises(ApiException) as exc:
        v1.replace_namespaced_config_map("cfg", ns, current)
    assert (exc.value.status, error(exc)["reason"]) == (409, "Conflict")
    v1.replace_namespaced_config_map("cfg", ns, current)
    failures = [(r.verb, r.resource, r.code) for r in kube_standin.requests if r.code >= 400]
    assert failures == [("patch", "deployments", 500)] * 2 + [("update", "configmaps", 409)]


def test_fault_unpullable_image_waits_with_err_image_pull(api: ApiClient, ns: str,
                                                          kube_standin: KubeStandIn) -> None:
    v1 = client.CoreV1Api(api)
    image = "registry.invalid/team/missing:1.0"
    kube_standin.unpullable_images.add(image)
    v1.create_namespaced_pod(ns, pod_body("pull", [{"name": "c", "image": image, "command": ["echo", "pulled"]}]))

    def waiting_reason() -> str | None:
        pod = v1.read_namespaced_pod("pull", ns)
        statuses = pod.status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        reason = waiting.reason if waiting else None
        return reason if pod.status.phase == "Pending" and reason in ("ErrImagePull", "ImagePullBackOff") else None

    seen: set[str] = set()

    def new_reason() -> str | None:
        reason = waiting_reason()
        return reason if reason and reason not in seen else None

    seen.add(wait_for(new_reason, "ErrImagePull"))
    seen.add(wait_for(new_reason, "ImagePullBackOff"))
    assert seen == {"ErrImagePull", "ImagePullBackOff"}
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_pod_log("pull", ns)
    assert exc.value.status == 400
    assert "waiting to start" in error(exc)["message"]

    kube_standin.unpullable_images.discard(image)
    wait_for(lambda: pod_phase(v1, ns, "pull", "Succeeded"), "the pod to run once the image can be pulled")
    assert v1.read_namespaced_pod_log("pull", ns) == "pulled\n"


def test_fault_unschedulable_pods_stay_pending(api: ApiClient, ns: str, kube_standin: KubeStandIn) -> None:
    v1 = client.CoreV1Api(api)

    def unschedulable(name: str) -> str | None:
        pod = v1.read_namespaced_pod(name, ns)
        found = cond(pod, "PodScheduled")
        if pod.status.phase == "Pending" and found == ("False", "Unschedulable"):
            return next(c.message for c in pod.status.conditions if c.type == "PodScheduled")
        return None

    kube_standin.unschedulable = True
    v1.create_namespaced_pod(ns, pod_body("blocked", [container("c", ["true"])]))
    assert "were unschedulable" in wait_for(lambda: unschedulable("blocked"), "Unschedulable")
    kube_standin.unschedulable = False
    wait_for(lambda: pod_phase(v1, ns, "blocked", "Succeeded"), "the pod to run once the node is schedulable")

    big = container("c", ["true"], resources={"requests": {"cpu": "64", "memory": "1Gi"}})
    v1.create_namespaced_pod(ns, pod_body("too-big", [big]))
    assert "Insufficient cpu" in wait_for(lambda: unschedulable("too-big"), "Insufficient cpu")
    v1.create_namespaced_pod(ns, pod_body("gpu-only", [container("c", ["true"])], nodeSelector={"gpu": "yes"}))
    assert "node affinity/selector" in wait_for(lambda: unschedulable("gpu-only"), "selector mismatch")
    kube_standin.node_capacity = {"cpu": "128", "memory": "64Gi", "pods": "110"}
    wait_for(lambda: pod_phase(v1, ns, "too-big", "Succeeded"), "the big pod to fit a bigger node")


# --------------------------------------------------------------------------- TLS, service-account tokens, RBAC

def status_of(exc: pytest.ExceptionInfo[ApiException]) -> tuple[int, str, str, dict[str, Any]]:
    """(code, reason, message, details) of an API error."""
    body = error(exc)
    return exc.value.status, body["reason"], body["message"], body.get("details", {})


def test_tls_endpoint_certificate_and_kube_root_ca_configmaps(api: ApiClient, ns: str,
                                                              kube_standin: KubeStandIn) -> None:
    import socket
    import ssl
    import urllib.error
    import urllib.request

    from cryptography import x509

    v1 = client.CoreV1Api(api)
    assert kube_standin.url.startswith("http://")  # the kubeconfig stays on plain HTTP
    assert kube_standin.tls_url.startswith("https://127.0.0.1:") and kube_standin.tls_url != kube_standin.url
    assert kube_standin.ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert kube_standin.ca_file.read_text() == kube_standin.ca_pem

    # Like the root-ca-cert-publisher: every namespace, boot-time or new, has kube-root-ca.crt with the CA.
    for namespace in ("default", "kube-system", "kube-public", ns):
        cm = v1.read_namespaced_config_map("kube-root-ca.crt", namespace)
        assert cm.data == {"ca.crt": kube_standin.ca_pem}
        assert cm.metadata.labels is None

    # The serving certificate: signed by that CA, valid for the in-cluster names and loopback.
    ca = x509.load_pem_x509_certificate(kube_standin.ca_pem.encode())
    pem = ssl.get_server_certificate(("127.0.0.1", kube_standin.tls_port))
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} <= \
        set(san.get_values_for_type(x509.DNSName))
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    trusted = ssl.create_default_context(cafile=str(kube_standin.ca_file))
    for host in ("127.0.0.1", "localhost"):
        with urllib.request.urlopen(f"https://{host}:{kube_standin.tls_port}/version", context=trusted,
                                    timeout=10) as resp:
            assert json.load(resp)["minor"] == "30"
    with pytest.raises(urllib.error.URLError) as failure:  # not publicly trusted: the CA is needed
        urllib.request.urlopen(f"{kube_standin.tls_url}/version", context=ssl.create_default_context(), timeout=10)
    assert isinstance(failure.value.reason, ssl.SSLCertVerificationError)
    with socket.create_connection(("127.0.0.1", kube_standin.tls_port), timeout=10) as plain:
        plain.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP on the TLS port: no answer
        try:
            answer = plain.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert b"minor" not in answer

    # The official client over TLS with the kubeconfig's (admin) token; a watch streams until its timeout.
    with kube_standin.api_client(token="standin-token") as tls_api:
        assert tls_api.configuration.host == kube_standin.tls_url
        tls_v1 = client.CoreV1Api(tls_api)
        start = tls_v1.list_namespaced_config_map(ns).metadata.resource_version
        v1.create_namespaced_config_map(ns, {"metadata": {"name": "over-tls"}})
        began = time.monotonic()
        seen = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
            tls_v1.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=2)]
        assert seen == [("ADDED", "over-tls")]
        assert time.monotonic() - began >= 1.5  # not cut short by the peer-hang-up check
        assert tls_v1.read_namespaced_config_map("over-tls", ns).metadata.name == "over-tls"
    service = v1.read_namespaced_service("kubernetes", "default")
    assert service.spec.ports[0].target_port == kube_standin.tls_port


def test_service_account_tokens_are_authorized_with_rbac(api: ApiClient, ns: str, kube_standin: KubeStandIn) -> None:
    import urllib.error
    import urllib.request

    v1, apps, rbac = client.CoreV1Api(api), client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
    v1.create_namespaced_service_account(ns, {"metadata": {"name": "iris-roller"}})
    apps.create_namespaced_deployment(ns, web_deployment("iris-serve", replicas=0))
    apps.create_namespaced_deployment(ns, web_deployment("other", replicas=0))
    rbac.create_namespaced_role(ns, {"metadata": {"name": "roller"}, "rules": [
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["iris-serve"], "verbs": ["get"]},
        {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]})
    rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "roller"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "roller"},
        "subjects": [{"kind": "ServiceAccount", "name": "iris-roller"}]})  # namespace defaults to the binding's
    watcher = f"cm-watcher-{ns}"
    rbac.create_cluster_role({"metadata": {"name": watcher}, "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}]})
    rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "watch-cms"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": watcher},
        "subjects": [{"kind": "User", "name": f"system:serviceaccount:{ns}:iris-roller"}]})
    reader = f"ns-reader-{ns}"
    rbac.create_cluster_role({"metadata": {"name": reader}, "rules": [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]})
    rbac.create_cluster_role_binding({"metadata": {"name": reader}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader},
        "subjects": [{"kind": "Group", "name": f"system:serviceaccounts:{ns}"}]})

    token = kube_standin.service_account_token(ns, "iris-roller")
    assert re.fullmatch(rf"standin-sa\.{ns}\.iris-roller\.[0-9a-f]{{40}}", token)
    user = f"system:serviceaccount:{ns}:iris-roller"
    with kube_standin.api_client(token=token) as sa_api:
        sa_v1, sa_apps = client.CoreV1Api(sa_api), client.AppsV1Api(sa_api)
        assert sa_apps.read_namespaced_deployment("iris-serve", ns).metadata.name == "iris-serve"
        assert client.VersionApi(sa_api).get_code().minor == "30"  # discovery is open to authenticated users

        with pytest.raises(ApiException) as exc:
            sa_apps.patch_namespaced_deployment("iris-serve", ns, {"spec": {"replicas": 2}})
        assert status_of(exc) == (403, "Forbidden", (
            f'deployments.apps "iris-serve" is forbidden: User "{user}" cannot patch resource "deployments" in '
            f'API group "apps" in the namespace "{ns}"'), {"name": "iris-serve", "group": "apps",
                                                          "kind": "deployments"})
        with pytest.raises(ApiException) as exc:
            sa_apps.read_namespaced_deployment("other", ns)  # resourceNames
        assert status_of(exc)[0] == 403
        with pytest.raises(ApiException) as exc:
            sa_apps.list_namespaced_deployment(ns)  # resourceNames never allow list
        assert status_of(exc) == (403, "Forbidden", (
            f'deployments.apps is forbidden: User "{user}" cannot list resource "deployments" in API group '
            f'"apps" in the namespace "{ns}"'), {"group": "apps", "kind": "deployments"})

        scaled = sa_apps.patch_namespaced_deployment_scale("other", ns, {"spec": {"replicas": 0}})  # */scale
        assert scaled.spec.replicas == 0
        sa_apps.patch_namespaced_deployment_scale("iris-serve", ns, {"spec": {"replicas": 1}})
        assert apps.read_namespaced_deployment("iris-serve", ns).spec.replicas == 1
        with pytest.raises(ApiException) as exc:
            sa_apps.replace_namespaced_deployment_scale("iris-serve", ns, {"spec": {"replicas": 1},
                                                                          "metadata": {"name": "iris-serve"}})
        assert "cannot update resource \"deployments/scale\"" in status_of(exc)[2]

        # A ClusterRole through a RoleBinding: only in that namespace; list and watch, nothing else.
        assert "kube-root-ca.crt" in [c.metadata.name for c in sa_v1.list_namespaced_config_map(ns).items]
        assert list(watch.Watch().stream(sa_v1.list_namespaced_config_map, ns, timeout_seconds=1))
        with pytest.raises(ApiException) as exc:
            sa_v1.list_namespaced_config_map("default")
        assert 'in the namespace "default"' in status_of(exc)[2]
        with pytest.raises(ApiException) as exc:
            sa_v1.create_namespaced_config_map(ns, {"metadata": {"name": "nope"}})
        assert status_of(exc)[2] == (f'configmaps is forbidden: User "{user}" cannot create resource "configmaps" '
                                     f'in API group "" in the namespace "{ns}"')
        with pytest.raises(ApiException) as exc:
            sa_v1.delete_collection_namespaced_config_map(ns)
        assert "cannot deletecollection resource" in status_of(exc)[2]
        assert [c.metadata.name for c in v1.list_namespaced_config_map(ns).items] == ["kube-root-ca.crt"]

        # A ClusterRoleBinding to the service accounts' group: cluster-wide, but only the verbs it grants.
        assert sa_v1.read_namespace(ns).metadata.name == ns
        assert sa_v1.read_namespace("default").metadata.name == "default"
        with pytest.raises(ApiException) as exc:
            sa_v1.list_namespace()
        assert status_of(exc)[2] == (f'namespaces is forbidden: User "{user}" cannot list resource "namespaces" '
                                     'in API group "" at the cluster scope')

        # pods/log is its own resource: the log is readable, the pod is not.
        v1.create_namespaced_pod(ns, pod_body("talker", [container("c", ["echo", "hi"])]))
        wait_for(lambda: pod_phase(v1, ns, "talker", "Succeeded"), "the talker pod")
        assert sa_v1.read_namespaced_pod_log("talker", ns) == "hi\n"
        with pytest.raises(ApiException) as exc:
            sa_v1.read_namespaced_pod("talker", ns)
        assert status_of(exc)[3] == {"name": "talker", "kind": "pods"}

        # A binding to a missing role says so; removing a binding revokes at once.
        rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "dangling"}, "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "missing"},
            "subjects": [{"kind": "ServiceAccount", "name": "iris-roller", "namespace": ns}]})
        with pytest.raises(ApiException) as exc:
            sa_v1.read_namespaced_secret("any", ns)
        assert status_of(exc)[2].endswith(': RBAC: role.rbac.authorization.k8s.io "missing" not found')
        rbac.delete_namespaced_role_binding("roller", ns)
        with pytest.raises(ApiException) as exc:
            sa_apps.read_namespaced_deployment("iris-serve", ns)
        assert status_of(exc)[0] == 403

    # Wildcards: everything in the namespace, nothing outside it.
    v1.create_namespaced_service_account(ns, {"metadata": {"name": "owner"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "all"}, "rules": [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})
    rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "owner"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "all"},
        "subjects": [{"kind": "ServiceAccount", "name": "owner", "namespace": ns}]})
    with kube_standin.api_client(token=kube_standin.service_account_token(ns, "owner")) as owner_api:
        owner_v1 = client.CoreV1Api(owner_api)
        owner_v1.create_namespaced_config_map(ns, {"metadata": {"name": "mine"}})
        client.AppsV1Api(owner_api).delete_namespaced_deployment("other", ns)
        owner_v1.delete_collection_namespaced_config_map(ns, label_selector="none=here")
        with pytest.raises(ApiException) as exc:
            owner_v1.read_namespaced_config_map("kube-root-ca.crt", "default")
        assert status_of(exc)[0] == 403

    # Authentication: forged tokens, unknown accounts, deleted accounts and unknown tokens are 401.
    def call(token: str | None, path: str = f"/api/v1/namespaces/{ns}") -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(kube_standin.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    unauthorized = (401, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    assert call(token) == (200, call(token)[1])
    assert call(token[:-1] + ("0" if token[-1] != "0" else "1")) == unauthorized
    assert call(kube_standin.service_account_token(ns, "ghost")) == unauthorized
    assert call("some-other-token") == unauthorized
    assert call("some-other-token", "/version") == unauthorized
    assert call(None)[0] == 200 and call("standin-token")[0] == 200  # no token / kubeconfig token: admin
    v1.delete_namespaced_service_account("iris-roller", ns)
    assert call(token) == unauthorized

    # The request log names the user of every request.
    mine = [(r.verb, r.resource, r.name, r.code) for r in kube_standin.requests if r.user == user]
    assert ("patch", "deployments", "iris-serve", 403) in mine
    assert ("patch", "deployments/scale", "iris-serve", 200) in mine
    assert ("get", "pods/log", "talker", 200) in mine
    assert {r.user for r in kube_standin.requests if r.code == 401} == {""}
    assert {r.user for r in kube_standin.requests if r.verb == "create" and r.resource == "roles"} == \
        {"kubernetes-admin"}


def test_termination_messages_from_file_and_log_fallback(api: ApiClient, ns: str,
                                                         kube_standin: KubeStandIn) -> None:
    v1 = client.CoreV1Api(api)

    def py(code: str) -> list[str]:
        return ["python", "-c", code]

    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    containers = [
        container("file", py("open('/dev/termination-log', 'w').write('done: 42')")),
        container("via-env", py("import os; open(os.environ['MSG'], 'w').write('from env'); raise SystemExit(1)"),
                  env=[{"name": "MSG", "value": "/dev/termination-log"}], **fallback),
        container("custom", py("open('/tmp/why', 'w').write('custom path'); print('a log line'); "
                               "raise SystemExit(1)"), terminationMessagePath="/tmp/why", **fallback),
        container("fallback", py("import sys\nfor i in range(100): print('line', i)\nsys.exit(2)"), **fallback),
        container("fallback-ok", py("print('all good')"), **fallback),
        container("file-policy", py("print('not a message'); raise SystemExit(3)")),
        container("big", py("open('/dev/termination-log', 'w').write('a' * 1000 + 'b' * 4000)")),
    ]
    init = container("setup", py("open('/dev/termination-log', 'w').write('init says hi')"))
    v1.create_namespaced_pod(ns, pod_body("msgs", containers, initContainers=[init]))
    pod = wait_for(lambda: pod_phase(v1, ns, "msgs", "Failed"), "the pod to finish")
    spec = {c.name: c for c in pod.spec.containers}
    assert (spec["file"].termination_message_path, spec["file"].termination_message_policy) == \
        ("/dev/termination-log", "File")
    messages = {s.name: (s.state.terminated.exit_code, s.state.terminated.message)
                for s in pod.status.container_statuses}
    tail = "".join(f"line {i}\n" for i in range(20, 100))  # the last 80 lines (they fit in 2048 bytes)
    assert messages == {
        "file": (0, "done: 42"),
        "via-env": (1, "from env"),
        "custom": (1, "custom path"),  # the file wins over the log tail
        "fallback": (2, tail),
        "fallback-ok": (0, None),  # the log is used only on failure
        "file-policy": (3, None),  # File policy never uses the log
        "big": (0, "a" * 96 + "b" * 4000),  # the last 4096 bytes
    }
    assert pod.status.init_container_statuses[0].state.terminated.message == "init says hi"
    root = kube_standin.pod_root(ns, "msgs")
    assert root is not None and (root / "termination" / "file" / "0").read_text() == "done: 42"

    # Each container instance gets a new, empty file: a restart does not see the last message.
    counter = ("import pathlib, sys\nc = pathlib.Path('/state/n')\nn = int(c.read_text()) + 1 if c.exists() else 1\n"
               "c.write_text(str(n))\nopen('/dev/termination-log', 'a').write(f'attempt {n}')\nsys.exit(n < 2)")
    v1.create_namespaced_pod(ns, pod_body("again", [container("c", py(counter), volumeMounts=[
        {"name": "state", "mountPath": "/state"}])], restart="OnFailure", volumes=[{"name": "state", "emptyDir": {}}]))
    done = wait_for(lambda: pod_phase(v1, ns, "again", "Succeeded"), "the retried pod to succeed")
    [status] = done.status.container_statuses
    assert status.restart_count == 1
    assert (status.last_state.terminated.exit_code, status.last_state.terminated.message) == (1, "attempt 1")
    assert (status.state.terminated.exit_code, status.state.terminated.message) == (0, "attempt 2")


def test_pod_calls_the_api_over_tls_with_its_projected_token(api: ApiClient, ns: str,
                                                             kube_standin: KubeStandIn) -> None:
    v1, apps, rbac = client.CoreV1Api(api), client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
    v1.create_namespaced_service_account(ns, {"metadata": {"name": "iris-roller"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "iris-roller"}, "rules": [
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["iris-serve"], "verbs": ["get"]}]})
    rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "iris-roller"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "iris-roller"},
        "subjects": [{"kind": "ServiceAccount", "name": "iris-roller", "namespace": ns}]})
    apps.create_namespaced_deployment(ns, web_deployment("iris-serve", replicas=0))

    script = """
import json, os, ssl, urllib.error, urllib.request
creds = '/var/run/secrets/api'
context = ssl.create_default_context(cafile=creds + '/ca.crt')
token = open(creds + '/token').read().strip()
host, port = os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']
url = f"https://{host}:{port}/apis/apps/v1/namespaces/{os.environ['NS']}/deployments/iris-serve"

def call(method, body=None):
    headers = {'Authorization': 'Bearer ' + token, 'Accept': 'application/json'}
    if body is not None:
        headers['Content-Type'] = 'application/merge-patch+json'
    req = urllib.request.Request(url, data=body and json.dumps(body).encode(), method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)

code, dep = call('GET')
denied, status = call('PATCH', {'spec': {'replicas': 3}})
result = {'get': [code, dep['metadata']['name'], dep['spec']['replicas']],
          'patch': [denied, status['reason'], status['message']],
          'env': [host, port, os.environ['KUBERNETES_SERVICE_PORT_HTTPS']]}
open('/dev/termination-log', 'w').write(json.dumps(result))
"""
    volume = {"name": "api", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}
    pod = pod_body("caller", [container("main", ["python", "-c", script], env=[
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        volumeMounts=[{"name": "api", "mountPath": "/var/run/secrets/api", "readOnly": True}])],
        serviceAccountName="iris-roller", automountServiceAccountToken=False, volumes=[volume])
    created = v1.create_namespaced_pod(ns, pod)
    assert [v.name for v in created.spec.volumes] == ["api"]  # no kube-api-access-* volume: automount is off

    done = wait_for(lambda: pod_phase(v1, ns, "caller", "Succeeded", "Failed"), "the caller pod to finish")
    terminated = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Succeeded", v1.read_namespaced_pod_log("caller", ns)
    result = json.loads(terminated.message)
    user = f"system:serviceaccount:{ns}:iris-roller"
    assert result == {
        "get": [200, "iris-serve", 0],
        "patch": [403, "Forbidden", (f'deployments.apps "iris-serve" is forbidden: User "{user}" cannot patch '
                                    f'resource "deployments" in API group "apps" in the namespace "{ns}"')],
        "env": ["127.0.0.1", str(kube_standin.tls_port), str(kube_standin.tls_port)],
    }
    assert apps.read_namespaced_deployment("iris-serve", ns).spec.replicas == 0
    root = kube_standin.pod_root(ns, "caller")
    assert root is not None
    assert (root / "volumes" / "api" / "token").read_text() == kube_standin.service_account_token(ns, "iris-roller")
    assert [(r.verb, r.resource, r.code) for r in kube_standin.requests if r.user == user] == [
        ("get", "deployments", 200), ("patch", "deployments", 403)]
