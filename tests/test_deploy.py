"""`nb2prod deploy` / `status` / `logs` / `delete` against the Kubernetes stand-in.

Every call goes through the official client over HTTP to the stand-in's API
server; its controllers run the Jobs and Deployments and its process kubelet
runs each container's command as a local process (the `--image` given is
recorded, never pulled, so pods use this interpreter with everything
installed: the prebuilt-image path).  The artifact store is moto's S3 server,
reached by the pods with credentials from a Kubernetes Secret.

The iris lifecycle is one test on purpose: each deploy costs a real papermill
run, so the steps (first deploy, a re-deploy that must roll back, a failing
train, status/logs/delete) reuse one cluster and one bucket instead of
repeating the first deploy for every assertion.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nb2prod import cli
from nb2prod.errors import UserError
from nb2prod.roller import rollout_verdict, stuck_reason
from nb2prod.runners import kubernetes as kube
from nb2prod.runners.kubernetes.pod_state import PendingPods
from tests.kube.standin import KubeStandIn
from tests.s3server import S3Server, s3_env, s3_server  # noqa: F401
from tests.test_manifests import set_ini

pytest_plugins = ["tests.kube.fixtures"]
pytestmark = pytest.mark.timeout(420)

EXAMPLES = Path(__file__).resolve().parents[1] / "example_notebooks"
IMAGE = "python:3.11-slim"  # recorded by the stand-in, never pulled
NS = "ml"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
IRIS_REQUEST = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
IRIS_ANSWER = {"predictions": ["setosa", "virginica"]}


# -- helpers --------------------------------------------------------------------------------
def split(notebook: Path, target: Path) -> Path:
    from nb2prod.split import split_notebook

    split_notebook(notebook, target)
    return target


def use_secret_credentials(pipeline_dir: Path) -> None:
    """Stages read the store credentials from the Secret `s3-credentials` (secretKeyRef)."""
    ini = pipeline_dir / "nb2prod.ini"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        set_ini(ini, "secrets", key, "s3-credentials")


def create_secret(standin: KubeStandIn, namespace: str, secret_value: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(standin.api_client())
    try:
        core.create_namespace({"metadata": {"name": namespace}})
    except client.exceptions.ApiException as exc:
        assert exc.status == 409
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "s3-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret_value,
                       "AWS_DEFAULT_REGION": "us-east-1"}})


def labelled(standin: KubeStandIn, pipeline: str, namespace: str = NS) -> list[str]:
    """Every object in `namespace` carrying this pipeline's nb2prod labels."""
    from tests.kube.resources import BY_PLURAL

    found = []
    for plural in BY_PLURAL:
        for obj in standin.store.scan(plural, namespace):
            labels = obj["metadata"].get("labels") or {}
            if labels.get("app.kubernetes.io/managed-by") == "nb2prod" and \
                    labels.get("app.kubernetes.io/instance") == pipeline:
                found.append(f"{plural}/{obj['metadata']['name']}")
    return found


def predict(standin: KubeStandIn, service: str, payload: dict, namespace: str = NS
            ) -> tuple[int, Any]:
    """POST through the API server's service proxy, as `kubectl proxy` users would."""
    url = f"{standin.url}/api/v1/namespaces/{namespace}/services/{service}:80/proxy/predict"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with OPENER.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


