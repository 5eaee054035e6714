"""The JupyterLab extension in a real browser, and the wheel that ships it.

- A real `jupyter lab` (subprocess, loopback, token) loads the prebuilt
  extension from nb2prod/labextension and the server extension through the
  shipped jupyter-config file; Debian Chromium driven by Playwright opens the
  iris example, checks the stage markers against the Python analysis, splits
  from the toolbar, checks the pipeline on disk, then re-tags a cell with the
  "Set stage" command and follows a problem's "Go to cell" button.
- The wheel contains the labextension and the server config, and a fresh
  venv with only that wheel lists both as enabled.

Needs /usr/bin/chromium (Debian: `apt-get install chromium fonts-liberation`);
never `playwright install` (browser downloads are unreachable in CI).  Set
NB2PROD_SKIP_BROWSER=1 to skip the browser test on a machine without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "example_notebooks" / "iris.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab on a free loopback port, isolated from the user's config.

    The extension comes from the repository (JUPYTER_PATH holds a link to
    nb2prod/labextension; JUPYTER_PATH wins over any installed copy) and the
    server extension is enabled by the very config file the wheel ships.
    """
    if os.environ.get("NB2PROD_SKIP_BROWSER") == "1":
        pytest.skip("NB2PROD_SKIP_BROWSER=1")
    assert CHROMIUM.exists(), "install Debian's chromium: apt-get install chromium fonts-liberation"
    pytest.importorskip("playwright.sync_api")
    built = REPO / "nb2prod" / "labextension" / "package.json"
    assert built.is_file(), "prebuilt extension missing: cd labextension && jlpm build:prod"

    root = tmp_path / "root"
    root.mkdir()
    data = tmp_path / "data"
    (data / "labextensions").mkdir(parents=True)
    (data / "labextensions" / "nb2prod").symlink_to(REPO / "nb2prod" / "labextension")
    config = tmp_path / "config"
    (config / "jupyter_server_config.d").mkdir(parents=True)
    shutil.copy(REPO / "jupyter-config" / "server-config" / "nb2prod.json",
                config / "jupyter_server_config.d" / "nb2prod.json")
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    port, token = _free_port(), "nb2prod-browser-test"
    env = {**os.environ,
           "JUPYTER_PATH": str(data), "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    log = tmp_path / "jupyter-lab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={token}",
             "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
             f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
             f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.25)
        yield Lab(url, token, root, log)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _expected_markers(notebook: Path) -> list[str | None]:
    """What each cell's marker must say, from the Python analysis (the source of truth)."""
    from nb2prod.analysis import analyze
    from nb2prod.notebook import load_notebook

    nb = load_notebook(notebook)
    analysis = analyze(nb)
    expected: list[str | None] = [None] * len(nb.cells)
    for stage in analysis.stages:
        for index in stage.cells:
            expected[index] = stage.name if stage.type == "batch" else f"{stage.name} · service"
    for role, cells in analysis.prelude.items():
        for index in cells:
            expected[index] = f"{role} · every stage"
    for cell in nb.cells:
        if cell.cell_type == "code" and "skip" in cell.tags:
            expected[cell.index] = "skip"
    return expected


MARKERS_JS = """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')]
  .map(c => { const m = c.querySelector(':scope > .nb2prod-StageMarker');
              return m ? m.textContent : null; })"""


