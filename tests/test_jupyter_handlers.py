"""The jupyter_server extension's REST API (nb2prod/jupyter/handlers.py).

Runs a real jupyter_server in-process (pytest-jupyter) with the extension
enabled the way the shipped config enables it, and talks HTTP to it: the
toolbar buttons see exactly these answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from tornado.httpclient import HTTPClientError

from nb2prod.errors import UserError
from nb2prod.jupyter import handlers
from nb2prod.runners.interrupts import stopped_text

pytest_plugins = ["pytest_jupyter.jupyter_server"]

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "example_notebooks" / "iris.ipynb"

from tests.kube.fixtures import kube_standin  # noqa: F401 - a fixture, used by name
from tests.s3server import s3_env, s3_server  # noqa: F401 - fixtures, used by name
from tests.test_deploy import IMAGE, create_secret, use_secret_credentials


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    """Enable the extension exactly as jupyter-config/server-config/nb2prod.json does."""
    shipped = json.loads((REPO / "jupyter-config" / "server-config" / "nb2prod.json").read_text())
    assert shipped["ServerApp"]["jpserver_extensions"] == {"nb2prod.jupyter": True}
    return {"ServerApp": {"jpserver_extensions": {"nb2prod.jupyter": True}}}


@pytest.fixture
def iris(jp_root_dir: Path) -> Path:
    """The iris example copied into a sub-directory of the server root."""
    target = jp_root_dir / "work" / "iris.ipynb"
    target.parent.mkdir()
    shutil.copy(IRIS, target)
    return target


def _notebook(path: Path, cells: list[tuple[str, list[str]]]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags} if tags else {})
                for src, tags in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def broken(jp_root_dir: Path) -> Path:
    """Two problems: an invalid stage name, and a name no earlier cell defines."""
    return _notebook(jp_root_dir / "broken.ipynb", [
        ("import math", ["imports"]),
        ("x = 1", ["stage:Bad Name"]),
        ("y = undefined_thing + 1", ["stage:train"]),
    ])


async def _post(jp_fetch: Any, endpoint: str, body: dict[str, Any], **kwargs: Any) -> Any:
    return await jp_fetch("nb2prod", endpoint, method="POST", body=json.dumps(body), **kwargs)


async def _error(jp_fetch: Any, endpoint: str, body: dict[str, Any],
                 **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(HTTPClientError) as info:
        await _post(jp_fetch, endpoint, body, **kwargs)
    response = info.value.response
    assert response is not None
    return info.value.code, json.loads(response.body or b"{}")


# -- check / split ----------------------------------------------------------------------
async def test_check_reports_stages_and_writes_nothing(jp_fetch: Any, iris: Path) -> None:
    response = await _post(jp_fetch, "check", {"path": "work/iris.ipynb"})
    assert response.code == 200
    report = json.loads(response.body)
    assert [(s["name"], s["type"]) for s in report["stages"]] == [
        ("train", "batch"), ("serve", "service")]
    serve = report["stages"][1]
    assert "model" in serve["inputs"] and serve["inputs"]["model"] == "train"
    assert any(r.startswith("scikit-learn==") for r in report["stages"][0]["requirements"])
    assert report["output"] is None
    assert sorted(p.name for p in iris.parent.iterdir()) == ["iris.ipynb"]


async def test_split_writes_pipeline_under_root(jp_fetch: Any, iris: Path) -> None:
    response = await _post(jp_fetch, "split", {"path": "work/iris.ipynb"})
    assert response.code == 200
    report = json.loads(response.body)
    out = iris.parent / "iris-pipeline"
    assert report["output_relative"] == "work/iris-pipeline"
    assert Path(report["output"]).resolve() == out.resolve()
    assert (out / "nb2prod.ini").is_file()
    for stage in report["stages"]:
        assert (out / stage["directory"] / "config.ini").is_file()
    assert {s["directory"] for s in report["stages"]} == {"stage-1-train", "stage-2-serve"}

    # again: the CLI's "exists, use --force" message, then an update with force
    code, body = await _error(jp_fetch, "split", {"path": "work/iris.ipynb"})
    assert code == 400 and "--force" in body["problems"][0]["message"]
    response = await _post(jp_fetch, "split", {"path": "work/iris.ipynb", "force": True})
    assert response.code == 200


async def test_split_to_chosen_output(jp_fetch: Any, iris: Path, jp_root_dir: Path) -> None:
    response = await _post(jp_fetch, "split", {"path": "/work/iris.ipynb", "output": "pipes/iris"})
    assert json.loads(response.body)["output_relative"] == "pipes/iris"
    assert (jp_root_dir / "pipes" / "iris" / "stage-1-train").is_dir()


async def test_problems_are_400_with_the_cli_messages(jp_fetch: Any, broken: Path) -> None:
    from nb2prod.split import check_notebook

    with pytest.raises(UserError) as cli:
        check_notebook(broken)
    for endpoint in ("check", "split"):
        code, body = await _error(jp_fetch, endpoint, {"path": "broken.ipynb"})
        assert code == 400
        got = body["problems"]
        assert [p["text"] for p in got] == [str(p) for p in cli.value.problems]
        assert [(p["message"], p["cell"], p["file"]) for p in got] == [
            (p.message, p.cell, p.file) for p in cli.value.problems]
        assert {p["cell"] for p in got} >= {1}  # the bad stage name is located
    assert not (broken.parent / "broken-pipeline").exists()


async def test_bad_requests(jp_fetch: Any, iris: Path) -> None:
    code, body = await _error(jp_fetch, "check", {"path": "work/nope.ipynb"})
    assert code == 404 and body["problems"][0]["message"] == "no such notebook"
    code, body = await _error(jp_fetch, "check", {})
    assert code == 400 and "'path'" in body["problems"][0]["message"]
    code, _ = await _error(jp_fetch, "check", {"path": 3})
    assert code == 400
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("nb2prod", "check", method="POST", body="not json")
    assert info.value.code == 400


# -- security -----------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["check", "split", "deploy"])
async def test_unauthenticated_is_403(jp_fetch: Any, iris: Path, endpoint: str) -> None:
    body = {"path": "work/iris.ipynb", "namespace": "ml"}
    code, _ = await _error(jp_fetch, endpoint, body, headers={"Authorization": ""})
    assert code == 403
    assert not (iris.parent / "iris-pipeline").exists()


async def test_status_unauthenticated_is_403(jp_fetch: Any) -> None:
    for parts in (("nb2prod", "deploy"), ("nb2prod", "deploy", "0123abcd")):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch(*parts, headers={"Authorization": ""})
        assert info.value.code == 403


async def test_paths_outside_root_are_403(jp_fetch: Any, iris: Path, jp_root_dir: Path,
                                          tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(IRIS, outside / "iris.ipynb")
    (jp_root_dir / "link").symlink_to(outside, target_is_directory=True)
    cases = [
        ("check", {"path": "../outside/iris.ipynb"}),
        ("check", {"path": "work/../../outside/iris.ipynb"}),
        ("check", {"path": "link/iris.ipynb"}),  # a symlink out of the root
        ("split", {"path": "../outside/iris.ipynb"}),
        ("split", {"path": "work/iris.ipynb", "output": "../outside/pipe"}),
        ("split", {"path": "work/iris.ipynb", "output": "link/pipe"}),
        ("split", {"path": "work/iris.ipynb", "templates": "../outside"}),
        ("deploy", {"path": "../outside/iris.ipynb", "namespace": "ml"}),
    ]
    for endpoint, body in cases:
        code, answer = await _error(jp_fetch, endpoint, body)
        assert code == 403, (endpoint, body)
        assert "outside the server's root" in answer["problems"][0]["message"]
    for path in ("../outside/iris.ipynb", "link/iris.ipynb"):  # the deploys of a pipeline
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("nb2prod", "deploy", params={"path": path})
        assert info.value.code == 403, path
    assert sorted(p.name for p in outside.iterdir()) == ["iris.ipynb"]


async def test_a_symlinked_default_output_out_of_the_root_is_refused(
        jp_fetch: Any, iris: Path, tmp_path: Path) -> None:
    """`ROOT/work/iris-pipeline -> /elsewhere/victim`: the default output is confined too."""
    from nb2prod.split import split_notebook

    victim = tmp_path / "elsewhere" / "victim-pipeline"
    victim.parent.mkdir()
    shutil.copy(IRIS, victim.parent / "iris.ipynb")
    split_notebook(victim.parent / "iris.ipynb", victim)
    history = victim / ".nb2prod" / "artifacts" / "iris" / "latest.json"
    history.parent.mkdir(parents=True)
    history.write_text('{"run_id": "r1"}')
    before = sorted(p.relative_to(victim) for p in victim.rglob("*"))
    (iris.parent / "iris-pipeline").symlink_to(victim, target_is_directory=True)

    for endpoint, body in (("split", {"path": "work/iris.ipynb", "force": True}),
                           ("deploy", {"path": "work/iris.ipynb", "force": True,
                                       "namespace": "ml"})):
        code, answer = await _error(jp_fetch, endpoint, body)
        assert code == 403, (endpoint, answer)
        assert answer["problems"][0]["message"] == \
            "'output' is outside the server's root directory"
    assert sorted(p.relative_to(victim) for p in victim.rglob("*")) == before
    assert history.read_text() == '{"run_id": "r1"}'


async def test_deeply_nested_json_is_400_not_500(jp_fetch: Any, iris: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for endpoint in ("check", "split", "deploy"):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("nb2prod", endpoint, method="POST", body=deep)
        assert info.value.code == 400, endpoint
        answer = json.loads(info.value.response.body)
        assert answer["problems"][0]["message"] == "request body is nested too deeply"


async def test_split_while_another_split_writes_is_refused_at_once(
        jp_fetch: Any, iris: Path) -> None:
    from nb2prod import writer

    assert (await _post(jp_fetch, "split", {"path": "work/iris.ipynb"})).code == 200
    out = iris.parent / "iris-pipeline"
    with writer.locked(out, out):
        code, answer = await _error(jp_fetch, "split", {"path": "work/iris.ipynb", "force": True})
    assert code == 400
    assert "another nb2prod split is writing" in answer["problems"][0]["message"]


# -- deploy -------------------------------------------------------------------------------
async def _deploy_status_when(jp_fetch: Any, path: str, deploy_id: str,
                              ready: Callable[[dict[str, Any]], bool],
                              timeout: float = 120) -> dict[str, Any]:
    """Poll the status (as the panel does) until `ready(status)`; that status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = json.loads((await jp_fetch("nb2prod", "deploy", deploy_id,
                                            params={"path": path})).body)
        if ready(status):
            return status
        assert loop.time() < deadline, status
        await asyncio.sleep(0.05)


