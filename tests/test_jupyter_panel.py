"""The Pipeline panel's REST API: pipeline info, local runs, run list, run files.

A real jupyter_server in-process (pytest-jupyter) with the extension enabled,
and a real `nb2prod run` process started by the run handler (papermill, a real
kernel): the panel in the browser sees exactly these answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from nb2prod.runners.interrupts import stopped_text
from tests.test_deploy import IRIS_ANSWER, IRIS_REQUEST, OPENER
from tests.test_jupyter_handlers import (  # noqa: F401 - fixtures, used by name
    IRIS,
    REPO,
    _error,
    _notebook,
    _post,
    broken,
    iris,
    jp_server_config,
)

pytest_plugins = ["pytest_jupyter.jupyter_server"]

WINE = REPO / "example_notebooks" / "wine_parallel.ipynb"
#: A guard against a hung run, not a timing margin: runs end by themselves.
RUN_DEADLINE = 900


async def _get(jp_fetch: Any, endpoint: str, **query: str) -> dict[str, Any]:
    response = await jp_fetch("nb2prod", endpoint, params=query)
    assert response.code == 200
    return json.loads(response.body)


async def _get_error(jp_fetch: Any, *parts: str, **kwargs: Any) -> int:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*parts, **kwargs)
    return info.value.code


async def _wait_run(jp_fetch: Any, path: str) -> dict[str, Any]:
    """GET /nb2prod/runs until the newest launch has exited and this server's reaper has
    recorded its exit code (the process can be seen gone a moment before); its answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_DEADLINE
    while True:
        answer = await _get(jp_fetch, "runs", path=path)
        if answer["launches"] and answer["launches"][0]["state"] == "exited" \
                and answer["launches"][0].get("exit_code") is not None:
            return answer
        assert loop.time() < deadline, answer["launches"][:1]
        await asyncio.sleep(0.2)


# -- pipeline info ----------------------------------------------------------------------
async def test_pipeline_info_of_iris(jp_fetch: Any, iris: Path) -> None:  # noqa: F811
    answer = await _get(jp_fetch, "pipeline", path="work/iris.ipynb")
    assert answer["notebook"] == "work/iris.ipynb"
    assert answer["pipeline_dir"] == "work/iris-pipeline" and answer["split"] is False
    assert answer["problems"] == []
    train, serve = answer["stages"]
    assert (train["name"], train["type"], serve["type"]) == ("train", "batch", "service")
    assert train["positions"] == [i + 1 for i in train["cells"]]
    assert "model" in train["outputs"] and serve["inputs"]["model"] == "train"
    assert any(r.startswith("scikit-learn==") for r in train["requirements"])
    assert isinstance(train["resources"], dict)
    graph = answer["graph"]
    assert [(n["name"], n["kind"], n["state"]) for n in graph["nodes"]] == [
        ("train", "batch", None), ("serve", "service", None)]
    assert [(e["source"], e["target"]) for e in graph["edges"]] == [("train", "serve")]
    assert "model" in graph["edges"][0]["names"]
    assert sorted(p.name for p in iris.parent.iterdir()) == ["iris.ipynb"]  # wrote nothing


async def test_pipeline_info_of_parallel_branches(jp_fetch: Any, jp_root_dir: Path) -> None:
    shutil.copy(WINE, jp_root_dir / "wine.ipynb")
    graph = (await _get(jp_fetch, "pipeline", path="wine.ipynb"))["graph"]
    names = [n["name"] for n in graph["nodes"]]
    assert len(names) == len(set(names)) >= 4
    sources: dict[str, list[str]] = {}
    for edge in graph["edges"]:
        sources.setdefault(edge["source"], []).append(edge["target"])
    assert any(len(targets) >= 2 for targets in sources.values()), graph["edges"]


async def test_pipeline_problems_are_listed_with_positions(jp_fetch: Any, broken: Path) -> None:  # noqa: F811
    answer = await _get(jp_fetch, "pipeline", path="broken.ipynb")
    assert answer["stages"] == [] and answer["graph"] is None
    problems = answer["problems"]
    assert problems and all(p["position"] == p["cell"] + 1 for p in problems)
    bad = next(p for p in problems if "Bad Name" in p["message"])
    assert bad["cell"] == 1 and "cell 2 (" in bad["text"]