class Recorder:
    """Collects deploy events and log lines (what the CLI and JupyterLab would show)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.lines: list[str] = []

    def event(self, event: dict) -> None:
        self.events.append(event)
        print(f"{time.strftime('%H:%M:%S')} {event}", flush=True)

    def log(self, line: str) -> None:
        self.lines.append(line)

    def states(self, stage: str) -> list[str]:
        return [e["state"] for e in self.events if e["stage"] == stage]


def deploy(directory: Path, store: str, rec: Recorder | None = None, **kw: Any) -> dict:
    rec = rec or Recorder()
    return kube.deploy(directory, NS, image=IMAGE, store=store, on_event=rec.event,
                       on_log=rec.log, **kw)


def kill_when_running(standin: KubeStandIn, job_prefix: str, after: float = 1.0
                      ) -> threading.Thread:
    """Kill the first pod of a Job (named with `job_prefix`) once it has run `after` seconds."""
    def worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for pod in standin.store.scan("pods", NS):
                if not pod["metadata"]["name"].startswith(job_prefix):
                    continue
                if (pod.get("status") or {}).get("phase") == "Running":
                    time.sleep(after)
                    standin.kill_pod(NS, pod["metadata"]["name"])
                    return
            time.sleep(0.1)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def cluster(kube_standin: KubeStandIn, s3_env: S3Server) -> Iterator[tuple[KubeStandIn, str]]:  # noqa: F811
    """The stand-in plus a fresh bucket; the deploying env has AWS_ENDPOINT_URL set."""
    bucket = s3_env.make_bucket()
    yield kube_standin, f"s3://{bucket}/artifacts"


@pytest.fixture(scope="module")
def iris_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split(EXAMPLES / "iris.ipynb", tmp_path_factory.mktemp("iris") / "iris-pipeline")


# -- the iris lifecycle ---------------------------------------------------------------------
def test_iris_deploy_rollback_failed_train_status_logs_delete(
        cluster: tuple[KubeStandIn, str], iris_split: Path, tmp_path: Path,
        s3_env: S3Server, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    standin, store = cluster
    bucket = store.split("/")[2]
    directory = tmp_path / "iris-pipeline"
    shutil.copytree(iris_split, directory)
    use_secret_credentials(directory)
    secret = f"sekrit-{uuid.uuid4().hex}"
    create_secret(standin, NS, secret)

    # 1. First deploy, through the CLI, with a flaky API server.
    standin.inject_api_errors("create", "jobs", 500, count=2)
    standin.inject_api_errors("create", "configmaps", 503, count=1)
    standin.inject_api_errors("create", "deployments", 409, count=1)
    standin.inject_api_errors("list", "pods", 500, count=1)
    standin.inject_api_errors("watch", "jobs", 500, count=1)
    standin.inject_api_errors("get", "namespaces", 429, count=1)
    code, output = run_cli(["deploy", str(directory), "--namespace", NS, "--image", IMAGE,
                            "--store", store], capsys)
    assert code == 0, output
    assert "[train] test accuracy:" in output           # stage log streamed with its prefix
    assert "stage train: done" in output                 # progress lines
    assert "serving serve (run " in output
    assert "http://iris-serve.ml.svc.cluster.local/predict" in output
    assert "kubectl -n ml port-forward svc/iris-serve 8080:80" in output
    assert "/api/v1/namespaces/ml/services/iris-serve:80/proxy/predict" in output
    run1 = output.split("run ", 1)[1].split(":", 1)[0]
    assert all(i.remaining == 0 for i in standin.faults.injections), "faults not exercised"

    # Jobs completed in DAG order: train, then promote.
    from kubernetes import client

    batch = client.BatchV1Api(standin.api_client())
    jobs = batch.list_namespaced_job(NS, label_selector=f"nb2prod.io/run-id={run1}").items
    done = {j.metadata.labels["app.kubernetes.io/component"]: j for j in jobs}
    assert set(done) == {"train", "promote"}
    for job in done.values():
        true = {c.type for c in job.status.conditions if c.status == "True"}
        assert "Complete" in true and "Failed" not in true
    assert done["train"].status.completion_time <= done["promote"].status.start_time

    # Artifacts, executed notebook, HTML and latest.json are in the bucket.
    s3 = s3_env.client()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    prefix = f"artifacts/iris/runs/{run1}/train/"
    assert {prefix + f for f in ("manifest.json", "metrics.json", "model.joblib", "train.ipynb",
                                 "train.html", "result.json")} <= keys
    latest = json.loads(s3.get_object(Bucket=bucket, Key="artifacts/iris/latest.json")["Body"]
                        .read())
    assert latest["run_id"] == run1

    # The Deployment is available and answers through the Service.
    apps = client.AppsV1Api(standin.api_client())
    dep = apps.read_namespaced_deployment("iris-serve", NS)
    assert dep.status.available_replicas == 2
    assert dep.spec.template.metadata.annotations["nb2prod.io/model-run-id"] == run1
    assert predict(standin, "iris-serve", IRIS_REQUEST) == (200, IRIS_ANSWER)

    # The secret's value is nowhere but in its Secret (and the pods' process env).
    from tests.kube.resources import BY_PLURAL

    for plural in BY_PLURAL:
        if plural == "secrets":
            continue
        for obj in standin.store.scan(plural):
            assert secret not in json.dumps(obj), f"{plural}/{obj['metadata']['name']}"
    logs = list((standin.root).rglob("*.log"))
    assert logs
    for path in logs:
        assert secret not in path.read_text(errors="replace"), path
    assert secret not in output

    def versions() -> dict[str, str]:
        found = {}
        for plural in ("serviceaccounts", "roles", "rolebindings", "services", "configmaps"):
            for obj in standin.store.scan(plural, NS):
                if (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") \
                        == "iris":
                    found[f"{plural}/{obj['metadata']['name']}"] = \
                        obj["metadata"]["resourceVersion"]
        return found

    first_versions = versions()

    # 2. Re-deploy: the service now fails at start-up; the train pod is killed once.
    serve_nb = directory / "stage-2-serve" / "serve.ipynb"
    nb = json.loads(serve_nb.read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "execution_count": None,
                        "outputs": [], "source": "raise RuntimeError('broken on purpose')"})
    serve_nb.write_text(json.dumps(nb))
    set_ini(directory / "stage-2-serve" / "config.ini", "service", "MAX_STARTUP_TIME_SECONDS",
            "12")
    standin.inject_api_errors("update", "deployments", 409, count=2)
    standin.inject_api_errors("get", "deployments", 500, count=1)
    killer = kill_when_running(standin, "iris-train-", after=0.5)
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            answers.append(predict(standin, "iris-serve", IRIS_REQUEST))
            stop.wait(0.5)

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    rec = Recorder()
    try:  # no cache: the unchanged train stage must run (and be retried) again
        result = deploy(directory, store, rec, use_cache=False)
    finally:
        stop.set()
        asker.join(timeout=30)
    killer.join(timeout=1)
    run2 = result["run_id"]
    assert result["status"] == "failed", result
    assert result["stages"]["train"]["state"] == "done"
    assert result["stages"]["train"]["attempts"] == 2          # killed once, retried
    assert any("attempt 1 failed (exit code 137" in e["message"] for e in rec.events)
    service = result["services"]["serve"]
    assert service["status"] == "rolled_back"
    assert f"rolled back to run {run1}" in service["message"]
    assert "ProgressDeadlineExceeded" in service["message"]
    # ... and what the new pods were doing: their start-up's own last words (on a busy
    # machine that may still be "running N code cells" when the deadline hits)
    assert "-- pod iris-serve-" in service["message"]
    assert "nb2prod: start-up" in service["message"], service["message"]
    assert rec.states("serve")[-1] == "failed"
    assert answers and all(a == (200, IRIS_ANSWER) for a in answers), answers[:5]
    dep = apps.read_namespaced_deployment("iris-serve", NS)
    assert dep.spec.template.metadata.annotations["nb2prod.io/model-run-id"] == run1
    saved = json.loads(dep.metadata.annotations["nb2prod.io/previous-template"])
    assert saved["metadata"]["annotations"]["nb2prod.io/model-run-id"] == run1
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        dep = apps.read_namespaced_deployment("iris-serve", NS)
        if (dep.status.available_replicas or 0) == 2 and (dep.status.replicas or 0) == 2:
            break
        time.sleep(0.2)
    assert (dep.status.available_replicas, dep.status.replicas) == (2, 2)
    assert predict(standin, "iris-serve", IRIS_REQUEST) == (200, IRIS_ANSWER)
    assert run2 != run1
    # The store says so too (run.json, via a short record Job): `runs` agrees with deploy.
    from nb2prod import artifacts

    def recorded() -> Any:
        found = {r["run_id"]: r for r in artifacts.list_runs(store, "iris")}.get(run2) or {}
        return found if found.get("status") == "failed" else None

    stored = wait_until(recorded, "the failed roll-out in run.json", 180)
    assert stored["rollout"]["iris-serve"]["status"] == "rolled_back"
    assert "ProgressDeadlineExceeded" in stored["reason"]
    # Re-deploying rewrote nothing that did not change: one new ConfigMap (serve's code).
    second_versions = versions()
    added = set(second_versions) - set(first_versions)
    assert len(added) == 1 and added.pop().startswith("configmaps/iris-serve-")
    assert {k: second_versions[k] for k in first_versions} == first_versions

    # 3. A failing train stage: nothing downstream runs, the Deployment is untouched.
    set_ini(directory / "stage-1-train" / "config.ini", "batch", "RETRIES", "0")
    before = apps.read_namespaced_deployment("iris-serve", NS)
    rec = Recorder()
    result = deploy(directory, store, rec, params=["max_iter=-5"])
    assert result["status"] == "failed"
    train = result["stages"]["train"]
    assert train["state"] == "failed"
    assert "BackoffLimitExceeded" in train["message"]
    assert "stage 'train' failed in cell" in train["message"]
    assert "max_iter" in train["message"]
    assert result["stages"]["(promote)"]["state"] == "skipped"
    assert rec.states("serve") == ["skipped"]
    after = apps.read_namespaced_deployment("iris-serve", NS)
    assert after.metadata.generation == before.metadata.generation
    assert after.metadata.resource_version == before.metadata.resource_version
    assert predict(standin, "iris-serve", IRIS_REQUEST) == (200, IRIS_ANSWER)

    # 4. status, logs, delete through the CLI.
    code, output = run_cli(["status", str(directory), "-n", NS], capsys)
    assert code == 0, output
    assert run1 in output and run2 in output and "iris-serve" in output
    # status agrees with deploy: run 2 was promoted, but its roll-out failed
    row2 = next(line for line in output.splitlines() if line.startswith(f"│ {run2}"))
    assert "failed" in row2 and "promoted" in row2, row2
    assert f"run {run2}: promoted, but the roll-out failed: service 'serve': rollout of " \
           "iris-serve" in output
    assert "2/2" in output
    code, output = run_cli(["logs", "train", str(directory), "-n", NS, "--run", run1], capsys)
    assert code == 0, output
    assert "[train] test accuracy:" in output
    code, output = run_cli(["logs", "train", str(directory), "-n", NS, "--run", "nope"], capsys)
    assert code == 1 and "no pods of stage 'train' of run nope" in output
    code, output = run_cli(["delete", str(directory), "-n", NS], capsys)
    assert code == 0, output
    assert "deleted from ml:" in output
    assert labelled(standin, "iris") == []
    assert standin.store.peek("secrets", NS, "s3-credentials") is not None  # not ours
    assert "artifacts/iris/latest.json" in {
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}  # kept
    code, output = run_cli(["delete", str(directory), "-n", NS, "--purge-artifacts",
                            "--store", store], capsys)
    assert code == 0, output
    assert "nothing of iris in namespace ml" in output and "artifact file(s)" in output
    assert s3.list_objects_v2(Bucket=bucket, Prefix="artifacts/iris/").get("KeyCount") == 0


# -- the parallel-branch example ------------------------------------------------------------
def test_parallel_branches_run_as_overlapping_jobs(cluster: tuple[KubeStandIn, str],
                                                   tmp_path: Path) -> None:
    standin, store = cluster
    directory = split(EXAMPLES / "wine_parallel.ipynb", tmp_path / "wine-pipeline")
    use_secret_credentials(directory)
    create_secret(standin, NS, "testing")
    rec = Recorder()
    result = deploy(directory, store, rec)
    assert result["status"] == "succeeded", result
    times: dict[tuple[str, str], float] = {(t["event"], t["unit"]): t["time"]
                                           for t in result["timeline"]}
    forest = (times[("create", "train_forest")], times[("complete", "train_forest")])
    logreg = (times[("create", "train_logreg")], times[("complete", "train_logreg")])
    assert forest[0] < logreg[1] and logreg[0] < forest[1], "branches did not overlap"
    # each branch starts once its input is complete (and, above, before the other branch
    # finished: no fixed number of seconds, which a busy machine exceeds), the join after both
    prepared = times[("complete", "prepare")]
    assert forest[0] >= prepared and logreg[0] >= prepared
    assert times[("create", "evaluate")] >= max(forest[1], logreg[1])
    assert times[("create", "(promote)")] >= times[("complete", "evaluate")]
    status, body = predict(standin, "wine-parallel-serve", {"instances": [[13.0] * 13]})
    assert status == 200 and len(body["predictions"]) == 1


def test_redeploy_reuses_unchanged_stages_from_the_store(
        cluster: tuple[KubeStandIn, str], iris_split: Path, tmp_path: Path, s3_env: S3Server,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    """Like `nb2prod run`: a stage found unchanged in the store gets no Job; the run still
    promotes (metrics reused) and the service rolls to it."""
    from kubernetes import client

    standin, store = cluster
    bucket, prefix = store.split("/")[2], store.split("/", 3)[3]
    directory = tmp_path / "iris-pipeline"
    shutil.copytree(iris_split, directory)
    use_secret_credentials(directory)
    create_secret(standin, NS, "testing")
    first = deploy(directory, store)
    assert first["status"] == "succeeded", first
    run1 = first["run_id"]
    code, output = run_cli(["deploy", str(directory), "--namespace", NS, "--image", IMAGE,
                            "--store", store], capsys)
    assert code == 0, output
    assert f"stage train: cached (run {run1})" in output
    assert f"cached, no Job run: train (run {run1})" in output
    run2 = re.search(r"(?m)^run (\S+): \d+ batch stage", output)[1]
    batch = client.BatchV1Api(standin.api_client())
    jobs = batch.list_namespaced_job(NS, label_selector=f"nb2prod.io/run-id={run2}").items
    assert {j.metadata.labels["app.kubernetes.io/component"] for j in jobs} == {"promote"}
    s3 = s3_env.client()

    def read(key: str) -> dict:
        return json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/iris/{key}")["Body"].read())

    manifest = read(f"runs/{run2}/train/manifest.json")
    assert manifest["cached_from"] == run1 and manifest["run_id"] == run2
    assert read(f"runs/{run2}/train/metrics.json") == read(f"runs/{run1}/train/metrics.json")
    assert read("latest.json")["run_id"] == run2
    # The stage's record is run2's own, saying where it came from (seen on the real
    # cluster: run1's result.json was copied as is, so `runs` showed run1's times and
    # no `cached` column for run2)
    result = read(f"runs/{run2}/train/result.json")
    assert (result["run_id"], result["cached_from"]) == (run2, run1), result
    assert result["started"] >= read(f"runs/{run1}/train/result.json")["finished"]
    code, output = run_cli(["runs", str(directory), "--store", store], capsys)
    assert code == 0 and re.search(rf"{run2}.*train from {run1}", output), output
    code, output = run_cli(["status", str(directory), "--namespace", NS], capsys)
    assert code == 0 and re.search(rf"{run2} +│ succeeded +│ cached \({run1}\)", output), output
    apps = client.AppsV1Api(standin.api_client())
    dep = apps.read_namespaced_deployment("iris-serve", NS)
    assert dep.spec.template.metadata.annotations["nb2prod.io/model-run-id"] == run2
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and predict(standin, "iris-serve", IRIS_REQUEST) != (
            200, IRIS_ANSWER):
        time.sleep(0.2)
    assert predict(standin, "iris-serve", IRIS_REQUEST) == (200, IRIS_ANSWER)


# -- failure modes ------------------------------------------------------------------------------
def test_pods_that_cannot_start_fail_the_stage_fast_with_the_reason(
        kube_standin: KubeStandIn, iris_split: Path, tmp_path: Path) -> None:
    directory = tmp_path / "iris-pipeline"
    shutil.copytree(iris_split, directory)
    image = "registry.invalid/iris:missing"
    kube_standin.unpullable_images.add(image)

    def failing(expected: str, at_least: float = 0.0, **kw: Any) -> str:
        started = time.monotonic()
        result = kube.deploy(directory, NS, store="s3://bucket-not-used/x", **kw)
        elapsed = time.monotonic() - started
        assert result["status"] == "failed"
        message = result["stages"]["train"]["message"]
        assert expected in message, message
        # Far below the 1800 s MAX_COMPLETION_TIME_SECONDS it would otherwise wait for, and
        # far above what a busy 2-core machine needs (a bound, not a timing margin).
        assert at_least <= elapsed < 300, f"took {elapsed:.1f}s"
        assert result["stages"]["(promote)"]["state"] == "skipped"
        job = kube_standin.store.peek("jobs", NS, result["stages"]["train"]["job"])
        assert job is None or job["metadata"].get("deletionTimestamp")  # stopped, not left
        return message

    assert image in failing("ErrImagePull", image=image)
    set_ini(directory / "stage-1-train" / "config.ini", "secrets", "API_TOKEN", "missing-secret")
    assert "missing-secret" in failing("CreateContainerConfigError", image=IMAGE)
    set_ini(directory / "stage-1-train" / "config.ini", "secrets", "API_TOKEN", "")
    # Unschedulable gets [kubernetes] UNSCHEDULABLE_GRACE_SECONDS to resolve (a node may be
    # added or freed), then fails the stage with the scheduler's message.
    set_ini(directory / "nb2prod.ini", "kubernetes", "UNSCHEDULABLE_GRACE_SECONDS", "3")
    kube_standin.unschedulable = True
    assert "(for 3s)" in failing("Unschedulable: 0/1 nodes are available", at_least=3,
                                 image=IMAGE)
    assert kube_standin.store.peek("deployments", NS, "iris-serve") is None
    set_ini(directory / "nb2prod.ini", "kubernetes", "UNSCHEDULABLE_GRACE_SECONDS", "soon")
    with pytest.raises(UserError, match="UNSCHEDULABLE_GRACE_SECONDS = 'soon'"):
        kube.deploy(directory, NS, store="s3://bucket-not-used/x", image=IMAGE)


def test_without_image_a_failed_pip_install_says_why_and_points_at_image(
        kube_standin: KubeStandIn, tmp_path: Path) -> None:
    """The default image pip-installs at start; where pods cannot reach PyPI the stage's
    message is pip's network error and the way out, not "No matching distribution"."""
    directory = split(write_notebook(tmp_path / "small.ipynb", [
        ("parameters", "q = 1"), ("stage:work", "total = q + 1"), ("metrics", "total")]),
        tmp_path / "small")
    set_ini(directory / "stage-1-work" / "config.ini", "batch", "RETRIES", "0")
    kube_standin.extra_env.update({"PIP_INDEX_URL": "https://pypi.invalid/simple",
                                   "PIP_RETRIES": "1", "PIP_TIMEOUT": "5",
                                   "PIP_CONFIG_FILE": os.devnull})
    result = kube.deploy(directory, NS, store="s3://bucket-not-used/x")  # no --image
    assert result["status"] == "failed", result
    message = result["stages"]["work"]["message"]
    assert "nb2prod: pip could not install the requirements (Failed to establish a new " \
           "connection: [Errno" in message, message
    assert "from PyPI at start" in message and "--image" in message
    assert "No matching distribution" not in message


