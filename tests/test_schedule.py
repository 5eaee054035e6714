"""`nb2prod schedule` / `unschedule` / `history` / `deploy --no-wait` on the Kubernetes stand-in.

A run in the cluster is one Job: init containers run the batch stages, the
last container (nb2prod_roller.py) gates, promotes and rolls the serving
Deployment through the API over TLS with the pod's service-account token.
The stand-in's CronJob controller is driven by `trigger_cronjob` (it never
fires on a clock); everything else (pods, probes, RBAC for service-account
tokens, termination messages) runs as on a cluster.  The store is moto's S3
server, reached by pods with credentials from a Secret.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from nb2prod import cron
from tests.kube.standin import KubeStandIn
from tests.s3server import S3Server, s3_env, s3_server  # noqa: F401
from tests.test_deploy import (
    IMAGE,
    IRIS_ANSWER,
    IRIS_REQUEST,
    NS,
    OPENER,
    create_secret,
    predict,
    run_cli,
    split,
    use_secret_credentials,
    write_notebook,
)
from tests.test_manifests import set_ini

pytest_plugins = ["tests.kube.fixtures"]
pytestmark = pytest.mark.timeout(420)

EXAMPLES = Path(__file__).resolve().parents[1] / "example_notebooks"
ROLLER = "system:serviceaccount:ml:iris-roller"


# -- helpers --------------------------------------------------------------------------------
@pytest.fixture
def cluster(kube_standin: KubeStandIn, s3_env: S3Server) -> tuple[KubeStandIn, str]:  # noqa: F811
    bucket = s3_env.make_bucket()
    create_secret(kube_standin, NS, "testing")
    return kube_standin, f"s3://{bucket}/artifacts"


@pytest.fixture(scope="module")
def iris_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split(EXAMPLES / "iris.ipynb", tmp_path_factory.mktemp("iris") / "iris-pipeline")


def wait_job(standin: KubeStandIn, name: str, timeout: float = 240) -> dict:
    """The Job once it has a Complete or Failed condition."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = standin.store.peek("jobs", NS, name)
        conditions = {c["type"] for c in ((job or {}).get("status") or {}).get("conditions")
                      or [] if c.get("status") == "True"}
        if conditions & {"Complete", "Failed"}:
            return job
        time.sleep(0.3)
    raise AssertionError(f"Job {name} did not finish: {json.dumps(job, indent=1)[:3000]}")


def run_pod(standin: KubeStandIn, job: str) -> dict:
    pods = [p for p in standin.store.scan("pods", NS)
            if (p["metadata"].get("labels") or {}).get("job-name") == job]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def history(capsys: pytest.CaptureFixture[str], directory: Path) -> dict:
    code, output = run_cli(["history", str(directory), "-n", NS, "--json"], capsys)
    assert code == 0, output
    return json.loads(output)


def latest(s3_env: S3Server, store: str) -> str | None:  # noqa: F811
    bucket = store.split("/")[2]
    try:
        body = s3_env.client().get_object(Bucket=bucket, Key="artifacts/iris/latest.json")
    except Exception:  # noqa: BLE001 - NoSuchKey
        return None
    return json.loads(body["Body"].read())["run_id"]


def info(standin: KubeStandIn, service: str) -> dict[str, Any]:
    url = f"{standin.url}/api/v1/namespaces/{NS}/services/{service}:80/proxy/info"
    with OPENER.open(urllib.request.Request(url), timeout=30) as response:
        return json.loads(response.read())


def served_run(standin: KubeStandIn, name: str) -> tuple[str, int]:
    dep = standin.store.peek("deployments", NS, name)
    return (dep["spec"]["template"]["metadata"]["annotations"]["nb2prod.io/model-run-id"],
            dep["spec"]["replicas"])


def assert_roller_rights(standin: KubeStandIn) -> None:
    """With the roller's token: get/patch on its Deployment, list pods and get their logs
    work; everything else is 403."""
    from kubernetes import client

    api = standin.api_client(token=standin.service_account_token(NS, "iris-roller"))
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    batch = client.BatchV1Api(api)
    pod = {"containers": [{"name": "c", "image": IMAGE, "command": ["true"]}]}
    assert apps.read_namespaced_deployment("iris-serve", NS).metadata.name == "iris-serve"
    apps.patch_namespaced_deployment("iris-serve", NS, {"metadata": {"annotations": {
        "nb2prod.io/rbac-check": "ok"}}})
    # A pod of this namespace to read: the admin starts one that prints a line.
    admin = client.CoreV1Api(standin.api_client())
    admin.create_namespaced_pod(NS, {"metadata": {"name": "rbac-check"}, "spec": {
        **pod, "containers": [{**pod["containers"][0], "command": ["echo", "rbac-check-line"]}],
        "restartPolicy": "Never"}})
    try:
        deadline = time.monotonic() + 120
        while admin.read_namespaced_pod("rbac-check", NS).status.phase != "Succeeded":
            assert time.monotonic() < deadline, "the check pod did not finish"
            time.sleep(0.3)
        assert "rbac-check-line" in core.read_namespaced_pod_log("rbac-check", NS, container="c")
        assert "rbac-check" in [p.metadata.name for p in core.list_namespaced_pod(NS).items]
        denied = [
            lambda: core.read_namespaced_pod("rbac-check", NS),
            lambda: core.read_namespaced_pod_status("rbac-check", NS),
            lambda: core.list_namespaced_pod(NS, watch=True, timeout_seconds=1),
            lambda: core.list_pod_for_all_namespaces(),
            lambda: core.delete_namespaced_pod("rbac-check", NS),
            lambda: core.patch_namespaced_pod("rbac-check", NS, {"metadata": {"labels": {
                "a": "b"}}}),
            lambda: core.create_namespaced_pod(NS, {"metadata": {"name": "x"}, "spec": pod}),
            lambda: core.list_namespaced_pod("default"),
            lambda: core.read_namespaced_pod_log("other", "default"),
        ]
        assert_denied(denied)
    finally:
        admin.delete_namespaced_pod("rbac-check", NS, grace_period_seconds=0)
    denied = [
        lambda: apps.list_namespaced_deployment(NS),
        lambda: apps.delete_namespaced_deployment("iris-serve", NS),
        lambda: apps.replace_namespaced_deployment(
            "iris-serve", NS, apps.read_namespaced_deployment("iris-serve", NS)),
        lambda: apps.patch_namespaced_deployment_scale("iris-serve", NS, {"spec": {"replicas": 9}}),
        lambda: apps.create_namespaced_deployment(NS, {"metadata": {"name": "x"}, "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": pod}}}),
        lambda: apps.read_namespaced_deployment("other", NS),
        lambda: core.read_namespaced_secret("s3-credentials", NS),
        lambda: core.list_namespaced_secret(NS),
        lambda: core.list_namespaced_config_map(NS),
        lambda: batch.create_namespaced_job(NS, {"metadata": {"name": "x"}, "spec": {
            "template": {"spec": {**pod, "restartPolicy": "Never"}}}}),
        lambda: client.RbacAuthorizationV1Api(api).patch_namespaced_role(
            "iris-roller", NS, {"rules": []}),
    ]
    assert_denied(denied)


