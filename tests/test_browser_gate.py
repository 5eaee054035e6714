"""A local run the promotion gate holds back, in the Pipeline panel of a real browser.

The iris notebook, split with `[promotion] METRIC = accuracy, MIN = 0.999` (an
edit the panel's split keeps), is run from the panel (a detached `nb2prod run`:
papermill, real kernel); its accuracy is below the gate, so the run succeeds but
is not promoted, and the panel says so in the run's header and in the past runs,
in the words `nb2prod runs` uses.  Screenshot: `<tmp>/shots`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_browser import Lab, browser_session, lab  # noqa: F401 - `lab` is a fixture
from tests.test_browser_panel import IRIS, _open, _show_panel
from tests.test_manifests import set_ini

pytestmark = pytest.mark.timeout(900)


def test_a_run_below_the_gate_reads_not_promoted_in_the_panel(
        lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect

    from nb2prod.split import split_notebook

    shots = tmp_path / "shots"
    shots.mkdir()
    notebook = lab.root / "iris.ipynb"
    shutil.copy(IRIS, notebook)
    split_notebook(notebook, lab.root / "iris-pipeline")
    for key, value in (("METRIC", "accuracy"), ("MIN", "0.999")):
        set_ini(lab.root / "iris-pipeline" / "nb2prod.ini", "promotion", key, value)
    with browser_session(shots, lab.log) as session:
        page = session.new_page()
        _open(page, lab, "iris.ipynb")
        panel = _show_panel(page)
        panel.locator(".nb2prod-RunLocally").click()
        run = panel.locator(".nb2prod-RunSection")
        expect(run).to_have_attribute("data-status", "succeeded", timeout=300_000)
        run_id = run.get_attribute("data-run")
        status = run.locator(".nb2prod-RunStatus")
        expect(status).to_contain_text("not promoted: accuracy = ")
        expect(status).to_contain_text("< minimum 0.999 (stage train)")
        item = panel.locator(f'.nb2prod-RunItem[data-run="{run_id}"]')
        expect(item).to_contain_text(f"{run_id} · succeeded · not promoted · accuracy=")
        expect(item).not_to_contain_text("latest")
        page.screenshot(path=str(shots / "not-promoted.png"))