def test_a_pod_waits_for_a_node_within_the_grace_period(cluster: tuple[KubeStandIn, str],
                                                        tmp_path: Path) -> None:
    """A stage whose pod is unschedulable for a while (autoscaler, busy node) still runs."""
    standin, store = cluster
    directory = split(write_notebook(tmp_path / "small.ipynb", [
        ("parameters", "q = 1"), ("stage:work", "total = q + 1"), ("metrics", "total")]),
        tmp_path / "small")
    set_ini(directory / "nb2prod.ini", "kubernetes", "UNSCHEDULABLE_GRACE_SECONDS", "60")
    use_secret_credentials(directory)
    create_secret(standin, NS, "testing")
    standin.unschedulable = True
    waited: list[str] = []

    def free_a_node() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for pod in standin.store.scan("pods", NS):
                conditions = (pod.get("status") or {}).get("conditions") or []
                if any(c.get("reason") == "Unschedulable" for c in conditions):
                    waited.append(pod["metadata"]["name"])
                    time.sleep(2)
                    standin.unschedulable = False
                    return
            time.sleep(0.1)
        standin.unschedulable = False

    helper = threading.Thread(target=free_a_node, daemon=True)
    helper.start()
    rec = Recorder()
    result = deploy(directory, store, rec)
    helper.join()
    assert waited, "no pod was ever unschedulable"
    assert result["status"] == "succeeded", result
    assert any("waiting up to 60s for a node: Unschedulable" in e["message"]
               for e in rec.events if e["stage"] == "work"), rec.events


