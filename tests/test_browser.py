"""The JupyterLab extension in a real browser, and the wheel that ships it.

- A real `jupyter lab` (subprocess, loopback, token) loads the prebuilt
  extension from nb2prod/labextension and the server extension through the
  shipped jupyter-config file; Debian Chromium driven by Playwright opens the
  iris example, checks the stage markers against the Python analysis, splits
  from the toolbar, checks the pipeline on disk, deploys (a scripted deploy
  command as the detached process, real handlers, event log and polling), then
  re-tags a cell with the
  "Cell role…" command and follows a problem's "Go to cell" button.
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
import site
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "example_notebooks" / "iris.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
#: Upper bound of every wait (each waits on a condition, so it only matters on failure):
#: generous because CI is a busy 2-core machine, and for every `expect`, whose own
#: default of 5 s is a timing margin a loaded machine misses.
TIMEOUT_MS = 180_000

# A server extension loaded only by these tests: holds a split while a test
# asks it to (see _held_split), and makes the deploy command the handler launches
# a scripted stand-in for `nb2prod deploy --events FILE` (stage events at a pace,
# then a result), so the progress dialog (the detached process, its event log,
# polling, stage states) is exercised in the browser without a cluster.  The real
# deploy runs against the Kubernetes stand-in in tests/test_browser_deploy.py.
FAKE_DEPLOY = """
import sys
import time
from pathlib import Path

SCRIPT = '''
import sys, time
from pathlib import Path
from nb2prod.progress import EventLog

pipeline, namespace, events = sys.argv[1:4]
log = EventLog(Path(events))
stages = [p.name.split("-", 2)[2] for p in sorted(Path(pipeline).glob("stage-*"))]
start = time.monotonic()
for stage in stages:
    for state in ("running", "done"):
        time.sleep(0.4)
        log({"stage": stage, "state": state, "message": f"{state} in {namespace}",
             "elapsed": time.monotonic() - start})
log.write({"result": {"status": "succeeded", "services": {}}})
'''

def _fake_command(pipeline_dir, namespace, options, events):
    return [sys.executable, "-c", SCRIPT, str(pipeline_dir), namespace, str(events)]

def _held_split(real):
    # split_notebook waiting while a file .nb2prod-test-hold-split is beside the
    # notebook: a test sees the toolbar's busy state for as long as it needs
    def split(notebook, *args, **kwargs):
        while (Path(notebook).parent / ".nb2prod-test-hold-split").exists():
            time.sleep(0.05)
        return real(notebook, *args, **kwargs)
    return split

HOLD_EXIT = '''
import subprocess, sys, time
from pathlib import Path

code = subprocess.call(sys.argv[2:])
while Path(sys.argv[1]).exists():
    time.sleep(0.05)
sys.exit(code)
'''

def _held_exit(real):
    # a run launched while a file .nb2prod-test-hold-run-exit is beside the pipeline
    # keeps its process up after `nb2prod run` ended until the file is gone (as a
    # launcher busy exiting): a test sees the panel follow the run record meanwhile
    def command(pipeline_dir, *args, **kwargs):
        hold = Path(pipeline_dir).parent / ".nb2prod-test-hold-run-exit"
        cmd = real(pipeline_dir, *args, **kwargs)
        return [sys.executable, "-c", HOLD_EXIT, str(hold), *cmd] if hold.exists() else cmd
    return command

def _load_jupyter_server_extension(serverapp):
    import nb2prod.split
    from nb2prod.jupyter import deploys, handlers, runs
    nb2prod.split.split_notebook = _held_split(nb2prod.split.split_notebook)
    runs.run_command = _held_exit(runs.run_command)
    deploys.deploy_command = _fake_command
    real = handlers._load_cluster_check()
    # the scripted cluster answers; the kubeconfig's "unreachable" context is checked for real
    handlers._load_cluster_check = lambda: (
        lambda context: real(context) if context == "unreachable"
        else {"host": "fake", "version": "v1"})