async def _wait_deploy(jp_fetch: Any, path: str, deploy_id: str,
                       timeout: float = 120) -> dict[str, Any]:
    """Poll the status until the deploy is no longer running."""
    return await _deploy_status_when(jp_fetch, path, deploy_id,
                                     lambda status: status["state"] != "running", timeout)


def _stage_is(name: str, state: str) -> Callable[[dict[str, Any]], bool]:
    """`ready` for `_deploy_status_when`: stage `name` is in `state` (the deploy must
    still run meanwhile: else it failed early, said at once)."""
    def ready(status: dict[str, Any]) -> bool:
        states = {s["name"]: s["state"] for s in status["stages"]}
        assert states.get(name) == state or status["state"] == "running", status
        return states.get(name) == state

    return ready


def _reachable(context: str | None) -> dict[str, str]:
    """A cluster check that passes (for tests whose deploy command is scripted)."""
    return {"host": "https://scripted", "version": "v1.30.0"}


# A stand-in for `nb2prod deploy ... --events FILE`: the CLI's first line, then
# stage events (train waits for a release file), then the outcome `how`.
SCRIPTED_DEPLOY = """
import sys, time
from pathlib import Path
from nb2prod.errors import Problem
from nb2prod.progress import EventLog

events, release, how = sys.argv[1:4]
log = EventLog(Path(events))
print("run r1: 1 batch stage(s), 1 service(s), namespace ml, store s3://b/p", flush=True)
log({"stage": "train", "state": "running", "message": "Job t", "elapsed": 0.1, "run_id": "r1"})
while not Path(release).exists():
    time.sleep(0.05)
if how == "killed":
    time.sleep(600)
if how == "fails":  # as the CLI reports a failed stage
    why = 'BackoffLimitExceeded: nb2prod: stage failed in cell 5 ("x = 1"): ValueError: bad'
    log({"stage": "train", "state": "failed", "message": why, "elapsed": 3.0, "run_id": "r1"})
    log({"stage": "serve", "state": "skipped", "message": "an upstream stage failed",
         "elapsed": 0, "run_id": "r1"})
    log.write({"result": {"run_id": "r1", "status": "failed", "reason": f"stage 'train' {why}",
                          "services": {}}})
    log.write({"error": f"deploy of run r1 failed: stage 'train' {why}", "problems": []})
    sys.exit(1)
if how == "refused":  # as the CLI reports a UserError met after the preflight
    log.write({"error": "stage 'train': no such Secret", "problems": [
        Problem("no such Secret", cell=4).to_dict()]})
    print("nb2prod: error: stage 'train': no such Secret", flush=True)
    sys.exit(2)
log({"stage": "train", "state": "done", "message": "", "elapsed": 1.5, "run_id": "r1"})
log({"stage": "serve", "state": "serving", "message": "run r1", "elapsed": 2.0, "run_id": "r1"})
log.write({"result": {"run_id": "r1", "status": "succeeded", "reason": "", "services": {
    "serve": {"status": "serving", "url": "http://iris-serve.ml.svc.cluster.local/predict",
              "proxy_url": "https://k/api/v1/namespaces/ml/services/iris-serve:80/proxy/"}}}})
print("run r1 succeeded", flush=True)
"""


