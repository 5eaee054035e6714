"""Stop on a local run in the Pipeline panel reads "stopped", in a real browser.

The churn notebook's training waits for a snapshot URL that never answers 200
(a server of the test's), so the run is provably in training when the panel's
Stop is clicked.  The run then reads `stopped` (by whom, when) in the run's
header, its stage row, the graph node and the past runs: not failed, not
interrupted, no exit code.  The deploy counterpart (a real `nb2prod deploy`
against the Kubernetes stand-in) is step 5 of tests/test_browser_deploy.py.
Screenshots: `<tmp>/shots`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_browser import browser_session, running_lab, write_notebook
from tests.test_browser_deploy import CELLS, _records, _Snapshot, stop_deploys  # noqa: F401
from tests.test_browser_panel import _open, _show_panel

pytestmark = pytest.mark.timeout(900)


def test_a_local_run_stopped_from_the_panel_reads_stopped(
        tmp_path: Path, stop_deploys: None) -> None:  # noqa: F811
    from playwright.sync_api import expect

    from nb2prod.runners.local import runner_alive

    shots = tmp_path / "shots"
    shots.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    gate = _Snapshot()  # never published: training waits until stopped
    write_notebook(root / "churn.ipynb", [
        (src.replace('snapshot_url = ""', f'snapshot_url = "{gate.url}"'), tags)
        for src, tags in CELLS])
    try:
        with browser_session(shots, tmp_path / "jupyter-lab.log") as session, \
                running_lab(tmp_path) as lab:
                page = session.new_page()
                _open(page, lab, "churn.ipynb")
                panel = _show_panel(page)
                panel.locator(".nb2prod-RunLocally").click()
                run = panel.locator(".nb2prod-RunSection")
                train = run.locator('.nb2prod-RunStage[data-stage="train"]')
                expect(train).to_have_attribute("data-state", "running")
                run_id = run.get_attribute("data-run")
                page.screenshot(path=str(shots / "1-running.png"))
                panel.locator(".nb2prod-RunStop").click()

                expect(run).to_have_attribute("data-status", "stopped")
                expect(panel.locator(".nb2prod-RunLocally")).to_have_text("Run locally")
                (record,) = _records(root, "run")
                note = json.loads((root / "churn-pipeline" / ".nb2prod" / "panel"
                               / record["id"] / "stop.json").read_text())
                status = run.locator(".nb2prod-RunStatus")
                expect(status).to_contain_text("stopped · ")
                expect(status).to_contain_text(f"by {note['by']} (JupyterLab) at ")
                expect(status).not_to_contain_text("interrupted")
                expect(status).not_to_contain_text("exit code")
                expect(train).to_have_attribute("data-state", "stopped")
                expect(train.locator("td").nth(1)).to_have_text("stopped")
                expect(run.locator(".nb2prod-RunStage-message")).to_contain_text(
                f"stopped by {note['by']}")
                node = panel.locator('.nb2prod-DagNode[data-stage="train"]')
                expect(node).to_have_attribute("data-state", "stopped")
                expect(node).to_contain_text("stopped")
                item = panel.locator(f'.nb2prod-RunItem[data-run="{run_id}"]')
                expect(item).to_have_attribute("data-status", "stopped")
                expect(item).to_contain_text(f"{run_id} · stopped")
                assert not runner_alive(record["runner"])
                assert not gate.published.is_set()  # stopped in training, not finished
                page.screenshot(path=str(shots / "2-stopped.png"))
                run.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "3-stopped-run-table.png"))
    finally:
        gate.close()
    print(f"screenshots: {shots}")