GATED = [
    ("parameters", "quality = 0.5"),
    ("stage:score", "accuracy = quality"),
    ("metrics", "accuracy"),
    ("serve", "def predict(payload):\n    return {'accuracy': accuracy}"),
    (None, "raise RuntimeError('this service never starts')"),
]


def write_notebook(path: Path, cells: list[tuple[str | None, str]]) -> Path:
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}, "cells": [
        {"cell_type": "code", "id": f"c{i}", "source": src, "outputs": [],
         "execution_count": None, "metadata": {"tags": [tag] if tag else []}}
        for i, (tag, src) in enumerate(cells)]}
    path.write_text(json.dumps(nb))
    return path


def test_promotion_gate_and_a_failed_first_deploy(cluster: tuple[KubeStandIn, str],
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    standin, store = cluster
    directory = split(write_notebook(tmp_path / "gated.ipynb", GATED), tmp_path / "gated")
    set_ini(directory / "nb2prod.ini", "promotion", "METRIC", "accuracy")
    set_ini(directory / "nb2prod.ini", "promotion", "MIN", "0.9")
    set_ini(directory / "stage-2-serve" / "config.ini", "service", "MAX_STARTUP_TIME_SECONDS",
            "6")
    use_secret_credentials(directory)
    create_secret(standin, NS, "testing")

    # Below the gate: the promote Job says so (exit 3), nothing is rolled out.
    rec = Recorder()
    result = deploy(directory, store, rec)
    assert result["status"] == "not_promoted", result
    assert result["promoted"] is False
    assert "accuracy = 0.5 < minimum 0.9" in result["reason"]
    assert rec.states("serve") == ["skipped"]
    assert standin.store.peek("deployments", NS, "gated-serve") is None
    # `status` says so at once (seen on the real cluster: "running", then "succeeded │
    # not promoted / failed", while the Job retried the exit-3 pod)
    from nb2prod.pipeline import load_pipeline

    runs = kube.status(load_pipeline(directory), NS)["runs"]
    assert (runs[0]["run_id"], runs[0]["status"], runs[0]["promotion"]) == (
        result["run_id"], "not promoted", "not promoted"), runs
    # ... and why, in the words `nb2prod runs` uses for the run in the store
    why = r"not promoted: accuracy = 0\.5 < minimum 0\.9 \(stage score\)"
    code, output = run_cli(["status", str(directory), "--namespace", NS], capsys)
    assert code == 0 and re.search(rf"{result['run_id']} +│ not promoted +│.*│ {why} +│",
                                   output), output
    code, output = run_cli(["runs", str(directory), "--store", store], capsys)
    assert code == 0 and re.search(rf"{result['run_id']} +│ succeeded, {why} +│",
                                   output), output

    # Above the gate, but the service never becomes ready: its first deploy is removed.
    rec = Recorder()
    result = deploy(directory, store, rec, params=["quality=0.95"])
    assert result["status"] == "failed", result
    assert result["promoted"] is True
    assert result["services"]["serve"]["status"] == "removed"
    message = result["services"]["serve"]["message"]
    assert "first deploy removed" in message
    # why: the failing pod's state and its own last words
    assert "-- pod gated-serve-" in message, message
    assert "nb2prod: start-up" in message, message
    deadline = time.monotonic() + 180
    leftovers: list[str] = []
    while time.monotonic() < deadline:
        leftovers = [x for x in labelled(standin, "gated")  # (code ConfigMaps stay)
                     if x.split("/")[1].startswith("gated-serve") and
                     x.split("/")[0] in ("deployments", "replicasets", "services", "pods",
                                         "ingresses", "endpoints")]
        if not leftovers:
            break
        time.sleep(0.2)
    assert leftovers == []


def test_dry_run_render_and_refusals(kube_standin: KubeStandIn, iris_split: Path,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    import yaml
    from kubernetes_validate import utils

    directory = iris_split
    before = len(kube_standin.requests)
    code, output = run_cli(["deploy", str(directory), "-n", NS, "--store", "s3://b/x",
                            "--dry-run"], capsys)
    assert code == 0, output
    assert "Job/iris-train-" in output and "Deployment/iris-serve" in output
    assert len(kube_standin.requests) == before  # not a single API call

    target = tmp_path / "iris.yaml"
    code, output = run_cli(["render", str(directory), "-n", NS, "--store", "pvc://models/iris",
                            "-o", str(target)], capsys)
    assert code == 0, output
    docs = list(yaml.safe_load_all(target.read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace" and kinds.count("Job") == 2 and "Deployment" in kinds
    for version in ("1.28.0", utils.latest_version()):
        for doc in docs:
            kv.validate(doc, version, strict=True)

    code, output = run_cli(["deploy", str(directory), "-n", NS], capsys)  # file:// store
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pods cannot reach" in lines[0]
    assert len(kube_standin.requests) == before

    code, output = run_cli(["deploy", str(directory), "--store", "s3://b/x"], capsys)
    assert code == 2 and "--namespace is required" in output


def test_missing_kubeconfig_is_one_line(iris_split: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, output = run_cli(["status", str(iris_split), "-n", NS], capsys)
    assert code == 2
    assert output.strip().count("\n") == 0 and "Kubernetes configuration" in output


def test_unit_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pure pieces of the runner: rollout verdicts and stuck-pod reasons."""
    from nb2prod.runners.kubernetes import pod_state

    now = [1000.0]  # the grace period's clock: moved by the test, not by a busy machine
    monkeypatch.setattr(pod_state, "time", SimpleNamespace(monotonic=lambda: now[0]))
    dep: dict[str, Any] = {"metadata": {"name": "d", "generation": 2},
                           "spec": {"replicas": 2, "progressDeadlineSeconds": 5},
                           "status": {"observedGeneration": 1}}
    assert rollout_verdict(dep) is None
    dep["status"] = {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3,
                     "availableReplicas": 2}
    assert rollout_verdict(dep) is None  # an old pod is still there
    dep["status"]["replicas"] = 2
    assert rollout_verdict(dep) == (True, "")
    dep["status"]["conditions"] = [{"type": "Progressing", "status": "False",
                                    "reason": "ProgressDeadlineExceeded", "message": "m"}]
    verdict = rollout_verdict(dep)
    assert verdict is not None and not verdict[0] and "ProgressDeadlineExceeded" in verdict[1]
    pod = {"status": {"containerStatuses": [{"state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "s" not found'}}}]}}
    assert stuck_reason(pod) == 'CreateContainerConfigError: secret "s" not found'
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "False",
                                      "reason": "Unschedulable", "message": "0/1 nodes"}]}}
    assert stuck_reason(pod) == "Unschedulable: 0/1 nodes"
    assert stuck_reason({"status": {"containerStatuses": [
        {"state": {"waiting": {"reason": "ContainerCreating"}}}]}}) is None

    # Only Unschedulable gets a grace period; the pod is forgotten once scheduled.
    pod["metadata"] = {"name": "p"}
    pulling = {"metadata": {"name": "q"}, "status": {"containerStatuses": [{"state": {
        "waiting": {"reason": "ErrImagePull", "message": "no such image"}}}]}}
    pending = PendingPods(grace=0.3)
    assert pending.check(pod, "train") is None and pending.waiting("p")
    assert pending.check(pulling, "train") == "ErrImagePull: no such image"
    assert pending.overdue() == []
    now[0] += 0.35
    assert pending.check(pod, "train") == "Unschedulable: 0/1 nodes (for 0s)"
    assert [(p, o) for p, o, _ in pending.overdue()] == [("p", "train")]
    assert not pending.waiting("p")
    pending.check(pod, "train")
    pending.check({"metadata": {"name": "p"}, "status": {}}, "train")  # scheduled now
    assert not pending.waiting("p")
    pending.check(pod, "serve")
    pending.forget("serve")
    assert not pending.waiting("p")
    assert PendingPods(grace=0).check(pod) == "Unschedulable: 0/1 nodes"
    # ... but not a claim that does not exist: no node can fix that
    claimless = {"metadata": {"name": "c"}, "status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": '0/1 nodes are available: persistentvolumeclaim "gone" not found.'}]}}
    assert "persistentvolumeclaim \"gone\" not found" in (
        PendingPods(grace=600).check(claimless, "train") or "")


def _job(name: str, run: str, component: str, created: str, condition: str | None) -> dict:
    """A Job as the real API server lists it: labels, creation time, conditions."""
    labels = {"app.kubernetes.io/component": component}
    if component != "run":
        labels["nb2prod.io/run-id"] = run
    conditions = [{"type": condition, "status": "True"}] if condition else []
    return {"metadata": {"name": name, "labels": labels, "creationTimestamp": created},
            "status": {"conditions": conditions, **({} if condition else {"active": 1})}}


def test_status_of_a_deploy_killed_before_its_promotion_is_incomplete() -> None:
    """Seen on the real cluster: `kill -9` of `nb2prod deploy` while train ran left a
    Complete train Job and no promote Job; `status` called that run "succeeded"
    (it was never promoted; `runs` said "incomplete"), and sorted an in-cluster run
    named `manual-1` above newer deploys (by name, not time)."""
    from nb2prod.runners.kubernetes.status import runs_from_jobs

    jobs = [
        _job("iris-train-a", "20261201t140614-1999", "train", "2026-12-01T14:06:17Z",
             "Complete"),
        _job("iris-promote-a", "20261201t140614-1999", "promote", "2026-12-01T14:06:23Z",
             "Complete"),
        _job("manual-1", "", "run", "2026-12-01T14:07:32Z", "Complete"),
        _job("iris-train-b", "20261201t140803-a84f", "train", "2026-12-01T14:08:06Z",
             "Complete"),
        _job("iris-train-c", "20261201t140841-b5bc", "train", "2026-12-01T14:08:44Z", None),
        _job("iris-train-d", "20261201t140905-bef1", "train", "2026-12-01T14:09:08Z",
             "Failed"),
    ]
    cached = _job("iris-promote-e", "20261201t141425-bc83", "promote", "2026-12-01T14:14:28Z",
                  "Complete")  # every stage reused from the cache: a promote Job only
    cached["metadata"]["annotations"] = {"nb2prod.io/cached": '{"train": "20261201t141357-364f"}'}
    assert runs_from_jobs([cached])[0]["stages"] == {"train": "cached (20261201t141357-364f)"}
    runs = runs_from_jobs(jobs)
    assert [(r["run_id"], r["status"]) for r in runs] == [
        ("20261201t140905-bef1", "failed"),
        ("20261201t140841-b5bc", "running"),
        ("20261201t140803-a84f", "incomplete"),  # the killed deploy
        ("manual-1", "succeeded"),
        ("20261201t140614-1999", "succeeded"),
    ]


def test_retry_helper_semantics(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client.exceptions import ApiException

    from nb2prod import k8s_retry

    monkeypatch.setattr(k8s_retry, "FIRST_DELAY", 0.001)

    def failing(statuses: list[int], reason: str = "") -> Callable[[], str]:
        def fn() -> str:
            if statuses:
                exc = ApiException(status=statuses.pop(0))
                exc.body = json.dumps({"reason": reason})
                raise exc
            return "ok"
        return fn

    assert k8s_retry.call(failing([500, 503, 429, 504])) == "ok"
    with pytest.raises(ApiException):
        k8s_retry.call(failing([422]))
    with pytest.raises(ApiException):
        k8s_retry.call(failing([500] * 20), attempts=3)
    assert k8s_retry.create(failing([409], "AlreadyExists")) is None
    assert k8s_retry.create(failing([409, 409], "Conflict")) == "ok"
    assert k8s_retry.delete(failing([404])) is None
    reads: list[int] = []
    writes = [409, 409]

    def write(current: int) -> int:
        if writes:
            writes.pop(0)
            exc = ApiException(status=409)
            exc.body = json.dumps({"reason": "Conflict"})
            raise exc
        return current

    def read() -> int:
        reads.append(1)
        return len(reads)

    assert k8s_retry.update(read, write) == 3  # re-read before every retry


def wait_until(fn: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_pvc_store_deploys_end_to_end(kube_standin: KubeStandIn, iris_split: Path,
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    """`pvc://CLAIM/path`: the claim is mounted into every pod and holds the artifacts."""
    from kubernetes import client

    directory = tmp_path / "iris-pipeline"
    shutil.copytree(iris_split, directory)
    core = client.CoreV1Api(kube_standin.api_client())
    core.create_namespace({"metadata": {"name": NS}})
    core.create_namespaced_persistent_volume_claim(NS, {
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteMany"],
                 "resources": {"requests": {"storage": "1Gi"}}}})
    result = deploy(directory, "pvc://models/team")
    assert result["status"] == "succeeded", result
    claim = kube_standin.root / "kubelet" / "pvc" / NS / "models" / "team" / "iris"
    latest = json.loads((claim / "latest.json").read_text())
    manifest = json.loads(
        (claim / "runs" / latest["run_id"] / "train" / "manifest.json").read_text())
    assert "model" in manifest["artifacts"]
    status, body = predict(kube_standin, "iris-serve", {"instances": [[5.1, 3.5, 1.4, 0.2]]})
    assert (status, body["predictions"]) == (200, ["setosa"])

    # A serving container restarted inside its pod (kill -TERM 1, a liveness or OOM kill)
    # comes back by itself: its emptyDirs still hold its read-only copy of the code.
    victim = next(p["metadata"]["name"] for p in kube_standin.store.scan("pods", NS)
                  if p["metadata"]["name"].startswith("iris-serve-"))
    assert kube_standin.kill_pod(NS, victim, signal.SIGTERM)
    core = client.CoreV1Api(kube_standin.api_client())

    def back() -> Any:
        cs = core.read_namespaced_pod(victim, NS).status.container_statuses[0]
        return cs if cs.restart_count >= 1 and cs.ready else None

    restarted = wait_until(back, "the restarted serving container to be ready again", 120)
    assert restarted.restart_count == 1 and restarted.last_state.terminated is not None
    assert predict(kube_standin, "iris-serve", {"instances": [[5.1, 3.5, 1.4, 0.2]]})[0] == 200

    # `runs --store pvc://` reads the claim through a short-lived pod, then removes it.
    code, output = run_cli(["runs", str(directory), "--store", "pvc://models/team", "-n", NS],
                           capsys)
    assert code == 0, output
    assert f"{latest['run_id']} (latest)" in output and "succeeded" in output
    assert not [p for p in kube_standin.store.scan("pods", NS)
                if "store-reader" in p["metadata"]["name"]
                and not p["metadata"].get("deletionTimestamp")]


def test_a_missing_claim_fails_before_anything_is_created(
        kube_standin: KubeStandIn, iris_split: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(kube_standin.requests)
    code, output = run_cli(["deploy", str(iris_split), "-n", "fresh", "--image", IMAGE,
                            "--store", "pvc://missing-claim/iris"], capsys)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip() and "fresh" in line]
    assert len(lines) == 1 and "PersistentVolumeClaim missing-claim not found in namespace " \
        "fresh" in lines[0], output
    assert kube_standin.store.peek("namespaces", "", "fresh") is None  # not even the namespace
    writes = [r for r in kube_standin.requests[before:] if r.method != "GET"]
    assert writes == []