@pytest.fixture
def scripted_deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The handler launches SCRIPTED_DEPLOY instead of `nb2prod deploy` (cluster check passes).

    Yields {"release": file that lets the train stage finish, "how": the outcome
    to script, "commands": the real command lines the handler built}.
    """
    from nb2prod.jupyter import deploys, launches

    script = tmp_path / "scripted_deploy.py"
    script.write_text(SCRIPTED_DEPLOY)
    state: dict[str, Any] = {"release": tmp_path / "release", "how": "succeeds",
                             "commands": []}
    real = deploys.deploy_command

    def command(pipeline_dir: Path, namespace: str, options: dict[str, Any],
                events: Path) -> list[str]:
        state["commands"].append(real(pipeline_dir, namespace, options, events))
        return [sys.executable, str(script), str(events), str(state["release"]), state["how"]]

    monkeypatch.setattr(deploys, "deploy_command", command)
    monkeypatch.setattr(handlers, "_load_cluster_check", lambda: _reachable)
    yield state
    for pipeline in tmp_path.rglob(str(launches.LAUNCH_DIR)):  # no process left behind
        for _, record in launches.records(pipeline.parent.parent, "deploy"):
            if launches.is_running(record):
                os.killpg(record["runner"]["pid"], signal.SIGKILL)


async def test_deploy_preflight_refuses_before_splitting(
        jp_fetch: Any, iris: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real cluster check: no kubeconfig is 400, a silent API server 503; nothing split."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    body = {"path": "work/iris.ipynb", "namespace": "ml"}
    code, answer = await _error(jp_fetch, "deploy", body)
    assert code == 400 and "no Kubernetes configuration found" in answer["message"], answer
    contexts = json.loads((await jp_fetch("nb2prod", "kube")).body)
    assert contexts["contexts"] == [] and contexts["error"]

    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}},
                     {"name": "prod", "context": {"cluster": "c", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    contexts = json.loads((await jp_fetch("nb2prod", "kube")).body)
    assert contexts == {"contexts": ["dev", "prod"], "current": "dev", "error": None}
    code, answer = await _error(jp_fetch, "deploy", body)
    assert code == 503, answer
    assert answer["message"].startswith(f"cannot reach the Kubernetes API at http://127.0.0.1:{port}")
    code, answer = await _error(jp_fetch, "deploy", {**body, "context": "nope"})
    assert code == 400 and "--context nope" in answer["message"]
    assert sorted(p.name for p in iris.parent.iterdir()) == ["iris.ipynb"]


async def test_deploy_is_a_detached_process_followed_from_disk(
        jp_fetch: Any, iris: Path, scripted_deploy: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The deploy outlives the request, the tab and the server: it is a process of its
    own, and its status is read from its record and event log on disk."""
    from nb2prod.jupyter import launches

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")  # reaches it, never recorded
    response = await _post(jp_fetch, "deploy", {
        "path": "work/iris.ipynb", "namespace": "ml", "image": "reg/iris:1",
        "store": "s3://bucket/prefix", "params": {"max_iter": 300}})
    assert response.code == 202
    first = json.loads(response.body)
    assert first["state"] == "running" and first["pipeline"] == "work/iris-pipeline"
    assert [s["name"] for s in first["stages"]] == ["train", "serve"]
    assert first["stages"][1]["state"] == "waiting"
    pipeline = (iris.parent / "iris-pipeline").resolve()
    assert (pipeline / "stage-1-train").is_dir()  # split first
    assert response.headers["Location"].endswith(
        f"/nb2prod/deploy/{first['id']}?path=work%2Firis-pipeline")
    (command,) = scripted_deploy["commands"]
    folder = pipeline / launches.LAUNCH_DIR / first["id"]
    assert command[1:] == ["-m", "nb2prod", "deploy", str(pipeline), "--namespace", "ml",
                           "--image", "reg/iris:1", "--store", "s3://bucket/prefix",
                           "--param", "max_iter=300", "--events",
                           str(folder / "events.jsonl")]

    # the train stage's running event arrives from the other process
    status = await _deploy_status_when(jp_fetch, "work/iris.ipynb", first["id"],
                                       _stage_is("train", "running"), 60)
    assert status["run_id"] == "r1" and status["state"] == "running"
    record = json.loads((folder / "launch.json").read_text())
    assert record["kind"] == "deploy" and record["namespace"] == "ml"
    assert record["runner"]["pid"] != os.getpid()

    # a second deploy of the same pipeline while the first runs is refused
    code, body = await _error(jp_fetch, "deploy", {"path": "work/iris-pipeline",
                                                   "namespace": "ml"})
    assert code == 409 and first["id"] in body["problems"][0]["message"]
    # the pipeline's deploys, for a reopened panel (notebook or pipeline dir)
    for path in ("work/iris.ipynb", "work/iris-pipeline"):
        listed = json.loads((await jp_fetch("nb2prod", "deploy", params={"path": path})).body)
        assert [d["id"] for d in listed["deploys"]] == [first["id"]]

    scripted_deploy["release"].touch()
    final = await _wait_deploy(jp_fetch, "work/iris.ipynb", first["id"])
    assert final["state"] == "done", final
    assert {s["name"]: s["state"] for s in final["stages"]} == {"train": "done",
                                                                "serve": "serving"}
    assert final["services"]["serve"]["url"].endswith("/predict")
    assert final["error"] is None and final["problems"] == []
    assert "run r1 succeeded" in final["output"]
    assert final["log"] == f"work/iris-pipeline/.nb2prod/panel/{first['id']}/output.log"
    # no secret in the record, the events or the output
    for path in folder.iterdir():
        assert "s3cr3t-value" not in path.read_text(), path