async def test_roles_of_unsaved_content(jp_fetch: Any, jp_root_dir: Path) -> None:
    """POST roles analyses the content sent, not the file: an edit that makes an
    untagged cell imports-only (or a definition after an `imports` cell) gives it a
    role at once; the file, its folder and everything else stay as they were."""
    notebook = _notebook(jp_root_dir / "edit.ipynb", [
        ("scratch = 1", []),
        ("import math", ["imports"]),
        ("area = math.pi", []),
        ("a = area * 2", ["stage:prepare"]),
    ])
    saved, mtime = notebook.read_bytes(), notebook.stat().st_mtime_ns
    on_disk = await _get(jp_fetch, "pipeline", path="edit.ipynb")
    assert on_disk["inferred_roles"] == []
    content = json.loads(saved)
    content["cells"][0]["source"] = "import os"  # typed, not saved
    content["cells"][2]["source"] = "def area(r):\n    return math.pi * r * r"
    content["cells"][3]["source"] = "a = area(2)\nhome = os.sep"
    answer = json.loads((await _post(jp_fetch, "roles", {"path": "edit.ipynb",
                                                         "content": content})).body)
    assert answer["problems"] == []
    assert [(r["cell"], r["id"], r["role"], r["scope"]) for r in answer["inferred_roles"]] == [
        (0, content["cells"][0]["id"], "imports", "where used"),
        (2, content["cells"][2]["id"], "imports", "every stage")]
    # mid-edit, the content cannot be analysed: its problems, no roles, still a 200
    content["cells"][3]["source"] = "a = area(2)\nb = undefined_name"
    answer = json.loads((await _post(jp_fetch, "roles", {"path": "edit.ipynb",
                                                         "content": content})).body)
    assert answer["inferred_roles"] == [] and answer["problems"], answer
    assert "undefined_name" in answer["problems"][0]["message"]
    assert answer["problems"][0]["cell"] == 3
    # not a notebook's JSON: one line, 400
    for bad in (None, "cells", [], {"cells": "x"}):
        code, body = await _error(jp_fetch, "roles", {"path": "edit.ipynb", "content": bad})
        assert code == 400 and body["message"].endswith(
            "'content' must be the notebook's JSON (an object with 'cells')"), body
    answer = json.loads((await _post(jp_fetch, "roles", {"path": "edit.ipynb", "content": {
        "cells": [{"cell_type": "nonsense"}], "nbformat": 4, "nbformat_minor": 5,
        "metadata": {}}})).body)  # nbformat refuses it: a problem, like a bad cell
    assert answer["inferred_roles"] == []
    assert answer["problems"][0]["message"].startswith("not a valid notebook"), answer
    code, body = await _error(jp_fetch, "roles", {"path": "missing.ipynb", "content": content})
    assert code == 404
    assert notebook.read_bytes() == saved and notebook.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in jp_root_dir.iterdir()) == ["edit.ipynb"]  # wrote nothing


async def test_pipeline_info_names_the_roles_of_untagged_cells(jp_fetch: Any,
                                                                jp_root_dir: Path) -> None:
    """An untagged imports cell before the first stage and an untagged definition after
    an `imports` cell have roles the markers show; cells in a stage and plain cells
    before the first stage do not."""
    notebook = _notebook(jp_root_dir / "roles.ipynb", [
        ("import os", []),
        ("scratch = 1", []),
        ("import math", ["imports"]),
        ("def area(r):\n    return math.pi * r * r", []),
        ("a = area(2)\nhome = os.sep", ["stage:prepare"]),
        ("b = a + 1", []),
    ])
    ids = [c["id"] for c in json.loads(notebook.read_text())["cells"]]
    answer = await _get(jp_fetch, "pipeline", path="roles.ipynb")
    assert answer["problems"] == []
    roles = answer["inferred_roles"]
    assert [(r["cell"], r["position"], r["id"], r["role"], r["scope"]) for r in roles] == [
        (0, 1, ids[0], "imports", "where used"), (3, 4, ids[3], "imports", "every stage")]
    assert "before the first stage" in roles[0]["why"]
    assert "joins the imports cell above" in roles[1]["why"]
    shutil.copy(IRIS, jp_root_dir / "iris.ipynb")
    assert (await _get(jp_fetch, "pipeline", path="iris.ipynb"))["inferred_roles"] == []