"""


def _kubeconfig(path: Path) -> Path:
    """Contexts "fake" (current: the scripted cluster) and "unreachable" (a closed port)."""
    port = _free_port()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}}
                     for n in ("fake", "unreachable")]}))
    return path


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
    with running_lab(tmp_path) as server:
        yield server


@contextmanager
def running_lab(tmp_path: Path, env: dict[str, str] | None = None,
                fake_deploy: bool = True) -> Iterator[Lab]:
    """A `jupyter lab` for the browser tests (see `lab`), stopped on exit.

    Calling it again with the same `tmp_path` starts a new server on the same
    root, settings and workspaces (a server restart).  `env` is added to the
    server's environment; `fake_deploy=False` leaves the real deploy command.
    """
    if os.environ.get("NB2PROD_SKIP_BROWSER") == "1":
        pytest.skip("NB2PROD_SKIP_BROWSER=1")
    assert CHROMIUM.exists(), "install Debian's chromium: apt-get install chromium fonts-liberation"
    pytest.importorskip("playwright.sync_api")
    built = REPO / "nb2prod" / "labextension" / "package.json"
    assert built.is_file(), "prebuilt extension missing: cd labextension && jlpm build:prod"

    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    data = tmp_path / "data"
    (data / "labextensions").mkdir(parents=True, exist_ok=True)
    if not (data / "labextensions" / "nb2prod").is_symlink():
        (data / "labextensions" / "nb2prod").symlink_to(REPO / "nb2prod" / "labextension")
    config = tmp_path / "config"
    (config / "jupyter_server_config.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "jupyter-config" / "server-config" / "nb2prod.json",
                config / "jupyter_server_config.d" / "nb2prod.json")
    pylib = tmp_path / "pylib"
    pylib.mkdir(exist_ok=True)
    (pylib / "nb2prod_fake_deploy.py").write_text(FAKE_DEPLOY)
    fake = config / "jupyter_server_config.d" / "zz_fake_deploy.json"
    if fake_deploy:
        fake.write_text(json.dumps(
            {"ServerApp": {"jpserver_extensions": {"nb2prod_fake_deploy": True}}}))
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    kubeconfig = tmp_path / "kubeconfig"
    if not kubeconfig.exists():
        _kubeconfig(kubeconfig)

    token = "nb2prod-browser-test"
    env = {**os.environ,
           "JUPYTER_PATH": str(data), "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "KUBECONFIG": str(kubeconfig),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(pylib),
                                                       os.environ.get("PYTHONPATH")])),
           **(env or {})}
    log = tmp_path / "jupyter-lab.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--port=0", "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={token}",
             "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
             f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
             f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    # Port 0: the server takes a free port itself when it binds, and says which in its
    # runtime file (a port picked here would be free only until then: seconds of imports
    # on a busy machine, during which another server may take it).
    info = tmp_path / "runtime" / f"jpserver-{proc.pid}.json"
    try:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                port = int(json.loads(info.read_text())["port"])
                break
            except (OSError, ValueError, KeyError):  # not written yet, or half-written
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.25)
        url = f"http://127.0.0.1:{port}"
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
    """What each cell's marker must say, from the Python analysis (the source of truth):
    the stage (` · service`, ` · metrics` for the metrics cell), a role for every
    stage, or where used for an untagged imports cell before the first stage, `skip`,
    else `no stage` on a code cell and nothing on another."""
    from nb2prod.analysis import IMPORTS_ONLY, analyze
    from nb2prod.notebook import load_notebook

    nb = load_notebook(notebook)
    analysis = analyze(nb)
    expected: list[str | None] = [
        "no stage" if cell.cell_type == "code" else None for cell in nb.cells]
    for stage in analysis.stages:
        for index in stage.cells:
            metrics = " · metrics" if {"metrics", "pipeline-metrics"} & set(
                nb.cells[index].tags) else ""
            expected[index] = (stage.name if stage.type == "batch"
                               else f"{stage.name} · service") + metrics
    for role, cells in analysis.prelude.items():
        for index in cells:
            expected[index] = f"{role} · every stage"
    for index, why in analysis.unassigned.items():
        if why == IMPORTS_ONLY:
            expected[index] = "imports · where used"
    for cell in nb.cells:
        if cell.cell_type == "code" and "skip" in cell.tags:
            expected[cell.index] = "skip"
    return expected


MARKERS_JS = """() => [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')]
  .map(c => { const m = c.querySelector(':scope > .nb2prod-StageMarker');
              return m ? m.textContent : null; })"""


def _kale_notebook(path: Path) -> Path:
    """Kale's tag spellings, untagged cells before the first stage (one of them imports
    only), an untagged definition after an imports cell, skip in a stage."""
    cells = [
        ("import os", []),
        ("scratch = 1", []),
        ("n = 3", ["pipeline-parameters"]),
        ("import json", ["imports"]),
        ("def echo(payload):\n    return json.dumps(payload) + os.sep", []),
        ("## load", None),
        ("data = list(range(n))", ["block:load"]),
        ("data.append(4)", []),
        ("total = sum(data)", ["step:prep", "prev:load"]),
        ("print(total)", ["skip"]),
        ("mean = total / len(data)", []),
        ("def predict(payload):\n    return {'mean': mean, 'echo': echo(payload)}",
         ["serve:api"]),
    ]
    return write_notebook(path, cells)


#: The notebook metadata JupyterLab itself saves with this machine's python3 kernel.
#: Without a kernelspec JupyterLab asks for a kernel in a dialog that blocks every
#: click; with another display name it rewrites it on open (the notebook turns dirty).
LAB_METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                   "name": "python3"},
    "language_info": {"codemirror_mode": {"name": "ipython", "version": 3},
                      "file_extension": ".py", "mimetype": "text/x-python",
                      "name": "python", "nbconvert_exporter": "python",
                      "pygments_lexer": "ipython3", "version": "3.11.7"},
}


def new_lab_notebook() -> Any:
    """An empty nbformat v4 notebook with LAB_METADATA: opening it changes nothing."""
    import copy

    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata.update(copy.deepcopy(LAB_METADATA))
    return nb


def write_notebook(path: Path, cells: list[tuple[str, list[str] | None]]) -> Path:
    """A notebook of (source, tags) cells (tags None: a markdown cell) with LAB_METADATA."""
    import nbformat

    nb = new_lab_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if tags is None else
                nbformat.v4.new_code_cell(src, metadata={"tags": tags} if tags else {})
                for src, tags in cells]
    nbformat.write(nb, path)
    return path


def assert_no_nb2prod_tracebacks(log: Path) -> None:
    """No traceback from our handlers in the server's log (the server may log unrelated
    ones, e.g. a kernel websocket closed by a page change)."""
    for block in log.read_text().split("Traceback")[1:]:
        assert "nb2prod" not in block.split("\n[", 1)[0], block


class BrowserSession:
    """Pages of one Chromium context; every page's uncaught JS errors are collected."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.errors: list[str] = []
        self.pages: list[Any] = []

    def new_page(self) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.pages.append(page)
        return page