async def test_a_running_deploy_is_stopped_from_the_panel(
        jp_fetch: Any, iris: Path, scripted_deploy: dict[str, Any]) -> None:
    """POST deploy/<id>/stop ends the detached deploy's process (held in training); its
    status is `stopped`, by whom and when, its running stage stopped (not failed), also
    when the process died of the SIGTERM before it could say so (this scripted one)."""
    from nb2prod.jupyter import launches

    first = json.loads((await _post(jp_fetch, "deploy", {
        "path": "work/iris.ipynb", "namespace": "ml"})).body)
    assert first["state"] == "running"
    code, _ = await _error(jp_fetch, "deploy/20260101t000000-abc/stop",
                           {"path": "work/iris.ipynb"})
    assert code == 404
    # in training (its first event written), then stopped
    await _deploy_status_when(jp_fetch, "work/iris.ipynb", first["id"],
                              _stage_is("train", "running"), 60)
    stopped = await _post(jp_fetch, f"deploy/{first['id']}/stop", {"path": "work/iris.ipynb"})
    assert json.loads(stopped.body) == {"id": first["id"], "stopping": True}
    pipeline = (iris.parent / "iris-pipeline").resolve()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while launches.is_running(launches.record_of(pipeline, "deploy", first["id"]) or {}):
        assert loop.time() < deadline, "the deploy process still runs"
        await asyncio.sleep(0.05)
    assert not scripted_deploy["release"].exists()  # it never got past training
    status = json.loads((await jp_fetch("nb2prod", "deploy", first["id"],
                                        params={"path": "work/iris.ipynb"})).body)
    assert status["state"] == "stopped" and status["error"] is None, status
    note = status["stopped"]
    assert note["by"] and note["via"] == "JupyterLab"
    assert first["started"] <= note["at"] <= time.time()
    rows = {s["name"]: (s["state"], s["message"]) for s in status["stages"]}
    assert rows == {"train": ("stopped", stopped_text(note)),
                    "serve": ("skipped", "not started: the deploy was stopped")}, rows
    assert stopped_text(note).startswith(f"stopped by {note['by']} (JupyterLab) at ")
    listed = json.loads((await jp_fetch("nb2prod", "deploy",
                                        params={"path": "work/iris.ipynb"})).body)
    assert listed["deploys"][0]["state"] == "stopped"