# -- a local run from the panel ----------------------------------------------------------
async def test_run_locally_then_list_runs_and_open_report(jp_fetch: Any, iris: Path) -> None:  # noqa: F811
    response = await _post(jp_fetch, "run", {"path": "work/iris.ipynb"})
    assert response.code == 202
    started = json.loads(response.body)
    assert started["pipeline_dir"] == "work/iris-pipeline"
    assert started["launch"]["state"] == "running"
    # (a second run while this one runs is refused: checked on a held run, below)

    answer = await _wait_run(jp_fetch, "work/iris.ipynb")
    launch = answer["launches"][0]
    assert launch["exit_code"] == 0, launch["output"]
    run = answer["runs"][0]
    assert run["run_id"] == launch["run_id"] and run["status"] == "succeeded"
    assert run["promoted"] is True and run["latest"] is True
    assert isinstance(run["metrics"]["train"]["accuracy"], float)
    train = run["stages"]["train"]
    assert train["status"] == "done" and train["seconds"] > 0
    assert "serve" not in run["stages"]  # --no-serve: batch stages only
    states = {n["name"]: n["state"] for n in answer["graph"]["nodes"]}
    assert answer["graph"]["run_id"] == run["run_id"] and states["train"] == "done"

    report = await jp_fetch("nb2prod", "file", params={"path": train["files"]["html"]})
    assert report.headers["Content-Type"].startswith("text/html")
    assert "sandbox allow-scripts" in report.headers["Content-Security-Policy"]
    assert b"accuracy" in report.body
    log = await jp_fetch("nb2prod", "file", params={"path": train["files"]["log"]})
    assert log.headers["Content-Type"].startswith("text/plain")
    executed = await jp_fetch("nb2prod", "file", params={"path": train["files"]["notebook"]})
    assert json.loads(executed.body)["cells"]
    console = await jp_fetch("nb2prod", "file", params={"path": launch["log"]})
    assert run["run_id"].encode() in console.body

    # a second run reuses the unchanged stage: `cached` in its record
    await _post(jp_fetch, "run", {"path": "work/iris-pipeline"})
    again = await _wait_run(jp_fetch, "work/iris-pipeline")
    assert len(again["runs"]) == 2
    assert again["runs"][0]["stages"]["train"]["cached_from"] == run["run_id"]
    assert again["runs"][0]["stages"]["train"]["files"]["html"]


async def test_run_and_serve_refuses_a_bad_or_taken_port(jp_fetch: Any, iris: Path) -> None:  # noqa: F811
    """The Port field: not an integer 1-65535 is a 400 before anything is split; a port
    something listens on is the CLI's one-line message (naming the field) before the
    run starts; neither launches anything."""
    for bad in ("abc", "0", "65536", 70000, -1, 8080.5, True, "80 80", [8080]):
        code, body = await _error(jp_fetch, "run", {"path": "work/iris.ipynb", "serve": True,
                                                    "port": bad})
        assert code == 400, bad
        assert body["message"] == ("'port' must be a TCP port, an integer from 1 to 65535 "
                                   f"(got {json.dumps(bad)})"), body
        assert "Traceback" not in body["message"]
    assert not (iris.parent / "iris-pipeline").exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, body = await _error(jp_fetch, "run", {"path": "work/iris.ipynb", "serve": True,
                                                    "port": str(port)})
    assert code == 400
    assert body["message"] == (
        f"port {port} on 127.0.0.1 is already in use (service stage 'serve', from the Port "
        "field); stop what uses it or choose another with the Port field"), body
    assert not (iris.parent / "iris-pipeline" / ".nb2prod" / "panel").exists()  # no launch


async def test_a_served_run_is_stopped_from_the_panel(jp_fetch: Any, iris: Path) -> None:  # noqa: F811
    with socket.socket() as probe:  # a port free now: the run serves on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await _post(jp_fetch, "run", {"path": "work/iris.ipynb", "serve": True, "port": port})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_DEADLINE
    while True:  # serving: the batch run finished and the launch keeps running
        answer = await _get(jp_fetch, "runs", path="work/iris.ipynb")
        launch = answer["launches"][0]
        assert launch["state"] == "running", launch["output"]
        if answer["runs"] and answer["runs"][0]["status"] == "succeeded" \
                and launch["services"]:
            break
        assert loop.time() < deadline, launch
        await asyncio.sleep(0.2)
    record = json.loads((iris.parent / "iris-pipeline" / ".nb2prod" / "panel" / launch["id"]
                         / "launch.json").read_text())
    try:
        # the service's URL and sample curl, as the panel shows them; a real prediction
        assert launch["serve"] is True
        (service,) = launch["services"]
        assert service["name"] == "serve" and service["run_id"] == answer["runs"][0]["run_id"]
        assert service["url"] == f"http://127.0.0.1:{port}/predict", service
        assert record["command"][-2:] == ["--port", str(port)]
        assert service["curl"].startswith(f"curl -s -X POST {service['url']} ")
        request = urllib.request.Request(service["url"], data=json.dumps(IRIS_REQUEST).encode(),
                                         headers={"Content-Type": "application/json"})
        with OPENER.open(request, timeout=30) as response:
            assert json.loads(response.read()) == IRIS_ANSWER
        stopped = await _post(jp_fetch, f"run/{launch['id']}/stop",
                              {"path": "work/iris.ipynb"})
        assert json.loads(stopped.body)["stopping"] is True
        answer = await _wait_run(jp_fetch, "work/iris.ipynb")
        assert answer["launches"][0]["exit_code"] is not None
    finally:
        if answer["launches"][0]["state"] != "exited":
            os.killpg(record["runner"]["pid"], signal.SIGKILL)


