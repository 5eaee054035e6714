"""Opening a notebook never makes it dirty (real `jupyter lab`, Debian Chromium).

The examples and a notebook written by the tests' helper are opened; once the
kernel is idle (JupyterLab has written what the kernel reports into the model)
and our markers are drawn (the extension has read every cell), the tab has no
unsaved-changes dot, and saving would not change the file's metadata.
Screenshots in the test's tmp directory (`<tmp>/shots`).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.test_browser import (  # noqa: F401 - `lab` is a fixture, used by name
    REPO,
    TIMEOUT_MS,
    Lab,
    _expected_markers,
    _wait_markers,
    browser_session,
    lab,
    write_notebook,
)

CURRENT_TAB = ".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current"
#: JupyterLab's kernel status in the status bar once the kernel has started and
#: answered (JupyterLab then has written the kernel's spec into the model).
KERNEL_IDLE = re.compile(r"^(?!No Kernel).+ \| Idle$")


def _saved(notebook: Path, before: int) -> dict:
    """The notebook once JupyterLab has written it again (mtime past `before`)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        if notebook.stat().st_mtime_ns != before:
            try:
                return json.loads(notebook.read_text())
            except ValueError:
                pass  # still being written
        assert time.monotonic() < deadline, "the notebook was not saved"
        time.sleep(0.1)


@pytest.mark.parametrize("name", ["iris.ipynb", "wine_parallel.ipynb", "written.ipynb"])
def test_opening_a_notebook_leaves_it_clean(lab: Lab, tmp_path: Path,  # noqa: F811
                                            name: str) -> None:
    from playwright.sync_api import expect

    shots = tmp_path / "shots"
    shots.mkdir()
    notebook = lab.root / name
    if name == "written.ipynb":
        write_notebook(notebook, [("## data", None), ("import math", ["imports"]),
                                  ("x = math.pi", ["stage:prepare"]), ("y = x * 2", [])])
    else:
        shutil.copy(REPO / "example_notebooks" / name, notebook)
    expected = _expected_markers(notebook)
    on_disk = json.loads(notebook.read_text())
    with browser_session(shots, lab.log) as session:
        page = session.new_page()
        page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
        tab = page.locator(CURRENT_TAB)
        expect(tab).to_contain_text(name)
        expect(page.locator(".jp-StatusBar-TextItem", has_text=KERNEL_IDLE)).to_have_count(1)
        _wait_markers(page, expected)
        page.screenshot(path=str(shots / f"opened-{name}.png"))
        expect(tab).not_to_have_class(re.compile(r"\bjp-mod-dirty\b"))
        # the dot the file browser shows beside an open notebook is its running kernel
        item = page.locator(".jp-DirListing-item", has_text=name)
        expect(item).to_have_class(re.compile(r"\bjp-mod-running\b"))
        # saving now writes the same metadata and cells (what JupyterLab holds)
        before = notebook.stat().st_mtime_ns
        page.keyboard.press("Control+s")
        saved = _saved(notebook, before)
        assert saved["metadata"] == on_disk["metadata"]
        assert [c["source"] for c in saved["cells"]] == [c["source"] for c in on_disk["cells"]]