async def test_deploy_failures_are_reported(jp_fetch: Any, iris: Path, broken: Path,
                                            scripted_deploy: dict[str, Any]) -> None:
    # split problems come back at once, before anything is deployed
    code, body = await _error(jp_fetch, "deploy", {"path": "broken.ipynb", "namespace": "ml"})
    assert code == 400 and body["problems"]
    code, body = await _error(jp_fetch, "deploy", {"path": "work/iris.ipynb"})
    assert code == 400 and "namespace" in body["problems"][0]["message"]
    code, body = await _error(jp_fetch, "deploy", {"path": "work/iris.ipynb", "namespace": "ml",
                                                   "image": "--help"})
    assert code == 400 and "'image' must not start with '-'" in body["message"]
    assert scripted_deploy["commands"] == []

    # a stage fails: which one, its reason on its row with its cell, the rest skipped
    scripted_deploy["how"] = "fails"
    scripted_deploy["release"].touch()
    response = await _post(jp_fetch, "deploy", {"path": "work/iris.ipynb", "namespace": "ml"})
    final = await _wait_deploy(jp_fetch, "work/iris.ipynb", json.loads(response.body)["id"])
    assert final["state"] == "failed" and final["error"] == "stage 'train' failed"
    train, serve = final["stages"]
    assert (train["state"], train["cell"]) == ("failed", 4)  # "Go to cell 5"
    assert train["message"].endswith("ValueError: bad")
    assert (serve["state"], serve["message"]) == ("skipped", "an upstream stage failed")
    assert final["problems"] == [] and final["exit_code"] == 1

    # bad input found by the deploy process: its problem with its cell; nothing started
    scripted_deploy["how"] = "refused"
    response = await _post(jp_fetch, "deploy", {"path": "work/iris.ipynb", "namespace": "ml",
                                                "force": True})
    final = await _wait_deploy(jp_fetch, "work/iris.ipynb", json.loads(response.body)["id"])
    assert final["error"] == "stage 'train': no such Secret"
    assert [(p["message"], p["position"]) for p in final["problems"]] == [("no such Secret", 5)]
    assert [(s["state"], s["message"]) for s in final["stages"]] == [
        ("failed", "stopped: the deploy ended"), ("skipped", "not started: the deploy ended")]

    # the process is killed mid-way: failed, the running stage stopped
    scripted_deploy["how"] = "killed"
    response = await _post(jp_fetch, "deploy", {"path": "work/iris-pipeline",
                                                "namespace": "ml"})
    first = json.loads(response.body)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    from nb2prod.jupyter import launches

    folder = iris.parent / "iris-pipeline" / launches.LAUNCH_DIR / first["id"]
    while "run r1" not in (folder / "output.log").read_text():
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    os.killpg(json.loads((folder / "launch.json").read_text())["runner"]["pid"], signal.SIGKILL)
    final = await _wait_deploy(jp_fetch, "work/iris-pipeline", first["id"])
    assert final["state"] == "failed"
    # (reaped by the server: exit code -9; a zombie not reaped yet: "its process is gone")
    assert re.match(r"the deploy ended without a result \((exit code -9|its process is gone)\)"
                    r": run r1: 1 batch stage", final["error"]), final
    # the cluster was asked for the run's Job states (here: no kubeconfig, and it says so)
    assert "cannot ask the cluster: no Kubernetes configuration found" in final["error"]
    assert final["stages"][0]["state"] == "failed"
    assert final["stages"][0]["message"] == "stopped: the deploy ended"

    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("nb2prod", "deploy", "00000000", params={"path": "work/iris.ipynb"})
    assert info.value.code == 404
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("nb2prod", "deploy", first["id"], params={"path": "../elsewhere"})
    assert info.value.code == 403