async def test_a_run_stopped_from_the_panel_reads_stopped(jp_fetch: Any,
                                                         jp_root_dir: Path) -> None:
    """Stop on a run held in training: the run is `stopped` (by whom, when) in run.json,
    in the panel's run list and graph and in `nb2prod runs`: not failed, not interrupted."""
    hold = jp_root_dir / "hold"
    hold.write_text("")
    _notebook(jp_root_dir / "held.ipynb", [
        (f"hold = {str(hold)!r}", ["parameters"]),
        ("import os\nimport time", ["imports"]),
        ("while os.path.exists(hold):\n    time.sleep(0.05)\nx = 1", ["stage:train"]),
        ("y = x + 1", ["stage:report"]),
    ])
    launch = json.loads((await _post(jp_fetch, "run", {"path": "held.ipynb"})).body)["launch"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_DEADLINE
    record = json.loads((jp_root_dir / "held-pipeline" / ".nb2prod" / "panel" / launch["id"]
                         / "launch.json").read_text())
    try:
        while True:  # the train stage runs (and waits for `hold` to go)
            answer = await _get(jp_fetch, "runs", path="held.ipynb")
            if answer["runs"] and answer["runs"][0]["stages"].get("train", {}).get(
                    "status") == "running":
                break
            assert answer["launches"][0]["state"] == "running", answer["launches"][0]["output"]
            assert loop.time() < deadline, answer
            await asyncio.sleep(0.1)
        # A second run while this one runs (held: for certain) is refused.
        code, body = await _error(jp_fetch, "run", {"path": "held.ipynb"})
        assert code == 409 and "still running" in body["problems"][0]["message"]
        await _post(jp_fetch, f"run/{launch['id']}/stop", {"path": "held.ipynb"})
        answer = await _wait_run(jp_fetch, "held.ipynb")
    finally:
        from nb2prod.jupyter import launches

        if launches.is_running(record):
            os.killpg(record["runner"]["pid"], signal.SIGKILL)
    assert hold.exists()  # it was stopped in training, not released
    note = answer["launches"][0]["stopped"]
    assert note["by"] and note["via"] == "JupyterLab", note
    (run,) = answer["runs"]
    assert run["status"] == "stopped", run
    assert run["reason"] == stopped_text(note)
    assert run["reason"].startswith(f"stopped by {note['by']} (JupyterLab) at ")
    assert run["stages"]["train"]["status"] == "stopped", run["stages"]
    assert run["stages"]["train"]["message"] == stopped_text(note)
    recorded = next((jp_root_dir / "held-pipeline").glob(f"**/runs/{run['run_id']}/run.json"))
    train = json.loads(recorded.read_text())["stages"]["train"]
    assert (train.get("ename"), train.get("evalue")) == ("Stopped", stopped_text(note)), train
    assert run["stages"].get("report", {}).get("status") in (None, "waiting", "skipped")
    nodes = {n["name"]: n["state"] for n in answer["graph"]["nodes"]}
    assert nodes["train"] == "stopped", nodes
    listed = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "nb2prod", "runs",
                         str(jp_root_dir / "held-pipeline")], capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "250"}, check=True)
    row = next(line for line in listed.stdout.splitlines() if run["run_id"] in line)
    assert stopped_text(note) in row and "interrupted" not in row, listed.stdout


# -- security ----------------------------------------------------------------------------
async def test_panel_endpoints_need_authentication(jp_fetch: Any, iris: Path) -> None:  # noqa: F811
    for endpoint in ("pipeline", "runs"):
        code = await _get_error(jp_fetch, "nb2prod", endpoint, params={"path": "work/iris.ipynb"},
                                headers={"Authorization": ""})
        assert code == 403, endpoint
    # a page, not an API: without a login it sends the browser to the login page
    code = await _get_error(jp_fetch, "nb2prod", "file", params={"path": "work/runs/r/s/log.txt"},
                            headers={"Authorization": ""}, follow_redirects=False)
    assert code == 302
    for endpoint in ("run", "run/20260101t000000-abc/stop", "roles"):
        code, _ = await _error(jp_fetch, endpoint, {"path": "work/iris.ipynb",
                                                    "content": {"cells": []}},
                               headers={"Authorization": ""})
        assert code == 403, endpoint
    assert not (iris.parent / "iris-pipeline").exists()