def test_split_from_the_notebook_toolbar(lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert IRIS.is_file(), "example_notebooks/iris.ipynb is the notebook this test opens"
    notebook = lab.root / "iris.ipynb"
    shutil.copy(IRIS, notebook)
    expected = _expected_markers(notebook)
    assert "train" in expected and "serve · service" in expected

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{lab.url}/lab/tree/iris.ipynb?token={lab.token}")

            # 1. stage markers, computed in the browser, agree with the Python analysis
            page.locator(".jp-NotebookPanel .nb2prod-StageMarker").first.wait_for()
            deadline = time.monotonic() + 10
            while (markers := page.evaluate(MARKERS_JS)) != expected:
                assert time.monotonic() < deadline, f"markers {markers} != {expected}"
                time.sleep(0.1)

            # 2. split from the toolbar: stage table, pipeline written to disk
            page.locator(".jp-NotebookPanel .nb2prod-SplitButton").first.click()
            report = page.locator(".nb2prod-Report")
            expect(report).to_be_visible()
            expect(report.locator(".nb2prod-Report-output")).to_have_text("iris-pipeline/")
            rows = report.locator("tr.nb2prod-Stage")
            expect(rows).to_have_count(2)
            train = report.locator('tr.nb2prod-Stage[data-stage="train"]')
            serve = report.locator('tr.nb2prod-Stage[data-stage="serve"]')
            expect(train).to_contain_text("stage-1-train/")
            expect(train).to_contain_text("batch")
            expect(train).to_contain_text("scikit-learn==")
            expect(serve).to_contain_text("service")
            expect(serve).to_contain_text("model ← train")
            page.screenshot(path=str(tmp_path / "split-dialog.png"))
            pipeline = lab.root / "iris-pipeline"
            assert (pipeline / "nb2prod.ini").is_file()
            assert sorted(p.name for p in pipeline.glob("stage-*")) == [
                "stage-1-train", "stage-2-serve"]
            assert (pipeline / "stage-1-train" / "config.ini").is_file()
            page.locator(".jp-Dialog .jp-Dialog-button", has_text="Close").click()
            expect(report).to_have_count(0)

            # 3. "Set stage" from the cell context menu: an empty answer removes
            # the train tag, so train's cells fall before the first stage...
            train_cell = expected.index("train")
            cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
            cells.nth(train_cell).locator(".jp-InputPrompt").click(button="right")
            page.locator(".lm-Menu-item", has_text="nb2prod: Set stage of selected cells").click()
            dialog_input = page.locator(".jp-Dialog input")
            expect(dialog_input).to_have_value("train")
            dialog_input.fill("")
            page.locator(".jp-Dialog .jp-Dialog-button", has_text="Set stage").click()
            expect(cells.nth(train_cell).locator(".nb2prod-StageMarker")).to_have_count(0)

            # ...and split now fails, naming cells; "Go to cell" selects the cell
            page.locator(".jp-NotebookPanel .nb2prod-SplitButton").first.click()
            problems = page.locator(".nb2prod-ErrorDialog .nb2prod-Problem")
            expect(problems.first).to_be_visible()
            expect(problems.first).to_contain_text("iris.ipynb, cell ")
            page.screenshot(path=str(tmp_path / "split-problems.png"))
            go = problems.locator(".nb2prod-GoToCell").first
            target = int(go.inner_text().rsplit(" ", 1)[1])
            go.click()
            expect(page.locator(".nb2prod-ErrorDialog")).to_have_count(0)
            expect(cells.nth(target)).to_have_class(re.compile(r"\bjp-mod-active\b"))

            # the save before splitting wrote the new tags to disk
            saved = json.loads(notebook.read_text())["cells"][train_cell]
            assert saved["metadata"].get("tags", []) == []

            # 4. "Deploy…" asks for the namespace (cancelled here; deploy is
            # exercised through the handler tests against the stand-in)
            page.locator(".jp-NotebookPanel .nb2prod-DeployButton").first.click()
            expect(page.locator(".nb2prod-DeployForm input[name=namespace]")).to_be_visible()
            page.screenshot(path=str(tmp_path / "deploy-form.png"))
            page.locator(".jp-Dialog .jp-Dialog-button", has_text="Cancel").click()
        finally:
            browser.close()
    assert (tmp_path / "split-dialog.png").stat().st_size > 10_000
    assert "Traceback" not in lab.log.read_text(), lab.log.read_text()


# -- packaging --------------------------------------------------------------------------
def test_prebuilt_extension_matches_its_source() -> None:
    """The committed build belongs to this source version and is loadable."""
    source = json.loads((REPO / "labextension" / "package.json").read_text())
    built_dir = REPO / "nb2prod" / "labextension"
    built = json.loads((built_dir / "package.json").read_text())
    assert built["name"] == source["name"] == "nb2prod"
    assert built["version"] == source["version"]
    assert (built_dir / built["jupyterlab"]["_build"]["load"]).is_file()
    assert (built_dir / "schemas" / "nb2prod" / "plugin.json").is_file()


def test_wheel_ships_and_enables_the_extensions(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(dist)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("nb2prod-*.whl")
    data = f"nb2prod-{wheel.name.split('-')[1]}.data/data/"
    names = set(zipfile.ZipFile(wheel).namelist())
    lab = data + "share/jupyter/labextensions/nb2prod/"
    for required in ("package.json", "install.json", "schemas/nb2prod/plugin.json"):
        assert lab + required in names
    assert any(n.startswith(lab + "static/remoteEntry.") for n in names)
    assert data + "etc/jupyter/jupyter_server_config.d/nb2prod.json" in names
    assert "nb2prod/jupyter/handlers.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "JUPYTER_PATH", "JUPYTER_CONFIG_DIR", "JUPYTER_CONFIG_PATH")}
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "user-config")  # no per-user enable/disable
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--disable-pip-version-check", str(wheel)], check=True, env=env, cwd=tmp_path)

    def listing(*args: str) -> str:
        done = subprocess.run([str(python), "-m", "jupyter", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, check=True)
        return done.stdout + done.stderr

    labext = listing("labextension", "list")
    line = next((ln for ln in labext.splitlines() if ln.strip().startswith("nb2prod ")), "")
    assert "enabled" in line and "OK" in line, labext
    assert str(venv) in labext  # found in the venv's share/, i.e. from the wheel
    server = listing("server", "extension", "list")
    assert "nb2prod.jupyter enabled" in server, server
    assert "nb2prod.jupyter" in server and "OK" in server, server
    origin = subprocess.run([str(python), "-c", "import nb2prod.jupyter; print(nb2prod.__file__)"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert origin.stdout.startswith(str(venv)), origin.stdout