def assert_denied(calls: list[Any]) -> None:
    """Each call is refused with 403 Forbidden."""
    from kubernetes import client

    for number, call in enumerate(calls):
        with pytest.raises(client.exceptions.ApiException) as info:
            call()
        assert info.value.status == 403, (number, info.value)


# -- the iris schedule ----------------------------------------------------------------------
def test_scheduled_retraining_rolls_only_passing_runs(
        cluster: tuple[KubeStandIn, str], iris_split: Path, tmp_path: Path,
        s3_env: S3Server, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    standin, store = cluster
    directory = tmp_path / "iris-pipeline"
    shutil.copytree(iris_split, directory)
    use_secret_credentials(directory)
    base = ["schedule", str(directory), "-n", NS, "--image", IMAGE, "--store", store]

    # Bad schedules are refused before a single API call.
    before = len(standin.requests)
    for bad, fragment in ((["--cron", "61 3 * * *"], "minute: 61 is outside 0-59"),
                          (["--cron", "0 3 * *"], "expected 5 fields"),
                          (["--cron", "0 3 * * *", "--time-zone", "Mars/Olympus"],
                           "unknown time zone 'Mars/Olympus'")):
        code, output = run_cli(base + bad, capsys)
        assert code == 2, output
        assert fragment in output and "Traceback" not in output
        assert len(output.strip().splitlines()) == 1
    assert len(standin.requests) == before

    # Schedule: a Forbid CronJob; the Deployment is created idle until a run passes.
    code, output = run_cli(base + ["--cron", "0 3 * * *", "--time-zone", "Europe/Berlin"],
                           capsys)
    assert code == 0, output
    assert "created CronJob iris-retrain in ml: '0 3 * * *' (Europe/Berlin)" in output
    cronjob = standin.store.peek("cronjobs", NS, "iris-retrain")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["timeZone"] == "Europe/Berlin"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    pod_spec = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod_spec["initContainers"]] == ["train"]
    assert [c["name"] for c in pod_spec["containers"]] == ["promote-and-roll"]
    assert served_run(standin, "iris-serve") == ("latest", 0)

    # The roller's Role: get and patch on the pipeline's Deployment, by name; list pods and
    # read their logs (to say why a roll-out failed); nothing else.
    role = standin.store.peek("roles", NS, "iris-roller")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["deployments"],
                              "resourceNames": ["iris-serve"], "verbs": ["get", "patch"]},
                             {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                             {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]

    # ... and the API enforces exactly that for the roller's token.
    assert_roller_rights(standin)
    mark = len(standin.requests)

    # A triggered run: train, then gate + promote + roll.  A second trigger while it
    # runs starts nothing (Forbid).
    # (The stand-in's controller is told the scheduled time: "0 3 * * *" last fired hours
    # ago, past startingDeadlineSeconds, and a real controller would skip that one.)
    now = dt.datetime.now(dt.timezone.utc)
    assert standin.trigger_cronjob(NS, "iris-retrain", now - dt.timedelta(hours=1)) is None
    job = standin.trigger_cronjob(NS, "iris-retrain", now)
    assert job is not None
    run1 = job["metadata"]["name"]
    assert standin.trigger_cronjob(NS, "iris-retrain", now + dt.timedelta(minutes=1)) is None
    assert [j["metadata"]["name"] for j in standin.store.scan("jobs", NS)] == [run1]
    done = wait_job(standin, run1)
    assert any(c["type"] == "Complete" for c in done["status"]["conditions"]), done["status"]
    pod = run_pod(standin, run1)
    train = pod["status"]["initContainerStatuses"][0]["state"]["terminated"]
    finish = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert train["exitCode"] == 0 and finish["exitCode"] == 0
    assert train["finishedAt"] <= finish["startedAt"]
    assert latest(s3_env, store) == run1
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and served_run(standin, "iris-serve") != (run1, 2):
        time.sleep(0.3)
    assert served_run(standin, "iris-serve") == (run1, 2)
    assert info(standin, "iris-serve")["run_id"] == run1
    assert predict(standin, "iris-serve", IRIS_REQUEST) == (200, IRIS_ANSWER)

    # Only the roller's token touched the Deployment, and only with get/patch.
    by_roller = [r for r in standin.requests[mark:] if r.user == ROLLER]
    assert by_roller, "the roll step made no API call with its own token"
    assert {(r.verb, r.resource, r.name) for r in by_roller} <= {
        ("get", "deployments", "iris-serve"), ("patch", "deployments", "iris-serve")}

    runs = history(capsys, directory)["runs"]
    assert [r["run_id"] for r in runs] == [run1]
    assert runs[0]["status"] == "succeeded" and runs[0]["trigger"] == "schedule"
    assert runs[0]["promoted"] is True
    assert 0.8 < runs[0]["metrics"]["train.accuracy"] <= 1.0
    assert runs[0]["start"] and runs[0]["end"]

    # A failing run (a bad parameter, one retry): latest and the Deployment stay put.
    set_ini(directory / "stage-1-train" / "config.ini", "batch", "RETRIES", "1")
    code, output = run_cli(base + ["--cron", "0 3 * * *", "--param", "max_iter=-1"], capsys)
    assert code == 0, output
    assert "updated CronJob iris-retrain" in output
    dep_before = standin.store.peek("deployments", NS, "iris-serve")
    job = standin.trigger_cronjob(NS, "iris-retrain", now + dt.timedelta(minutes=2))
    assert job is not None
    run2 = job["metadata"]["name"]
    done = wait_job(standin, run2)
    assert any(c["type"] == "Failed" for c in done["status"]["conditions"])
    assert latest(s3_env, store) == run1
    dep_after = standin.store.peek("deployments", NS, "iris-serve")
    assert dep_after["spec"] == dep_before["spec"]
    assert dep_after["metadata"]["generation"] == dep_before["metadata"]["generation"]
    assert predict(standin, "iris-serve", IRIS_REQUEST) == (200, IRIS_ANSWER)
    pod = run_pod(standin, run2)
    assert "promote-and-roll" not in json.dumps(
        [c for c in pod["status"].get("containerStatuses") or []
         if (c.get("state") or {}).get("terminated")])
    code, output = run_cli(["logs", "train", str(directory), "-n", NS, "--run", run2], capsys)
    assert "attempt 1/2 failed" in output, output

    report = history(capsys, directory)
    assert [r["run_id"] for r in report["runs"]] == [run2, run1]
    failed = report["runs"][0]
    assert failed["status"] == "failed"
    assert failed["failed_stage"] == "train"
    assert "max_iter" in failed["reason"], failed
    assert report["schedule"]["schedule"] == "0 3 * * *"
    code, output = run_cli(["history", str(directory), "-n", NS], capsys)
    assert code == 0 and run2 in output and "failed" in output and "train" in output
    assert f"nb2prod runs {directory} --store {store}" in output  # a command that works

    # The store tells the same without the cluster (whose CronJob deletes old Jobs).
    from nb2prod import artifacts

    stored = {r["run_id"]: r for r in artifacts.list_runs(store, "iris")}
    assert stored[run1]["status"] == "succeeded" and stored[run1]["rollout"]["iris-serve"] == {
        "status": "serving", "model_run_id": run1}
    assert stored[run2]["status"] == "failed" and "max_iter" in stored[run2]["reason"]
    assert stored[run2]["stages"]["train"]["status"] == "failed"
    code, output = run_cli(["runs", str(directory), "--store", store], capsys)
    assert code == 0 and output.count("failed") >= 1 and "train" in output, output

    # --suspend keeps the schedule but starts nothing; history says so.
    code, output = run_cli(base + ["--cron", "0 3 * * *", "--suspend"], capsys)
    assert code == 0 and "updated CronJob iris-retrain" in output and "suspended" in output
    assert "next run" not in output, output
    assert standin.store.peek("cronjobs", NS, "iris-retrain")["spec"]["suspend"] is True
    assert standin.trigger_cronjob(NS, "iris-retrain", now + dt.timedelta(minutes=3)) is None
    assert history(capsys, directory)["schedule"]["suspend"] is True
    assert len(standin.store.scan("jobs", NS)) == 2

    # unschedule: no more runs, the history stays.
    code, output = run_cli(["unschedule", str(directory), "-n", NS], capsys)
    assert code == 0 and "removed the schedule" in output, output
    assert standin.store.peek("cronjobs", NS, "iris-retrain") is None
    assert [r["run_id"] for r in history(capsys, directory)["runs"]] == [run2, run1]
    code, output = run_cli(["unschedule", str(directory), "-n", NS], capsys)
    assert code == 0 and "is not scheduled" in output

    # A service Deployment that schedule has to create serves the promoted run at once
    # (read from the store's latest.json), not zero replicas until the next cron time.
    from kubernetes import client

    client.AppsV1Api(standin.api_client()).delete_namespaced_deployment("iris-serve", NS)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and standin.store.peek("deployments", NS, "iris-serve"):
        time.sleep(0.2)
    assert standin.store.peek("deployments", NS, "iris-serve") is None, "the deletion never ended"
    code, output = run_cli(base + ["--cron", "0 3 * * *"], capsys)
    assert code == 0 and f"service serve: created serving run {run1}" in output, output
    assert served_run(standin, "iris-serve") == (run1, 2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and predict(standin, "iris-serve", IRIS_REQUEST)[0] != 200:
        time.sleep(0.5)
    assert predict(standin, "iris-serve", IRIS_REQUEST) == (200, IRIS_ANSWER)
    assert info(standin, "iris-serve")["run_id"] == run1


# -- the promotion gate and deploy --no-wait ---------------------------------------------------
GATED = [
    ("parameters", "quality = 0.5"),
    ("stage:prepare", "measured = quality"),
    ("stage:score", "accuracy = measured"),
    ("metrics", "accuracy"),
    ("serve", "def predict(payload):\n    return {'accuracy': accuracy}"),
]


def test_no_wait_runs_in_cluster_and_the_gate_holds_back_a_weak_model(
        cluster: tuple[KubeStandIn, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    standin, store = cluster
    directory = split(write_notebook(tmp_path / "gated.ipynb", GATED), tmp_path / "gated")
    set_ini(directory / "nb2prod.ini", "promotion", "METRIC", "accuracy")
    set_ini(directory / "nb2prod.ini", "promotion", "MIN", "0.9")
    set_ini(directory / "stage-1-prepare" / "config.ini", "default", "CPU_REQUEST", "0.25")
    use_secret_credentials(directory)
    base = ["deploy", str(directory), "-n", NS, "--image", IMAGE, "--store", store, "--no-wait"]

    # No pod can start until deploy has returned, so it returning at all shows it did not
    # wait for the run (no clock involved: a busy machine cannot make this pass or fail).
    standin.unschedulable = True
    try:
        code, output = run_cli(base + ["--param", "quality=0.95"], capsys)
    finally:
        standin.unschedulable = False
    assert code == 0, output
    run1 = output.split("run ", 1)[1].split(" ", 1)[0]
    job = standin.store.peek("jobs", NS, run1)
    assert job is not None and not (job.get("status") or {}).get("conditions"), \
        "deploy --no-wait waited for the run"
    wait_job(standin, run1)
    # Stages ran one after the other in DAG order, each in its own init container with
    # its own resources, then the promote-and-roll step.
    pod = run_pod(standin, run1)
    inits = pod["status"]["initContainerStatuses"]
    assert [c["name"] for c in inits] == ["prepare", "score"]
    prepare, score = (c["state"]["terminated"] for c in inits)
    finish = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert prepare["finishedAt"] <= score["startedAt"] <= score["finishedAt"] <= \
        finish["startedAt"]
    cpus = [c["resources"]["requests"]["cpu"] for c in pod["spec"]["initContainers"]]
    assert cpus == ["250m", "500m"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and served_run(standin, "gated-serve") != (run1, 2):
        time.sleep(0.3)
    assert served_run(standin, "gated-serve") == (run1, 2)
    assert predict(standin, "gated-serve", {}) == (200, {"accuracy": 0.95})
    code, output = run_cli(["status", str(directory), "-n", NS], capsys)
    assert code == 0 and output.count(run1) == 2, output  # the run, and what is served

    # Below the gate: trained and recorded, not promoted, not rolled.
    dep_before = standin.store.peek("deployments", NS, "gated-serve")
    code, output = run_cli(base, capsys)
    assert code == 0, output
    run2 = output.split("run ", 1)[1].split(" ", 1)[0]
    wait_job(standin, run2)
    runs = history(capsys, directory)["runs"]
    assert [r["run_id"] for r in runs[:2]] == [run2, run1]
    weak = runs[0]
    assert weak["status"] == "not_promoted", weak
    assert weak["promoted"] is False
    assert weak["metrics"] == {"score.accuracy": 0.5}
    assert "accuracy = 0.5 < minimum 0.9" in weak["reason"]
    assert runs[1]["status"] == "succeeded" and runs[1]["trigger"] == "manual"
    assert standin.store.peek("deployments", NS, "gated-serve")["spec"] == dep_before["spec"]
    assert predict(standin, "gated-serve", {}) == (200, {"accuracy": 0.95})

    from nb2prod import artifacts

    recorded = artifacts.read_json(store, f"gated/runs/{run2}/run.json")
    assert recorded["promoted"] is False and recorded["metrics"] == {"score": {"accuracy": 0.5}}
    assert "rollout" not in recorded
    assert artifacts.read_latest(store, "gated")["run_id"] == run1
    recorded = artifacts.read_json(store, f"gated/runs/{run1}/run.json")
    assert recorded["status"] == "succeeded" and recorded["promoted"] is True
    assert recorded["rollout"] == {"gated-serve": {"status": "serving", "model_run_id": run1}}

    # Passing, but the new serving code never becomes ready: the roller puts the
    # previous template back and the run fails at its last step.
    broken = write_notebook(tmp_path / "gated.ipynb",
                            [*GATED, (None, "raise RuntimeError('cannot start')")])
    from nb2prod.split import split_notebook

    split_notebook(broken, directory, force=True)  # keeps the [promotion]/[secrets] edits
    # Long enough for the start-up to have failed on a busy machine (kernel start and all),
    # so its own last line is in the log when the deadline hits.
    set_ini(directory / "stage-3-serve" / "config.ini", "service", "MAX_STARTUP_TIME_SECONDS",
            "30")
    code, output = run_cli(base + ["--param", "quality=0.97"], capsys)
    assert code == 0, output
    run3 = output.split("run ", 1)[1].split(" ", 1)[0]
    done = wait_job(standin, run3)
    assert any(c["type"] == "Failed" for c in done["status"]["conditions"])
    failed = history(capsys, directory)["runs"][0]
    assert failed["run_id"] == run3 and failed["status"] == "failed", failed
    assert failed["failed_stage"] == "promote-and-roll"
    assert f"rolled back to run {run1}" in failed["reason"], failed
    # ... and says why, as deploy does: the new pod's state and its log's last line.
    why = re.compile(r" -- pod gated-serve-[a-z0-9]+-[a-z0-9]+: container serve[^;]*; "
                     r"last log lines: [^;]*RuntimeError: cannot start")
    assert why.search(failed["reason"]), failed
    assert served_run(standin, "gated-serve") == (run1, 2)
    # The store keeps the outcome too, for when the cluster has deleted the Job.
    recorded = artifacts.read_json(store, f"gated/runs/{run3}/run.json")
    assert recorded["status"] == "failed" and recorded["promoted"] is True
    assert recorded["rollout"]["gated-serve"]["status"] == "rolled_back"
    assert f"rolled back to run {run1}" in recorded["reason"]
    assert why.search(recorded["reason"]), recorded
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and predict(standin, "gated-serve", {})[0] != 200:
        time.sleep(0.5)
    assert predict(standin, "gated-serve", {}) == (200, {"accuracy": 0.95})


def test_schedule_and_no_wait_refuse_a_missing_claim_before_creating_anything(
        kube_standin: KubeStandIn, iris_split: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(kube_standin.requests)
    for command in (["schedule", str(iris_split), "-n", "fresh", "--cron", "0 3 * * *"],
                    ["deploy", str(iris_split), "-n", "fresh", "--no-wait"]):
        code, output = run_cli([*command, "--image", IMAGE, "--store", "pvc://gone/iris"], capsys)
        assert code == 2, output
        assert "PersistentVolumeClaim gone not found in namespace fresh" in output
    assert [r for r in kube_standin.requests[before:] if r.method != "GET"] == []
    assert kube_standin.store.peek("namespaces", "", "fresh") is None


# -- render --cron and cron checks ---------------------------------------------------------
def test_render_cron_validates_and_runs_on_its_own(iris_split: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import yaml
    from kubernetes_validate import utils

    out = tmp_path / "scheduled.yaml"
    code, output = run_cli(["render", str(iris_split), "-n", NS, "--store", "s3://b/x",
                            "--cron", "*/30 2-4 * * MON-FRI", "--time-zone", "Asia/Tokyo",
                            "-o", str(out)], capsys)
    assert code == 0, output
    docs = list(yaml.safe_load_all(out.read_text()))
    kinds = [d["kind"] for d in docs]
    assert "CronJob" in kinds and "Job" not in kinds
    for version in ("1.28.0", utils.latest_version()):
        for doc in docs:
            utils.validate(doc, version, strict=True)
    cronjob = next(d for d in docs if d["kind"] == "CronJob")
    assert cronjob["spec"]["timeZone"] == "Asia/Tokyo"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2  # GitOps: serve latest, never scaled to zero by a sync
    # Every ConfigMap the CronJob's pod mounts is rendered too (or published by Kubernetes).
    rendered = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    mounted = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert mounted <= rendered
    assert not any("secret" in json.dumps(d).lower() and "secretKeyRef" not in json.dumps(d)
                   for d in docs if d["kind"] == "ConfigMap" and "roll" in d["metadata"]["name"])

    # [schedule] CRON in nb2prod.ini does the same; a bad one names the file and key.
    directory = tmp_path / "iris"
    shutil.copytree(iris_split, directory)
    set_ini(directory / "nb2prod.ini", "schedule", "CRON", "@daily")
    code, output = run_cli(["render", str(directory), "-n", NS, "--store", "s3://b/x"], capsys)
    assert code == 0 and "kind: CronJob" in output and "schedule: '@daily'" in output, output
    set_ini(directory / "nb2prod.ini", "schedule", "CRON", "0 25 * * *")
    code, output = run_cli(["render", str(directory), "-n", NS, "--store", "s3://b/x"], capsys)
    assert code == 2
    assert "nb2prod.ini: [schedule] CRON '0 25 * * *': hour: 25 is outside 0-23" in output


@pytest.mark.parametrize(("expr", "message"), [
    ("* * * * * *", "expected 5 fields"),
    ("60 * * * *", "minute: 60 is outside 0-59"),
    ("0 0 0 * *", "day of month: 0 is outside 1-31"),
    ("0 0 * 13 *", "month: 13 is outside 1-12"),
    ("0 0 * * 7", "day of week: 7 is outside 0-6"),
    ("0 0 * * FOO", "day of week: 'FOO' is not a number"),
    ("*/0 * * * *", "step in '*/0' must be a positive number"),
    ("5-1 * * * *", "range '5-1' runs backwards"),
    ("@weekdays", "unknown descriptor @weekdays"),
    ("@every 0s", "at least 1s"),
    ("@every soon", "expected a duration"),
    ("CRON_TZ=UTC 0 3 * * *", "use --time-zone"),
    ("0 0 31 2 *", "never fires"),
    ("", "empty"),
])
def test_invalid_cron_expressions(expr: str, message: str) -> None:
    with pytest.raises(cron.CronError, match=message.replace("*", r"\*").replace("(", r"\(")):
        cron.parse(expr)


def test_cron_next_run_and_time_zones() -> None:
    now = dt.datetime(2026, 3, 28, 23, 59, 30, tzinfo=dt.timezone.utc)  # Sat; DST starts Sun
    assert cron.next_run(cron.parse("0 3 * * *"), None, now) == dt.datetime(
        2026, 3, 29, 3, 0, tzinfo=dt.timezone.utc)
    berlin = cron.next_run(cron.parse("0 3 * * *"), "Europe/Berlin", now)
    assert berlin is not None and (berlin.year, berlin.month, berlin.day, berlin.hour) == (
        2026, 3, 29, 3)
    assert str(berlin.tzinfo) == "Europe/Berlin"
    weekday = cron.next_run(cron.parse("30 9 * * MON-FRI"), None, now)
    assert weekday == dt.datetime(2026, 3, 30, 9, 30, tzinfo=dt.timezone.utc)
    # Day-of-month OR day-of-week when both are restricted (cron's rule).
    either = cron.parse("0 0 1 * SUN")
    assert either.next_after(dt.datetime(2026, 3, 28, 12, 0)) == dt.datetime(2026, 3, 29)
    assert cron.parse("@hourly").next_after(dt.datetime(2026, 1, 1, 10, 0)) == \
        dt.datetime(2026, 1, 1, 11, 0)
    assert cron.parse("@every 90m").every == dt.timedelta(minutes=90)
    for zone in ("Europe/Berlin", "UTC", "America/Argentina/Buenos_Aires"):
        cron.time_zone(zone)
    for bad in ("Mars/Olympus", "CET+1", "../../etc/passwd", " UTC", ""):
        with pytest.raises(cron.CronError):
            cron.time_zone(bad)


# -- the stage runtime's in-cluster behaviour, locally -------------------------------------------
def flaky(counter: Path) -> list[tuple[str, str]]:
    """Fails its first attempt; the counter lives outside the working directory, which
    every attempt gets afresh."""
    return [
        ("stage:train", (f"import os\nCOUNTER = {str(counter)!r}\n"
                         "seen = int(open(COUNTER).read()) if os.path.exists(COUNTER) else 0\n"
                         "open(COUNTER, 'w').write(str(seen + 1))\n"
                         "assert seen >= 1, 'first attempt fails'\nmodel = seen")),
        ("serve", "def predict(payload):\n    return model"),
    ]
SLOW = [("stage:train", "import time\ntime.sleep(60)\nmodel = 1"),
        ("serve", "def predict(payload):\n    return model")]


def run_stage_process(directory: Path, tmp_path: Path, args: list[str]
                      ) -> tuple[int, dict, str]:
    """`python -m nb2prod_runtime run-stage` as an init container runs it (cwd = the stage,
    the pipeline's runtime importable: in the pod it is copied beside the stage's code)."""
    import os
    import subprocess
    import sys

    stage = directory / "stage-1-train"
    message = tmp_path / "termination-log"
    message.write_text("")
    env = {**os.environ, "NB2PROD_STORE": f"file://{tmp_path / 'store'}",
           "NB2PROD_PIPELINE": directory.name, "NB2PROD_STAGE": "train",
           "NB2PROD_RUN_ID": "r1", "NB2PROD_TERMINATION_LOG": str(message),
           "PYTHONPATH": os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([*args[:-1], sys.executable, "-m", "nb2prod_runtime", "run-stage",
                           *args[-1].split()], cwd=stage, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    text = message.read_text()
    return proc.returncode, json.loads(text) if text else {}, proc.stdout + proc.stderr


def test_run_stage_retries_in_a_fresh_kernel(tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    directory = split(write_notebook(tmp_path / "flaky.ipynb", flaky(counter)), tmp_path / "flaky")
    code, verdict, output = run_stage_process(directory, tmp_path, ["--retries 0"])
    assert code == 1, output
    assert verdict["status"] == "failed" and verdict["attempts"] == 1
    assert "AssertionError: first attempt fails" in verdict["reason"]
    counter.unlink()
    code, verdict, output = run_stage_process(directory, tmp_path, ["--retries 2"])
    assert code == 0, output
    assert verdict == {"stage": "train", "status": "succeeded", "attempts": 2,
                       "seconds": verdict["seconds"]}
    assert "attempt 1/3 failed" in output


def test_run_stage_time_limit_is_reported(tmp_path: Path) -> None:
    directory = split(write_notebook(tmp_path / "slow.ipynb", SLOW), tmp_path / "slow")
    started = time.monotonic()
    # 15 s: timeout(1)'s SIGTERM must come after the runtime has set its handler (a Python
    # start on a busy machine), and long before the stage's 60 s sleep ends.
    code, verdict, output = run_stage_process(directory, tmp_path,
                                              ["timeout", "15", "--timeout 15"])
    assert time.monotonic() - started < 55  # the limit cut the 60 s stage short
    assert code == 124, output  # timeout(1): the command timed out
    assert verdict == {"stage": "train", "status": "failed",
                       "reason": "exceeded MAX_COMPLETION_TIME_SECONDS (15s)"}


# -- history from Job and pod status (pure) ------------------------------------------------------
def _job(name: str, conditions: list[dict] | None = None, active: int = 0,
         owner: str | None = "CronJob") -> dict:
    status: dict[str, Any] = {"startTime": "2026-11-22T03:00:05Z"}
    if conditions:
        status["conditions"] = conditions
    if active:
        status["active"] = active
    meta: dict[str, Any] = {"name": name, "creationTimestamp": "2026-11-22T03:00:00Z"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "iris-retrain"}]
    return {"metadata": meta, "status": status}


def _pod(inits: list[dict], main: list[dict]) -> dict:
    return {"metadata": {"name": "p", "creationTimestamp": "2026-11-22T03:00:01Z",
                         "annotations": {"nb2prod.io/containers": json.dumps(
                             {"prep-data": "prep_data", "train": "train"})}},
            "status": {"initContainerStatuses": inits, "containerStatuses": main}}


def _terminated(name: str, code: int, message: str = "") -> dict:
    return {"name": name, "state": {"terminated": {"exitCode": code, "message": message,
                                                   "reason": "Error" if code else "Completed"}}}


def test_history_summaries_of_runs_in_every_state() -> None:
    from nb2prod.runners.schedule import run_summary

    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
              "lastTransitionTime": "2026-11-22T03:02:00Z"}
    # A stage that failed before writing a verdict: the log tail's nb2prod line is the reason.
    run = run_summary(_job("iris-retrain-1", [failed]), [_pod(
        [_terminated("prep-data", 0, '{"stage": "prep_data", "status": "succeeded"}'),
         _terminated("train", 1, "pip noise\nnb2prod: error: run-stage: store unreachable\n")],
        [{"name": "promote-and-roll", "state": {"waiting": {"reason": "PodInitializing"}}}])])
    assert run["status"] == "failed" and run["trigger"] == "schedule"
    assert run["failed_stage"] == "train"
    assert run["reason"] == "nb2prod: error: run-stage: store unreachable"
    assert run["stages"] == {"prep_data": "succeeded", "train": "failed",
                             "promote-and-roll": "pending"}
    assert run["end"] == "2026-11-22T03:02:00Z"

    # Still running: the current stage is shown, nothing failed.
    run = run_summary(_job("iris-20261122t030000-abcd", active=1, owner=None), [_pod(
        [_terminated("prep-data", 0), {"name": "train", "state": {"running": {}}}],
        [{"name": "promote-and-roll", "state": {"waiting": {"reason": "PodInitializing"}}}])])
    assert (run["status"], run["trigger"], run["failed_stage"]) == ("running", "manual", None)
    assert run["stages"]["train"] == "running" and run["reason"] is None

    # Waiting for a node: pending, and the scheduler's message says why.
    waiting = _pod([{"name": "prep-data", "state": {"waiting": {"reason": "PodInitializing"}}}],
                   [])
    waiting["status"]["conditions"] = [{"type": "PodScheduled", "status": "False",
                                        "reason": "Unschedulable",
                                        "message": "0/3 nodes are available: Insufficient cpu"}]
    run = run_summary(_job("iris-retrain-0", []), [waiting])
    assert run["status"] == "pending" and run["failed_stage"] is None
    assert run["reason"] == "Unschedulable: 0/3 nodes are available: Insufficient cpu"

    # A pod stuck on its image: the Job's deadline ends it; the reason says why.
    deadline = {**failed, "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline"}
    stuck = _pod([{"name": "prep-data", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}], [])
    run = run_summary(_job("iris-retrain-2", [deadline]), [stuck])
    assert run["failed_stage"] == "prep_data"
    assert run["reason"].startswith("ImagePullBackOff")

    # No pod left (cleaned up): the Job condition is all there is.
    run = run_summary(_job("iris-retrain-3", [deadline]), [])
    assert run["status"] == "failed"
    assert run["reason"] == "DeadlineExceeded: Job was active longer than specified deadline"
    # Its only pod deleted mid-run (`kubectl delete pod`, seen on the real cluster): the
    # Job fails at once with BackoffLimitExceeded, which alone does not say why.
    gone = {**failed, "message": "Job has reached the specified backoff limit"}
    run = run_summary(_job("iris-retrain-5", [gone]), [])
    assert (run["status"], run["failed_stage"]) == ("failed", None)
    assert run["reason"] == ("its pod was deleted or evicted before the run ended "
                             "(BackoffLimitExceeded: Job has reached the specified backoff limit)")

    # Succeeded: metrics from the roller's verdict, flattened per stage.
    verdict = json.dumps({"status": "succeeded", "promoted": True, "reason": "ok",
                          "metrics": {"train": {"accuracy": 0.97}}})
    complete = {"type": "Complete", "status": "True"}
    run = run_summary(_job("iris-retrain-4", [complete]), [_pod(
        [_terminated("prep-data", 0), _terminated("train", 0)],
        [_terminated("promote-and-roll", 0, verdict)])])
    assert (run["status"], run["promoted"], run["metrics"]) == (
        "succeeded", True, {"train.accuracy": 0.97})

    # `kubectl create job --from=cronjob/iris-retrain` (what `schedule` suggests): the Job
    # is owned by the CronJob too, but kubectl marks it as started by hand.
    by_hand = _job("iris-retrain-manual", [complete])
    by_hand["metadata"]["annotations"] = {"cronjob.kubernetes.io/instantiate": "manual"}
    assert run_summary(by_hand, [])["trigger"] == "manual"


def test_history_knows_the_store_of_a_run() -> None:
    """`history` ends with a `runs --store` command that works: the store as the user gave it."""
    from nb2prod.runners.schedule import store_of

    def spec(value: str, claim: str | None = None) -> dict:
        volumes = [{"name": "store", "persistentVolumeClaim": {"claimName": claim}}] if claim \
            else []
        return {"initContainers": [{"name": "train", "env": [
            {"name": "NB2PROD_STORE", "value": value}]}], "volumes": volumes}

    assert store_of(spec("file:///nb2prod/store/iris", "models")) == "pvc://models/iris"
    assert store_of(spec("file:///nb2prod/store", "models")) == "pvc://models/"
    assert store_of(spec("s3://bucket/prefix")) == "s3://bucket/prefix"
    assert store_of({"containers": [{"name": "x"}]}) is None


def test_promoted_run_is_read_only_when_the_store_answers_in_time(
        iris_split: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nb2prod import artifacts
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners.schedule import promoted_run

    pipeline = load_pipeline(iris_split)
    asked: list[str] = []
    called, answer = threading.Event(), threading.Event()

    def slow(store: str, name: str) -> dict:
        asked.append(store)
        called.set()
        answer.wait(120)  # the store answers only once the test has its result
        return {"run_id": "too-late"}

    monkeypatch.setattr(artifacts, "read_latest", slow)
    try:
        started = time.monotonic()
        assert promoted_run(pipeline, "s3://bucket/x", timeout=0.2) is None
        assert time.monotonic() - started < 60  # it did not wait for the store
        assert called.wait(60) and asked == ["s3://bucket/x"]  # (a busy machine: maybe late)
    finally:
        answer.set()
    assert promoted_run(pipeline, "pvc://claim/x") is None and len(asked) == 1

    def unreadable(store: str, name: str) -> dict:
        raise RuntimeError("NoCredentialsError")

    monkeypatch.setattr(artifacts, "read_latest", unreadable)
    assert promoted_run(pipeline, "s3://bucket/x") is None
    monkeypatch.setattr(artifacts, "read_latest", lambda store, name: {"run_id": "r7"})
    assert promoted_run(pipeline, "s3://bucket/x") == "r7"
    monkeypatch.setattr(artifacts, "read_latest", lambda store, name: None)
    assert promoted_run(pipeline, "s3://bucket/x") is None


def test_scheduled_runs_use_the_cache_only_with_schedule_cache_true(
        cluster: tuple[KubeStandIn, str], tmp_path: Path, s3_env: S3Server,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    """`[schedule] CACHE = true`: a scheduled run reuses the stages a `deploy` with the same
    inputs ran (the same key, decided in the pod), runs the `no-cache` one, and runs a
    stage whose cached artifact was corrupted; without the setting it runs every stage.
    Judged from the store (run record, manifests) and `history`, never from timing."""
    from nb2prod import artifacts
    from tests.test_cache import write_notebook as write_cache_notebook

    standin, store = cluster
    bucket, prefix = store.split("/")[2], store.split("/", 3)[3]
    write_cache_notebook(tmp_path / "p.ipynb")  # load -> fit -> report (tagged no-cache)
    directory = split(tmp_path / "p.ipynb", tmp_path / "p")
    use_secret_credentials(directory)
    ini = directory / "nb2prod.ini"
    code, output = run_cli(["deploy", str(directory), "-n", NS, "--image", IMAGE,
                            "--store", store], capsys)
    assert code == 0, output
    deployed = re.search(r"(?m)^run (\S+): \d+ batch stage", output)[1]
    now = dt.datetime.now(dt.timezone.utc)

    def scheduled_run(minute: int, cache_setting: str | None) -> tuple[str, dict, dict]:
        """Schedule with `[schedule] CACHE` so, trigger one run; (run id, stage records of
        the store's run record, its history entry)."""
        if cache_setting is None:
            ini.write_text(re.sub(r"(?m)^CACHE = .*\n", "", ini.read_text()))
        else:
            set_ini(ini, "schedule", "CACHE", cache_setting)
        code, output = run_cli(["schedule", str(directory), "-n", NS, "--image", IMAGE,
                                "--store", store, "--cron", "0 3 * * *"], capsys)
        assert code == 0 and "not supported" not in output, output
        job = standin.trigger_cronjob(NS, "p-retrain", now + dt.timedelta(minutes=minute))
        assert job is not None
        run = job["metadata"]["name"]
        done = wait_job(standin, run)
        assert any(c["type"] == "Complete" for c in done["status"]["conditions"]), \
            json.dumps(done["status"])
        record = next(r for r in artifacts.list_runs(store, "p") if r["run_id"] == run)
        entry = next(r for r in history(capsys, directory)["runs"] if r["run_id"] == run)
        assert entry["status"] == "succeeded" and set(entry["stages"].values()) == {"succeeded"}
        return run, record["stages"], entry

    def cached_from(run: str, stage: str) -> str | None:
        return artifacts.read_json(store, f"p/runs/{run}/{stage}/manifest.json",
                                   default={}).get("cached_from")  # report saves nothing

    # With the cache: what the deploy ran is reused, the no-cache stage runs.
    run1, stages, entry = scheduled_run(1, "true")
    assert {s: r.get("cached_from") for s, r in stages.items()} == {
        "load": deployed, "fit": deployed, "report": None}
    assert entry["cached"] == {"load": deployed, "fit": deployed}
    assert [cached_from(run1, s) for s in ("load", "fit", "report")] == [deployed, deployed, None]
    manifest = artifacts.read_json(store, f"p/runs/{run1}/fit/manifest.json")
    assert manifest["run_id"] == run1
    assert artifacts.read_run_metrics(store, "p", run1) == \
        artifacts.read_run_metrics(store, "p", deployed) == {"fit": {"score": 0.3}}
    assert artifacts.read_latest(store, "p")["run_id"] == run1  # promoted as a full run is
    code, output = run_cli(["logs", "load", str(directory), "-n", NS, "--run", run1], capsys)
    assert f"cached (run {deployed})" in output, output
    code, output = run_cli(["history", str(directory), "-n", NS], capsys)
    assert code == 0 and "load, fit" in output, output

    # Without the setting: every stage runs.
    run2, stages, entry = scheduled_run(2, None)
    assert [r.get("cached_from") for r in stages.values()] == [None, None, None]
    assert entry["cached"] == {}
    assert [cached_from(run2, s) for s in ("load", "fit", "report")] == [None, None, None]

    # A corrupted cached artifact is a miss, not a failure: `load` runs again; its output
    # comes out byte-identical, so `fit`'s key is unchanged and it is still reused.
    data = artifacts.read_json(store, f"p/runs/{deployed}/load/manifest.json")[
        "artifacts"]["data"]["file"]
    s3_env.client().put_object(Bucket=bucket, Key=f"{prefix}/p/runs/{deployed}/load/{data}",
                               Body=b"[1, 2, 3]")
    run3, stages, entry = scheduled_run(3, "true")
    assert {s: r.get("cached_from") for s, r in stages.items()} == {
        "load": None, "fit": deployed, "report": None}
    assert entry["cached"] == {"fit": deployed}
    assert artifacts.read_run_metrics(store, "p", run3) == {"fit": {"score": 0.3}}