async def test_panel_paths_outside_root_are_403(jp_fetch: Any, iris: Path, jp_root_dir: Path,  # noqa: F811
                                                tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "p" / "runs" / "r1" / "train").mkdir(parents=True)
    (outside / "p" / "runs" / "r1" / "train" / "log.txt").write_text("secret")
    shutil.copy(IRIS, outside / "iris.ipynb")
    (jp_root_dir / "link").symlink_to(outside, target_is_directory=True)
    for endpoint in ("pipeline", "runs"):
        for path in ("../outside/iris.ipynb", "link/iris.ipynb"):
            code = await _get_error(jp_fetch, "nb2prod", endpoint, params={"path": path})
            assert code == 403, (endpoint, path)
    code, answer = await _error(jp_fetch, "run", {"path": "link/iris.ipynb"})
    assert code == 403 and "outside the server's root" in answer["problems"][0]["message"]
    content = json.loads(IRIS.read_text())
    for path in ("../outside/iris.ipynb", "link/iris.ipynb", "/../outside/iris.ipynb"):
        code, answer = await _error(jp_fetch, "roles", {"path": path, "content": content})
        assert code == 403 and "outside the server's root" in answer["message"], path
    for path in ("link/p/runs/r1/train/log.txt", "../outside/p/runs/r1/train/log.txt"):
        assert await _get_error(jp_fetch, "nb2prod", "file", params={"path": path}) == 403
    assert sorted(p.name for p in outside.iterdir()) == ["iris.ipynb", "p"]


async def test_file_handler_serves_only_run_files(jp_fetch: Any, iris: Path,  # noqa: F811
                                                  jp_root_dir: Path) -> None:
    run_dir = jp_root_dir / "work" / "runs" / "r1" / "train"
    run_dir.mkdir(parents=True)
    (run_dir / "log.txt").write_text("stage log")
    (run_dir / "secrets.env").write_text("TOKEN=x")
    shown = await jp_fetch("nb2prod", "file", params={"path": "work/runs/r1/train/log.txt"})
    assert shown.body == b"stage log"
    for path in ("work/iris.ipynb", "work/runs/r1/train/secrets.env"):
        assert await _get_error(jp_fetch, "nb2prod", "file", params={"path": path}) == 403
    assert await _get_error(jp_fetch, "nb2prod", "file",
                            params={"path": "work/runs/r1/train/none.txt"}) == 404


def test_running_stages_show_their_time_so_far() -> None:
    """run.json has a stage's seconds once it ends; while it runs, the panel counts from
    its start (the run table and the DAG node)."""
    import time

    from nb2prod.jupyter.runs import live_seconds, run_summary

    started = time.time() - 5.0
    record = {"run_id": "r1", "status": "running", "started": started, "stages": {
        "train": {"status": "running", "started": started, "seconds": 0.0},
        "serve": {"status": "waiting", "seconds": 0.0}}}
    assert set(live_seconds(record)) == {"train"} and live_seconds(record)["train"] >= 5.0
    assert run_summary(record, {})["stages"]["train"]["seconds"] >= 5.0
    assert live_seconds({**record, "status": "succeeded"}) == {}


def test_the_panel_gets_each_service_stages_port(tmp_path: Path) -> None:
    """The Port field's placeholder: the PORT a split writes before there is a pipeline,
    then the stage's config.ini PORT (the user's edit) once split."""
    from nb2prod.jupyter.panel import panel_answer
    from nb2prod.split import split_notebook
    from tests.test_manifests import set_ini

    notebook = tmp_path / "iris.ipynb"
    shutil.copy(Path(__file__).resolve().parent.parent / "example_notebooks" / "iris.ipynb",
                notebook)
    assert panel_answer(notebook, str)["service_ports"] == {"serve": 8080}
    split_notebook(notebook, tmp_path / "iris-pipeline")
    set_ini(tmp_path / "iris-pipeline" / "stage-2-serve" / "config.ini", "service", "PORT",
            "9123")
    assert panel_answer(notebook, str)["service_ports"] == {"serve": 9123}