@contextmanager
def browser_session(shots: Path, log: Path,
                    viewport: tuple[int, int] = (1500, 1000)) -> Iterator[BrowserSession]:
    """Chromium for one test: a `viewport` context with TIMEOUT_MS waits; on a failure a
    screenshot of the last open page (`shots/failure.png`); always closed; at the end
    no JS error in any page and no nb2prod traceback in the server's `log`."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0],
                                                    "height": viewport[1]})
            context.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            session = BrowserSession(context)
            try:
                yield session
            except Exception:
                open_pages = [page for page in session.pages if not page.is_closed()]
                if open_pages:
                    open_pages[-1].screenshot(path=str(shots / "failure.png"))
                raise
        finally:
            browser.close()
    assert not session.errors, session.errors
    assert_no_nb2prod_tracebacks(log)


def _wait_markers(page: object, expected: list[str | None]) -> None:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while (markers := page.evaluate(MARKERS_JS)) != expected:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"markers {markers} != {expected}"
        time.sleep(0.1)


def test_split_from_the_notebook_toolbar(lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert IRIS.is_file(), "example_notebooks/iris.ipynb is the notebook this test opens"
    notebook = lab.root / "iris.ipynb"
    shutil.copy(IRIS, notebook)
    expected = _expected_markers(notebook)
    assert "train" in expected and "serve · service" in expected
    kale = _kale_notebook(lab.root / "kale.ipynb")
    kale_expected = _expected_markers(kale)
    assert kale_expected[:5] == ["imports · where used", "no stage", "parameters · every stage",
                                 "imports · every stage", "imports · every stage"]
    assert "api · service" in kale_expected and "train · metrics" in expected

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        js_errors: list[str] = []
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.on("pageerror", lambda error: js_errors.append(str(error)))
            page.on("console", lambda msg: msg.type in ("error", "warning")
                    and "nb2prod" in msg.text and js_errors.append(msg.text))
            page.goto(f"{lab.url}/lab/tree/iris.ipynb?token={lab.token}")
            panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            cells = panel.locator(".jp-Notebook .jp-Cell")
            dialog = page.locator(".jp-Dialog")

            # 1. stage markers, computed in the browser, agree with the Python analysis
            _wait_markers(page, expected)

            # 2. split from the toolbar: stage table, pipeline written to disk
            panel.locator(".nb2prod-SplitButton").click()
            report = dialog.locator(".nb2prod-Report")
            expect(report).to_be_visible()
            expect(report.locator(".nb2prod-Report-output")).to_have_text("iris-pipeline/")
            expect(report.locator("tr.nb2prod-Stage")).to_have_count(2)
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
            dialog.locator(".jp-Dialog-button", has_text="Close").click()
            expect(dialog).to_have_count(0)

            # 3. "Deploy…": the form, then progress polled until done
            panel.locator(".nb2prod-DeployButton").click()
            namespace = dialog.locator(".nb2prod-DeployForm input[name=namespace]")
            expect(namespace).to_be_focused()
            namespace.fill("ml")
            dialog.locator(".jp-Dialog-button", has_text="Deploy").click()
            progress = dialog.locator(".nb2prod-DeployProgress")
            expect(progress).to_be_visible()
            expect(progress.locator('tr.nb2prod-DeployStage[data-stage="train"]')).to_be_visible()
            expect(progress).to_have_attribute("data-state", "done")
            for stage in ("train", "serve"):
                row = progress.locator(f'tr.nb2prod-DeployStage[data-stage="{stage}"]')
                expect(row).to_have_attribute("data-state", "done")
            expect(progress).to_contain_text("Deployed: pipeline iris-pipeline → namespace ml")
            page.screenshot(path=str(tmp_path / "deploy-progress.png"))
            dialog.locator(".jp-Dialog-button", has_text="Close").click()
            expect(dialog).to_have_count(0)

            # 4. "Cell role…" from the cell context menu: "joins the stage above"
            # removes the train tag, so train's cells fall before the first stage...
            train_cell = expected.index("train")
            cells.nth(train_cell).locator(".jp-InputPrompt").click(button="right")
            page.locator(".lm-Menu-item", has_text="nb2prod: Cell role…").click()
            expect(dialog.locator("select[name=place]")).to_have_value("stage")
            expect(dialog.locator("input[name=name]")).to_have_value("train")
            dialog.locator("select[name=place]").select_option("join")
            dialog.locator(".jp-Dialog-button", has_text="Set role").click()
            expect(cells.nth(train_cell).locator(".nb2prod-StageMarker")).to_have_text("no stage")
            nb_cells = json.loads(notebook.read_text())["cells"]
            metrics_cell = next(i for i, c in enumerate(nb_cells)
                                if "metrics" in c["metadata"].get("tags", []))
            assert metrics_cell > train_cell  # tagged `metrics`: now outside any stage
            expect(cells.nth(metrics_cell).locator(".nb2prod-StageMarker")).to_contain_text(
                "belongs to no stage")

            # ...and split now fails, naming cells; "Go to cell" selects the cell
            panel.locator(".nb2prod-SplitButton").click()
            problems = page.locator(".nb2prod-ErrorDialog .nb2prod-Problem")
            expect(problems.first).to_be_visible()
            expect(problems.first).to_contain_text("iris.ipynb, cell ")
            page.screenshot(path=str(tmp_path / "split-problems.png"))
            go = problems.locator(".nb2prod-GoToCell").first
            # Counted from 1 like the message (and JupyterLab's status bar "Cell N/M").
            target = int(go.inner_text().rsplit(" ", 1)[1])
            assert f"iris.ipynb, cell {target} (" in problems.first.inner_text()
            go.click()
            expect(dialog).to_have_count(0)
            expect(cells.nth(target - 1)).to_have_class(re.compile(r"\bjp-mod-active\b"))

            # the save before splitting wrote the new tags to disk
            saved = json.loads(notebook.read_text())["cells"][train_cell]
            assert saved["metadata"].get("tags", []) == []

            # 5. a Kale-tagged notebook opened from the file browser: its
            # markers agree with the Python analysis too
            page.locator(".jp-DirListing-item", has_text="kale.ipynb").dblclick()
            expect(panel.locator(".jp-Notebook")).to_contain_text("def predict")
            _wait_markers(page, kale_expected)
            page.screenshot(path=str(tmp_path / "kale-markers.png"))
        finally:
            browser.close()
    assert not js_errors, js_errors
    assert (tmp_path / "split-dialog.png").stat().st_size > 10_000
    assert_no_nb2prod_tracebacks(lab.log)


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
    # `--system-site-packages` means the *base* interpreter's packages: when this test runs
    # in a venv, jupyter_server & co. live in that venv's site-packages instead.  A .pth
    # line adds them after the new venv's own (so its nb2prod, from the wheel, wins; .pth
    # files inside an added directory, like an editable install's finder, are not run).
    purelib = subprocess.run([str(python), "-c", ("import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])")], check=True, capture_output=True, text=True)
    outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "nb2prod_test_outer_env.pth").write_text("\n".join(outer) + "\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "JUPYTER_PATH", "JUPYTER_CONFIG_DIR", "JUPYTER_CONFIG_PATH")}
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "user-config")  # no per-user enable/disable
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--disable-pip-version-check", str(wheel)], check=True, env=env, cwd=tmp_path)

    # What the `jupyter labextension` / `jupyter server extension` console
    # scripts run, but with the venv's interpreter (`jupyter` itself would exec
    # the system's scripts, which look at the system prefix); both at once.
    procs = [subprocess.Popen([str(python), "-m", module, "list"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for module in ("jupyterlab.labextensions", "jupyter_server.extension.serverextension")]
    labext, server = (re.sub(r"\x1b\[[0-9;]*m", "", p.communicate(timeout=120)[0])
                      for p in procs)  # colours off
    assert [p.returncode for p in procs] == [0, 0], (labext, server)
    line = next((ln for ln in labext.splitlines() if ln.strip().startswith("nb2prod ")), "")
    assert "enabled" in line and "OK" in line, labext
    assert str(venv) in labext  # found in the venv's share/, i.e. from the wheel
    assert f"Config dir: {venv}/etc/jupyter" in server, server
    venv_config = server.split(f"Config dir: {venv}/etc/jupyter", 1)[-1].split("Config dir:")[0]
    assert "nb2prod.jupyter enabled" in venv_config, server
    assert re.search(r"nb2prod\.jupyter\s+OK", venv_config), server
    origin = subprocess.run([str(python), "-c", "import nb2prod.jupyter; print(nb2prod.__file__)"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert origin.stdout.startswith(str(venv)), origin.stdout