async def test_deploy_to_kubernetes_standin(jp_fetch: Any, iris: Path, kube_standin: Any,  # noqa: F811
                                            s3_env: Any,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: the real detached `nb2prod deploy` against the stand-in.

    The deploy process inherits the server's environment (this process's), so
    the stand-in's KUBECONFIG and the S3 endpoint (moto's server) reach it.
    Credentials go to the stages through a Secret, as on a real cluster.
    """
    from nb2prod.split import split_notebook

    monkeypatch.setenv("KUBECONFIG", str(kube_standin.kubeconfig))
    pipeline = iris.parent / "iris-pipeline"
    split_notebook(iris, pipeline)
    use_secret_credentials(pipeline)
    create_secret(kube_standin, "ml", "testing")
    store = f"s3://{s3_env.make_bucket()}/artifacts"
    response = await _post(jp_fetch, "deploy", {"path": "work/iris-pipeline", "namespace": "ml",
                                                "store": store, "image": IMAGE})
    assert response.code == 202
    final = await _wait_deploy(jp_fetch, "work/iris-pipeline", json.loads(response.body)["id"],
                               timeout=240)
    assert final["state"] == "done", final
    states = {s["name"]: s["state"] for s in final["stages"]}
    assert states == {"train": "done", "(promote)": "done", "serve": "serving"}, states
    assert final["services"]["serve"]["status"] == "serving"


def _churn_on_standin(root: Path, standin: Any, s3: Any, monkeypatch: pytest.MonkeyPatch,
                      cells: list[tuple[str, list[str] | None]]) -> tuple[Path, str]:
    """The churn notebook (`cells`) split in `root` for the stand-in (the deploy process
    inherits KUBECONFIG; stages read the store credentials from a Secret); (its
    pipeline dir, a fresh s3:// store)."""
    from nb2prod.split import split_notebook
    from tests.test_browser import write_notebook

    monkeypatch.setenv("KUBECONFIG", str(standin.kubeconfig))
    pipeline = root / "churn-pipeline"
    split_notebook(write_notebook(root / "churn.ipynb", cells), pipeline)
    use_secret_credentials(pipeline)
    create_secret(standin, "ml", "testing")
    return pipeline, f"s3://{s3.make_bucket()}/artifacts"


async def test_a_killed_deploy_is_followed_in_the_standin_until_its_job_ends(
        jp_fetch: Any, jp_root_dir: Path, kube_standin: Any, s3_env: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real detached `nb2prod deploy` against the stand-in, killed (SIGKILL) while
    its train Job runs: that Job goes on in the cluster, so the deploy reads `running`
    (followed there, train running as the cluster has it) until the Job completes; then
    it ended: train done, nothing after it started (no deploy left to start it)."""
    from nb2prod.jupyter import launches
    from tests.test_browser_deploy import CELLS, _Snapshot

    pipeline, store = _churn_on_standin(jp_root_dir, kube_standin, s3_env, monkeypatch, CELLS)
    gate = _Snapshot()  # training waits until it is published
    record: dict[str, Any] = {}
    try:
        first = json.loads((await _post(jp_fetch, "deploy", {
            "path": "churn-pipeline", "namespace": "ml", "store": store, "image": IMAGE,
            "params": {"snapshot_url": gate.url}})).body)
        folder = pipeline / launches.LAUNCH_DIR / first["id"]
        await _deploy_status_when(jp_fetch, "churn-pipeline", first["id"],
                                  _stage_is("train", "running"), 240)  # the deploy said so
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240
        record = launches.read_json(folder / "launch.json") or {}
        os.killpg(record["runner"]["pid"], signal.SIGKILL)
        while launches.is_running(launches.read_json(folder / "launch.json") or {}):
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        status = json.loads((await jp_fetch("nb2prod", "deploy", first["id"],
                                            params={"path": "churn-pipeline"})).body)
        assert status["state"] == "running", status  # its Job still runs: followed
        assert "its Jobs still run in the cluster: followed there" in status["following"]
        rows = {s["name"]: (s["state"], s["message"]) for s in status["stages"]}
        assert rows["train"] == ("running", "as the cluster has it"), rows
        assert rows["api"] == ("skipped", "not started: the deploy ended"), rows
        jobs = [j for j in kube_standin.store.scan("jobs", "ml")
                if j["metadata"]["labels"].get("app.kubernetes.io/component") == "train"]
        assert len(jobs) == 1 and not (jobs[0].get("status") or {}).get("conditions")
        gate.published.set()  # training goes on, in the cluster only
        final = await _wait_deploy(jp_fetch, "churn-pipeline", first["id"], timeout=240)
    finally:
        gate.close()
        if record and launches.is_running(record):
            os.killpg(record["runner"]["pid"], signal.SIGKILL)
    assert final["state"] == "failed" and final["following"] is None, final
    assert final["error"].startswith("the deploy ended without a result (exit code -9)")
    rows = {s["name"]: (s["state"], s["message"]) for s in final["stages"]}
    assert rows["train"] == ("done", "as the cluster has it"), rows
    assert rows["api"] == ("skipped", "not started: the deploy ended"), rows
    assert launches.read_json(folder / "cluster.json")["final"] is True


@pytest.mark.parametrize("first_stage", [False, True], ids=["after-prepare", "first-stage"])
async def test_a_deploy_stopped_from_the_panel_reads_stopped_in_nb2prod_status(
        jp_fetch: Any, jp_root_dir: Path, kube_standin: Any, s3_env: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, first_stage: bool) -> None:
    """The real deploy against the stand-in, stopped from the panel while train is held
    (after a finished `prepare` stage, or as the first stage: then no other Job shows the
    run): the train Job is suspended (its pod ends) and keeps the stop note, the deploy
    reads stopped, and `nb2prod status` shows the run as stopped, by whom and when, not as
    incomplete or failed, and not missing."""
    from nb2prod.jupyter import launches
    from tests.test_browser_deploy import CELLS, _Snapshot

    cells = CELLS if first_stage else [
        *CELLS[:3], ('print("snapshot checks passed")', ["stage:prepare"]), *CELLS[3:]]
    pipeline, store = _churn_on_standin(jp_root_dir, kube_standin, s3_env, monkeypatch, cells)
    gate = _Snapshot()  # never published: train waits until stopped
    record: dict[str, Any] = {}
    try:
        first = json.loads((await _post(jp_fetch, "deploy", {
            "path": "churn-pipeline", "namespace": "ml", "store": store, "image": IMAGE,
            "params": {"snapshot_url": gate.url}})).body)
        record = launches.read_json(pipeline / launches.LAUNCH_DIR / first["id"]
                                    / "launch.json") or {}
        held = [("train", "running")] if first_stage else [("prepare", "done"),
                                                             ("train", "running")]
        for stage, state in held:  # train held
            await _deploy_status_when(jp_fetch, "churn-pipeline", first["id"],
                                      _stage_is(stage, state), 240)
        await _post(jp_fetch, f"deploy/{first['id']}/stop", {"path": "churn-pipeline"})
        final = await _wait_deploy(jp_fetch, "churn-pipeline", first["id"], timeout=240)
    finally:
        gate.close()
        if record and launches.is_running(record):
            os.killpg(record["runner"]["pid"], signal.SIGKILL)
    assert final["state"] == "stopped" and final["error"] is None, final
    assert "its running Jobs were suspended and kept" in final["output"], final["output"]
    note = final["stopped"]
    rows = {s["name"]: s["state"] for s in final["stages"]}
    assert rows["train"] == "stopped" and rows.get("prepare", "done") == "done", rows
    jobs = {j["metadata"]["labels"].get("app.kubernetes.io/component"): j
            for j in kube_standin.store.scan("jobs", "ml")}
    assert jobs["train"]["spec"]["suspend"] is True, jobs["train"]  # kept, stopped
    assert json.loads(jobs["train"]["metadata"]["annotations"]["nb2prod.io/stopped"]) == note
    assert ("prepare" in jobs) != first_stage
    deadline = time.monotonic() + 120  # the suspended Job's pod ends
    while any(p["metadata"]["labels"].get("job-name") == jobs["train"]["metadata"]["name"]
              for p in kube_standin.store.scan("pods", "ml")):
        assert time.monotonic() < deadline, "the stopped Job's pod is still there"
        await asyncio.sleep(0.2)
    shown = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "nb2prod", "status", str(pipeline), "-n", "ml"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if final["run_id"] in line)
    assert re.search(rf"{final['run_id']} +│ stopped +│", row), shown.stdout
    assert "Stopped" in row and "incomplete" not in row, shown.stdout
    assert f"run {final['run_id']}: {stopped_text(note)}" in shown.stdout, shown.stdout


def test_an_exited_unreaped_launch_is_not_running() -> None:
    """A deploy orphaned by a server restart, where PID 1 does not reap, is a zombie
    once it exits: it must read as ended, not as running forever."""
    import subprocess

    from nb2prod.jupyter import launches
    from nb2prod.runners.local import runner_identity

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        record = {"runner": runner_identity(proc.pid)}
        deadline = asyncio.get_event_loop_policy().get_event_loop().time() + 60
        while launches.is_running(record):  # a zombie as soon as it exits: not waited for
            assert asyncio.get_event_loop_policy().get_event_loop().time() < deadline
        assert proc.poll() is not None
    finally:
        proc.wait()


def test_a_killed_deploy_is_followed_in_the_cluster_until_its_run_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No result in its event log, its process gone: the cluster's Job states of its run
    are asked for while a Job still runs there (the deploy reads `running`, followed
    there; a stage without a Job will not start: skipped), then once more when they
    ended, and that final answer is kept beside the record and never asked again."""
    from nb2prod.jupyter import deploys, launches
    from nb2prod.progress import EventLog

    folder = tmp_path / "launch"
    folder.mkdir()
    log = EventLog(folder / "events.jsonl")
    for stage in ("prepare", "train"):
        log({"stage": stage, "state": "running", "message": "", "elapsed": 0, "run_id": "r7"})
    record = {"id": "launch", "kind": "deploy", "namespace": "ml", "context": "dev",
              "pipeline_dir": str(tmp_path), "exit_code": -9, "started": 1.0,
              "stages": [{"name": n, "type": "batch"} for n in ("prepare", "train", "serve")]}
    asked: list[tuple[Any, ...]] = []
    cluster_has = {"prepare": "done", "train": "running"}

    def cluster(pipeline_dir: Path, namespace: str, context: str | None,
                run_id: str) -> dict[str, str]:
        asked.append((pipeline_dir, namespace, context, run_id))
        return dict(cluster_has)

    monkeypatch.setattr(deploys, "_cluster_states", cluster)
    monkeypatch.setattr(deploys, "FOLLOW_SECONDS", 0.0)  # ask on every status
    for _ in range(2):
        status = deploys.deploy_status(folder, record)
        assert status["state"] == "running" and status["run_id"] == "r7"
        assert status["following"].startswith("the deploy ended without a result (exit "
                                              "code -9)")
        assert status["following"].endswith("its Jobs still run in the cluster: followed there")
        assert status["error"] is None
        assert [(s["name"], s["state"], s["message"]) for s in status["stages"]] == [
            ("prepare", "done", "as the cluster has it"),
            ("train", "running", "as the cluster has it"),
            ("serve", "skipped", "not started: the deploy ended")]
    assert len(asked) == 2
    cluster_has["train"] = "done"  # its Job completed in the cluster
    for _ in range(2):
        status = deploys.deploy_status(folder, record)
        assert status["state"] == "failed" and status["following"] is None
        assert status["error"].startswith("the deploy ended without a result (exit code -9)")
        assert [(s["name"], s["state"], s["message"]) for s in status["stages"]] == [
            ("prepare", "done", "as the cluster has it"),
            ("train", "done", "as the cluster has it"),
            ("serve", "skipped", "not started: the deploy ended")]
    assert asked == [(tmp_path, "ml", "dev", "r7")] * 3  # the final answer is kept
    kept = launches.read_json(folder / "cluster.json")
    assert kept is not None and kept["final"] is True
    assert kept["states"] == {"prepare": "done", "train": "done"}

    # followed, then the cluster stops answering: still followed (it may come back),
    # until it has been silent for FOLLOW_GIVE_UP_SECONDS: then ended, saying why
    (folder / "cluster.json").unlink()
    cluster_has["train"] = "running"
    assert deploys.deploy_status(folder, record)["state"] == "running"

    def silent(*args: Any) -> dict[str, str]:
        raise OSError("connection refused")

    monkeypatch.setattr(deploys, "_cluster_states", silent)
    status = deploys.deploy_status(folder, record)
    assert status["state"] == "running" and status["following"], status
    assert status["error"] == "cannot ask the cluster: connection refused"
    assert [s["state"] for s in status["stages"]] == ["done", "running", "skipped"]
    monkeypatch.setattr(deploys, "FOLLOW_GIVE_UP_SECONDS", 0.0)
    status = deploys.deploy_status(folder, record)
    assert status["state"] == "failed" and status["following"] is None, status
    assert status["error"].endswith("; cannot ask the cluster: connection refused")
    assert [s["state"] for s in status["stages"]] == ["done", "failed", "skipped"]


async def test_browser_posts_need_the_xsrf_token(jp_fetch: Any, jp_serverapp: Any,
                                                 iris: Path) -> None:
    """A logged-in browser session (cookie, no token header) must send the XSRF token:
    another site's page cannot make the server split, deploy or run."""
    from http.cookies import SimpleCookie
    from urllib.parse import urlencode

    def cookies(response: Any, jar: SimpleCookie) -> SimpleCookie:
        for header in response.headers.get_list("Set-Cookie"):
            jar.load(header)
        return jar

    jar = cookies(await jp_fetch("login", headers={"Authorization": ""}), SimpleCookie())
    xsrf = jar["_xsrf"].value
    token = jp_serverapp.identity_provider.token
    login = await jp_fetch("login", method="POST", follow_redirects=False, raise_error=False,
                           headers={"Authorization": "",
                                    "Cookie": "; ".join(f"{k}={v.value}" for k, v in jar.items())},
                           body=urlencode({"_xsrf": xsrf, "password": token}))
    assert login.code == 302, login.code
    session = "; ".join(f"{k}={v.value}" for k, v in cookies(login, jar).items())
    body = {"path": "work/iris.ipynb", "namespace": "ml"}
    for endpoint in ("split", "deploy", "run", "run/20260101t000000-abc/stop", "roles"):
        code, _ = await _error(jp_fetch, endpoint, {**body, "content": {"cells": []}},
                               headers={"Authorization": "", "Cookie": session})
        assert code == 403, endpoint
    assert not (iris.parent / "iris-pipeline").exists()
    # the same session with the token: accepted (here: the deploy's own 400, no namespace)
    code, answer = await _error(jp_fetch, "deploy", {"path": "work/iris.ipynb"},
                                headers={"Authorization": "", "Cookie": session,
                                         "X-XSRFToken": xsrf})
    assert code == 400 and "'namespace' is required" in answer["message"]
