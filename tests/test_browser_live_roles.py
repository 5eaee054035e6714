"""Inferred-role markers follow unsaved edits, in a real browser.

An untagged cell before the first stage becomes imports-only when the user types
`import os` into it, and an untagged cell after an `imports` cell becomes a
definition: once the edits settle, their markers show the roles the analysis
gives them (`imports · where used`, `imports · every stage`), from the content
the browser sent (POST /nb2prod/roles), without a save: the file on disk is
byte-for-byte the same, the notebook stays dirty, nothing is written beside it.
Undoing the first edit's meaning (real work in the cell) takes its marker back.
Autosave is off, so nothing but the test could save.  Screenshots: `<tmp>/shots`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.test_browser import MARKERS_JS, browser_session, running_lab, write_notebook
from tests.test_browser_panel import _open, _show_panel

pytestmark = pytest.mark.timeout(600)

CELLS: list[tuple[str, list[str] | None]] = [
    ("# Areas\nCircle areas, the notebook a user is editing.", None),
    ("scratch = 1", []),
    ("import math", ["imports"]),
    ("area = math.pi", []),
    ("a = 2", ["stage:prepare"]),
]


def _markers(page) -> list[str | None]:
    return page.evaluate(MARKERS_JS)


def _retype(page, index: int, text: str) -> None:
    """Replace cell `index`'s source by typing, as a user does (edit mode, select all)."""
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.type(text)


def _wait_marker(page, index: int, text: str | None) -> None:
    page.wait_for_function(
        "([i, text]) => (" + MARKERS_JS + ")()[i] === text", arg=[index, text])


def test_inferred_roles_follow_unsaved_edits(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    shots = tmp_path / "shots"
    shots.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    notebook = write_notebook(root / "areas.ipynb", CELLS)
    saved = notebook.read_bytes()
    settings = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    with browser_session(shots, tmp_path / "jupyter-lab.log") as session, \
            running_lab(tmp_path) as lab:
        page = session.new_page()
        _open(page, lab, "areas.ipynb")
        panel = _show_panel(page)
        expect(panel.locator(".nb2prod-PanelStage")).to_have_count(1)  # the saved file, checked
        _wait_marker(page, 2, "imports · every stage")
        before = _markers(page)
        assert before[1] == "no stage" and before[3] != "imports · every stage", before
        page.screenshot(path=str(shots / "1-saved.png"))
        listed = sorted(p.name for p in root.iterdir())  # JupyterLab's checkpoint included

        # 1. typed, not saved: cell 2 imports only, cell 4 a definition
        _retype(page, 1, "import os")
        _retype(page, 3, "def area(r):\n    return math.pi * r * r")
        _retype(page, 4, "a = area(2)\nhome = os.sep")
        _wait_marker(page, 1, "imports · where used")
        _wait_marker(page, 3, "imports · every stage")
        tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
        expect(tab).to_have_class(re.compile(r"\bjp-mod-dirty\b"))
        marker = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(1).locator(
            ":scope > .nb2prod-StageMarker")
        assert "before the first stage" in (marker.get_attribute("title") or "")
        page.screenshot(path=str(shots / "2-unsaved-roles.png"))
        assert notebook.read_bytes() == saved  # nothing saved
        assert sorted(p.name for p in root.iterdir()) == listed  # nothing written

        # 2. the cell does real work again: its marker goes back to "no stage"
        _retype(page, 1, "import os\nscratch = os.getcwd()")
        _wait_marker(page, 1, "no stage")
        answers = page.evaluate("() => document.querySelector("
                                "'.jp-NotebookPanel:not(.lm-mod-hidden)').dataset.nb2prodLiveRoles")
        assert int(answers) >= 2, answers  # the markers came from the live analysis
        page.screenshot(path=str(shots / "3-real-work-again.png"))
        expect(tab).to_have_class(re.compile(r"\bjp-mod-dirty\b"))
        assert notebook.read_bytes() == saved
        assert sorted(p.name for p in root.iterdir()) == listed
        assert not any(root.glob("*-pipeline"))
    print(f"screenshots: {shots}")
