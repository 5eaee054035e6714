"""Runs and deploys from JupyterLab outlive the tab and the server, in a real browser.

"Deploy…" on a notebook starts a detached `nb2prod deploy` (the real command,
against the stand-in's API server; pods are local processes; the store is
moto's S3 server, reached by the pods with credentials from a Secret).  The
train stage waits until a snapshot URL (a notebook parameter) answers 200 (a
server of the test's, 503 until released), so the test can,
while the deploy is provably in progress: close the tab, stop the jupyter
server, check the deploy process still runs, start a new server, reopen the
notebook and see the panel reattach to the same deploy with its live stage
states; then release the hold and follow it to the end (every stage
succeeded, the service serving, a prediction through the API server's
service proxy).  A second deploy whose training fails shows its reason in red;
a third, stopped from the panel, reads "stopped" (by whom) and its train Job is
gone; a fourth, whose process is killed while its Job runs, is followed in the
cluster until that Job ends.

"Run locally" (a detached `nb2prod run`) is reattached the same way: the
notebook's default `snapshot_url` holds its training while the tab closes and
the server restarts; the reopened panel shows it running, then succeeded.

Screenshots of each state: `<tmp>/shots`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.kube.fixtures import kube_standin  # noqa: F401 - a fixture, used by name
from tests.s3server import s3_env, s3_server  # noqa: F401 - fixtures, used by name
from tests.test_browser import browser_session, running_lab, write_notebook
from tests.test_browser_panel import _open, _show_panel
from tests.test_deploy import IMAGE, create_secret, predict, use_secret_credentials

pytestmark = pytest.mark.timeout(900)

#: The notebook: a churn model on synthetic data; `snapshot_url` (a parameter) makes
#: training wait until that URL answers 200, as a team waits for a data snapshot.
#: (Not a file: a pod's /tmp is its own, on a node as in the stand-in.)
CELLS: list[tuple[str, list[str] | None]] = [
    ("# Churn model\nLogistic regression on synthetic customer activity, served as `/predict`.",
     None),
    ('n_customers = 400\nseed = 7\nsnapshot_url = ""  # wait for it to answer 200 first',
     ["parameters"]),
    ("""\
import time
import urllib.request

import numpy as np
from sklearn.linear_model import LogisticRegression""", ["imports"]),
    ("""\
internal = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
while snapshot_url:
    try:
        with internal.open(snapshot_url, timeout=10):
            break
    except OSError:  # 503 until the snapshot is published
        time.sleep(0.2)
rng = np.random.default_rng(seed)
X = rng.normal(size=(n_customers, 3))
signal = X @ np.array([1.5, -2.0, 0.5]) + rng.normal(scale=0.3, size=n_customers)
y = (signal > 0).astype(int)
model = LogisticRegression().fit(X, y)
print(f"train accuracy {model.score(X, y):.3f}")""", ["stage:train"]),
    ("""\
