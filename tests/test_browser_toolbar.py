"""nb2prod's notebook toolbar in a real browser (Playwright + Debian Chromium, real `jupyter lab`).

At 900 px (JupyterLab's default layout, file browser open) "Split" and
"Deploy…" are in the toolbar itself, not in its "…" overflow, and clickable;
while the server splits, the Split button shows a spinner and "Splitting…"
(the split is held by the test's server extension until the test has seen it);
once written, the file browser lists the new pipeline folder at once, and the
result's output path is a link that opens that folder in the file browser.

Screenshots go to the test's tmp directory (`<tmp>/shots`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_browser import (  # noqa: F401 - `lab` is a fixture, used by name
    IRIS,
    Lab,
    browser_session,
    lab,
)
from tests.test_browser_panel import _open

NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"
HOLD = ".nb2prod-test-hold-split"  # see tests/test_browser.py: FAKE_DEPLOY

# After two animation frames (the listing re-renders on the next one), the file
# browser's item names.
LISTING_JS = """async () => {
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return [...document.querySelectorAll('.jp-FileBrowser .jp-DirListing-itemText')]
    .map(n => n.textContent);
}"""


def test_toolbar_at_900px_busy_split_and_output_link(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect

    shots = tmp_path / "shots"
    shots.mkdir()
    shutil.copy(IRIS, lab.root / "iris.ipynb")
    with browser_session(shots, lab.log, viewport=(900, 800)) as session:
        page = session.new_page()
        _open(page, lab, "iris.ipynb")
        expect(page.locator(".jp-FileBrowser")).to_be_visible()  # the default layout
        toolbar = page.locator(f"{NOTEBOOK} .jp-NotebookPanel-toolbar")
        dialog = page.locator(".jp-Dialog")

        # 1. at 900 px both buttons are in the toolbar row, not in its overflow
        for name in ("Split", "Deploy"):
            button = toolbar.locator(f".nb2prod-{name}Button")
            expect(button).to_be_visible()
            expect(button).to_be_in_viewport(ratio=1)
            assert button.evaluate(
                "b => b.closest('.jp-Toolbar-responsive-popup') === null"), name
        page.screenshot(path=str(shots / "toolbar-900.png"))
        toolbar.locator(".nb2prod-DeployButton button").click()
        expect(dialog.locator(".nb2prod-DeployForm")).to_be_visible()
        dialog.locator(".jp-Dialog-button", has_text="Cancel").click()
        expect(dialog).to_have_count(0)

        # 2. Split: a spinner and "Splitting…" while the server works
        (lab.root / HOLD).touch()
        split = toolbar.locator(".nb2prod-SplitButton")
        split.locator("button").click()
        expect(split).to_have_attribute("data-busy", "true")
        expect(split).to_contain_text("Splitting…")
        expect(split.locator(".nb2prod-Spinner")).to_be_visible()
        expect(toolbar.locator(".nb2prod-DeployButton button")).to_be_disabled()
        page.screenshot(path=str(shots / "split-busy.png"))
        assert "iris-pipeline" not in page.evaluate(LISTING_JS)
        (lab.root / HOLD).unlink()
        report = dialog.locator(".nb2prod-Report")
        expect(report).to_be_visible()
        expect(split).to_have_attribute("data-busy", "false")
        expect(split).to_contain_text("Split")

        # 3. the file browser lists the new folder as soon as the result shows
        assert "iris-pipeline" in page.evaluate(LISTING_JS)
        page.screenshot(path=str(shots / "split-result.png"))

        # 4. the output path is a link to the folder in the file browser
        link = report.locator("a.nb2prod-Report-output")
        expect(link).to_have_text("iris-pipeline/")
        link.click()
        expect(dialog).to_have_count(0)
        crumbs = page.locator(".jp-FileBrowser .jp-BreadCrumbs")
        expect(crumbs).to_contain_text("iris-pipeline")
        expect(page.locator(".jp-FileBrowser .jp-DirListing-item",
                            has_text="stage-1-train")).to_be_visible()
        page.screenshot(path=str(shots / "output-folder.png"))
    print(f"screenshots: {shots}")