def predict(payload):
    rows = np.asarray(payload["instances"], dtype=float)
    return {"churn": model.predict(rows).tolist()}""", ["serve:api"]),
]
PANEL_DEPLOY = ".nb2prod-DeploySection"


class _Snapshot(ThreadingHTTPServer):
    """Answers 503 until `publish()`, then 200: the gate the train stage waits on."""

    def __init__(self) -> None:
        self.published = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if server.published.is_set() else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/snapshot"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()


def _records(root: Path, kind: str = "deploy") -> list[dict[str, Any]]:
    from nb2prod.jupyter import launches

    return [record for pipeline in root.glob("*-pipeline")
            for _, record in launches.records(pipeline, kind)]


@pytest.fixture
def stop_deploys(tmp_path: Path) -> Iterator[None]:
    """Every deploy or run process the test started is gone at its end, also on failure."""
    yield
    from nb2prod.jupyter import launches

    for kind in ("deploy", "run"):
        for record in _records(tmp_path / "root", kind):
            if launches.is_running(record):
                os.killpg(record["runner"]["pid"], signal.SIGKILL)


def _fill_deploy_form(page: Any, store: str, params: str) -> None:
    dialog = page.locator(".jp-Dialog")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .nb2prod-DeployButton").click()
    form = dialog.locator(".nb2prod-DeployForm")
    form.locator("input[name=namespace]").fill("ml")
    form.locator("input[name=image]").fill(IMAGE)
    form.locator("input[name=store]").fill(store)
    form.locator("textarea[name=params]").fill(params)
    dialog.locator(".jp-Dialog-button", has_text="Deploy").click()


def _is_red(css: str) -> bool:
    r, g, b = (float(v) for v in re.findall(r"[\d.]+", css)[:3])
    return r > 150 and g < 100 and b < 100


def test_deploy_from_the_panel_survives_tab_and_server(
        tmp_path: Path, kube_standin: Any, s3_env: Any,  # noqa: F811
        stop_deploys: None) -> None:
    from playwright.sync_api import expect

    from nb2prod.jupyter.deploys import deploy_status
    from nb2prod.jupyter.launches import LAUNCH_DIR
    from nb2prod.manifests import RUN_ID_LABEL, service_name
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners.local import runner_alive
    from nb2prod.split import split_notebook

    shots = tmp_path / "shots"
    shots.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    notebook = write_notebook(root / "churn.ipynb", CELLS)
    pipeline = root / "churn-pipeline"
    split_notebook(notebook, pipeline)  # once, to name the Secret in nb2prod.ini
    use_secret_credentials(pipeline)
    create_secret(kube_standin, "ml", "testing")
    store = f"s3://{s3_env.make_bucket()}/artifacts"
    snapshot, gate, late = _Snapshot(), _Snapshot(), _Snapshot()  # gate: never published
    env = {"KUBECONFIG": str(kube_standin.kubeconfig)}

    try:
        with browser_session(shots, tmp_path / "jupyter-lab.log") as session:
            with running_lab(tmp_path, env, fake_deploy=False) as lab:
                page = session.new_page()
                _open(page, lab, "churn.ipynb")
                # 1. deploy from the toolbar: the progress dialog follows it
                _fill_deploy_form(page, store, f"snapshot_url={snapshot.url}")
                progress = page.locator(".jp-Dialog .nb2prod-DeployProgress")
                expect(progress).to_have_attribute("data-state", "running")
                expect(progress.locator('tr.nb2prod-DeployStage[data-stage="train"]')
                       ).to_have_attribute("data-state", "running")
                expect(progress.locator('tr.nb2prod-DeployStage[data-stage="api"]')
                       ).to_have_attribute("data-state", "waiting")
                deploy_id = progress.get_attribute("data-deploy")
                page.screenshot(path=str(shots / "1-dialog-running.png"))
                page.locator(".jp-Dialog-button", has_text="Close").click()
                # ...and so does the panel's Deploy section
                panel = _show_panel(page)
                section = panel.locator(PANEL_DEPLOY)
                expect(section).to_have_attribute("data-deploy", deploy_id or "?")
                expect(section.locator('tr.nb2prod-DeployStage[data-stage="train"]')
                       ).to_have_attribute("data-state", "running")
                section.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "2-panel-running.png"))
                # 2. the tab closes, the server stops: the deploy goes on
                page.close()
            (record,) = _records(root)
            assert record["id"] == deploy_id
            assert runner_alive(record["runner"]), "the deploy died with the server"
            assert not snapshot.published.is_set()  # so it is still in training

            # 3. a new server, the notebook reopened: the panel reattaches, live
            with running_lab(tmp_path, env, fake_deploy=False) as lab:
                page = session.new_page()
                _open(page, lab, "churn.ipynb")
                panel = _show_panel(page)
                section = panel.locator(PANEL_DEPLOY)
                expect(section).to_have_attribute("data-deploy", deploy_id or "?")
                expect(section).to_have_attribute("data-state", "running")
                train = section.locator('tr.nb2prod-DeployStage[data-stage="train"]')
                expect(train).to_have_attribute("data-state", "running")
                # the panel's graph is coloured by the deploy's stage states
                dag = panel.locator(".nb2prod-DagNode")
                expect(dag.and_(page.locator('[data-stage="train"]'))).to_have_attribute(
                    "data-state", "running")
                expect(dag.and_(page.locator('[data-stage="api"]'))).to_have_attribute(
                    "data-state", "waiting")
                page.screenshot(path=str(shots / "3-graph-deploy-running.png"))
                section.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "3-reattached-running.png"))
                snapshot.published.set()  # training goes on
                expect(section).to_have_attribute("data-state", "done")
                expect(train).to_have_attribute("data-state", "done")
                expect(section.locator('tr.nb2prod-DeployStage[data-stage="api"]')
                       ).to_have_attribute("data-state", "serving")
                expect(section.locator('.nb2prod-DeployService[data-service="api"]')
                       ).to_contain_text("api is serving at http://")
                expect(section.locator(".nb2prod-DeployError")).to_have_count(0)
                section.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "4-reattached-done.png"))
                service = service_name(load_pipeline(pipeline), "api")
                code, answer = predict(kube_standin, service,
                                       {"instances": [[3.0, -3.0, 0.0], [-3.0, 3.0, 0.0]]})
                assert (code, answer) == (200, {"churn": [1, 0]})

                # 4. a deploy whose training fails: the reason in red, the rest not run
                _fill_deploy_form(page, store, "n_customers=0")
                progress = page.locator(".jp-Dialog .nb2prod-DeployProgress")
                expect(progress).to_have_attribute("data-state", "failed")
                error = progress.locator(".nb2prod-DeployError")
                expect(error).to_have_text("stage 'train' failed")
                assert _is_red(error.evaluate("e => getComputedStyle(e).color"))
                failed = progress.locator('tr.nb2prod-DeployStage[data-stage="train"]')
                expect(failed).to_have_attribute("data-state", "failed")
                message = failed.locator(".nb2prod-DeployStage-message")
                expect(message).to_contain_text("ValueError: Found array with 0 sample(s)")
                assert _is_red(message.evaluate("e => getComputedStyle(e).color"))
                expect(progress.locator('tr.nb2prod-DeployStage[data-stage="api"]')
                       ).to_have_attribute("data-state", "skipped")
                page.screenshot(path=str(shots / "5-failed.png"))
                # the failed stage's cell, one click away
                message.locator(".nb2prod-GoToCell").click()
                expect(page.locator(".jp-Dialog")).to_have_count(0)
                active = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell.jp-mod-active")
                expect(active).to_contain_text("while snapshot_url:")
                expect(section).to_have_attribute("data-state", "failed")
                section.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "6-panel-failed.png"))

                # 5. a deploy held in training, stopped from the panel: its process
                # suspends its running Job and ends; the deploy reads "stopped" (by
                # whom, when), not failed; what else it created stays until `nb2prod delete`
                _fill_deploy_form(page, store, f"snapshot_url={gate.url}")
                progress = page.locator(".jp-Dialog .nb2prod-DeployProgress")
                expect(progress.locator('tr.nb2prod-DeployStage[data-stage="train"]')
                       ).to_have_attribute("data-state", "running")
                held = progress.get_attribute("data-deploy")
                page.locator(".jp-Dialog-button", has_text="Close").click()
                expect(section).to_have_attribute("data-deploy", held or "?")
                section.locator(".nb2prod-DeployStop").click()
                expect(section.locator(".nb2prod-DeployStopped")).to_contain_text(
                    "stay until `nb2prod delete`")
                expect(section).to_have_attribute("data-state", "stopped")
                expect(section.locator(".nb2prod-DeployStopped")).to_contain_text("Stopped:")
                expect(section.locator(".nb2prod-DeployProgress-summary")).to_contain_text(
                    "Deploy stopped: pipeline")
                expect(section.locator(".nb2prod-DeployStoppedBy")).to_contain_text(
                    "stopped by ")
                expect(section.locator(".nb2prod-DeployError")).to_have_count(0)
                stopped_train = section.locator('tr.nb2prod-DeployStage[data-stage="train"]')
                expect(stopped_train).to_have_attribute("data-state", "stopped")
                expect(section.locator('tr.nb2prod-DeployStage[data-stage="api"]')
                       ).to_have_attribute("data-state", "skipped")
                section.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "7-panel-stopped.png"))
                stopped = next(r for r in _records(root) if r["id"] == held)
                assert not runner_alive(stopped["runner"])
                status = deploy_status(pipeline / LAUNCH_DIR / held, stopped)
                assert status["state"] == "stopped" and status["run_id"], status
                assert status["stopped"]["via"] == "JupyterLab"
                # the train Job is suspended (its pod ends: nothing trains on) and kept
                # with the stop note, so `nb2prod status` still shows the run
                (train_job,) = [job for job in kube_standin.store.scan("jobs", "ml")
                                if job["metadata"]["labels"].get(RUN_ID_LABEL)
                                == status["run_id"] and job["metadata"]["labels"].get(
                                    "app.kubernetes.io/component") == "train"]
                assert train_job["spec"]["suspend"] is True, train_job
                deadline = time.monotonic() + 120
                while any(pod["metadata"]["labels"].get("job-name")
                          == train_job["metadata"]["name"]
                          for pod in kube_standin.store.scan("pods", "ml")):
                    assert time.monotonic() < deadline, "the stopped Job's pod runs on"
                    time.sleep(0.2)

                # 6. a deploy whose process is killed (kill -9) while its train Job runs:
                # the Job goes on in the cluster, and the panel follows it there (no
                # Stop: there is no process left to stop) until it ends
                _fill_deploy_form(page, store, f"snapshot_url={late.url}")
                progress = page.locator(".jp-Dialog .nb2prod-DeployProgress")
                expect(progress.locator('tr.nb2prod-DeployStage[data-stage="train"]')
                       ).to_have_attribute("data-state", "running")
                killed = progress.get_attribute("data-deploy")
                page.locator(".jp-Dialog-button", has_text="Close").click()
                expect(section).to_have_attribute("data-deploy", killed or "?")
                victim = next(r for r in _records(root) if r["id"] == killed)
                os.killpg(victim["runner"]["pid"], signal.SIGKILL)
                following = section.locator(".nb2prod-DeployFollowing")
                expect(following).to_contain_text(
                    "its Jobs still run in the cluster: followed there")
                expect(section).to_have_attribute("data-state", "running")
                expect(section.locator(".nb2prod-DeployStop")).to_have_count(0)
                train_row = section.locator('tr.nb2prod-DeployStage[data-stage="train"]')
                expect(train_row).to_have_attribute("data-state", "running")
                expect(train_row.locator("xpath=following-sibling::tr[1]")).to_contain_text(
                    "as the cluster has it")
                section.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "8-panel-killed-followed.png"))
                late.published.set()  # its training goes on, in the cluster only
                expect(section).to_have_attribute("data-state", "failed")
                expect(train_row).to_have_attribute("data-state", "done")
                expect(section.locator(".nb2prod-DeployError")).to_contain_text(
                    "the deploy ended without a result")
                expect(following).to_have_count(0)
                page.screenshot(path=str(shots / "9-panel-killed-ended.png"))
    finally:
        late.close()
        gate.close()
        snapshot.close()
    assert all("exit_code" in r or not runner_alive(r["runner"])
               for r in _records(root))
    for record in _records(root):
        assert "testing" not in json.dumps(record)  # the Secret's value is nowhere
    print(f"screenshots: {shots}")


def test_local_run_reattaches_after_tab_and_server(tmp_path: Path, stop_deploys: None) -> None:
    from playwright.sync_api import expect

    from nb2prod.runners.local import runner_alive

    shots = tmp_path / "shots"
    shots.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    snapshot = _Snapshot()
    cells = [(src.replace('snapshot_url = ""', f'snapshot_url = "{snapshot.url}"'), tags)
             for src, tags in CELLS]
    write_notebook(root / "churn.ipynb", cells)
    try:
        with browser_session(shots, tmp_path / "jupyter-lab.log") as session:
            with running_lab(tmp_path) as lab:
                page = session.new_page()
                _open(page, lab, "churn.ipynb")
                panel = _show_panel(page)
                panel.locator(".nb2prod-RunLocally").click()
                run = panel.locator(".nb2prod-RunSection")
                expect(run).to_have_attribute("data-status", "running")
                train = run.locator('.nb2prod-RunStage[data-stage="train"]')
                expect(train).to_have_attribute("data-state", "running")
                run_id = run.get_attribute("data-run")
                page.screenshot(path=str(shots / "run-1-running.png"))
                page.close()
            (record,) = _records(root, "run")
            assert runner_alive(record["runner"]), "the run died with the server"
            assert not snapshot.published.is_set()  # so it is still in training

            with running_lab(tmp_path) as lab:
                page = session.new_page()
                _open(page, lab, "churn.ipynb")
                panel = _show_panel(page)
                run = panel.locator(".nb2prod-RunSection")
                expect(run).to_have_attribute("data-run", run_id or "?")
                expect(run).to_have_attribute("data-status", "running")
                train = run.locator('.nb2prod-RunStage[data-stage="train"]')
                expect(train).to_have_attribute("data-state", "running")
                expect(panel.locator(".nb2prod-RunStop")).to_be_visible()
                clock = train.locator("td").nth(2)  # its time so far, live
                expect(clock).to_have_text(re.compile(r"^\d+\.\ds$"))
                expect(clock).not_to_have_text(clock.inner_text())
                node = panel.locator('.nb2prod-DagNode[data-stage="train"]')
                expect(node).to_have_attribute("data-state", "running")
                expect(node).not_to_contain_text("running 0.0s")
                page.screenshot(path=str(shots / "run-2-reattached-running.png"))
                snapshot.published.set()
                expect(run).to_have_attribute("data-status", "succeeded")
                expect(train).to_have_attribute("data-state", "done")
                expect(panel.locator(".nb2prod-RunLocally")).to_have_text("Run locally")
                page.screenshot(path=str(shots / "run-3-reattached-succeeded.png"))
    finally:
        snapshot.close()
    print(f"screenshots: {shots}")
