"""The Pipeline panel in a real browser (Playwright + Debian Chromium, real `jupyter lab`).

- iris: the panel draws one DAG node per stage (dagre layout of the server's
  graph model); "Run locally" starts a real `nb2prod run` (papermill, real
  kernel) that reaches `succeeded` with the accuracy shown, and the stage's
  HTML report opens;
- wine_parallel: one node per stage, the two training branches side by side;
- a 200-cell notebook (windowed rendering): a problem's "Go to cell 170" and a
  click on a DAG node select the right cell and bring it into view; the
  problem stays marked on its cell;
- the cell role control (the menu of each cell's marker): every role and
  option written as the right tags, a stage named like a role refused, the
  menu ticking the cell's current role; a metrics cell's marker says so;
- deploy preflight: a cluster that does not answer is one error before anything
  is split; the form offers the kubeconfig's contexts, a store and parameters;
- stage markers: text/background contrast computed from the rendered colours
  is at least 4.5:1, in the light and the dark theme, and stage colours differ.

Screenshots go to the test's tmp directory (`<tmp>/shots`).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from tests.test_browser import (  # noqa: F401 - `lab` is a fixture, used by name
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    TIMEOUT_MS,
    Lab,
    assert_no_nb2prod_tracebacks,
    lab,
    new_lab_notebook,
)

IRIS = REPO / "example_notebooks" / "iris.ipynb"
WINE = REPO / "example_notebooks" / "wine_parallel.ipynb"
PANEL = "#nb2prod-pipeline-panel"


def _long_notebook(path: Path, broken: bool, cells: int = 200) -> Path:
    """A long notebook: stage prepare at cell 2, train at 150, cell 170 (`broken`: an
    undefined name)."""
    nb = new_lab_notebook()
    sources: list[tuple[str, list[str]]] = [("import math", ["imports"])]
    sources += [(f"value_{i} = math.sqrt({i})", ["stage:prepare"] if i == 1 else [])
                for i in range(1, 149)]
    sources += [("total = value_1 + value_2", ["stage:train"])]
    sources += [(f"step_{i} = total * {i}", []) for i in range(150, 169)]
    sources += [("broken = not_defined_anywhere + 1" if broken else "fine = total + 1", [])]
    sources += [(f"tail_{i} = total - {i}", []) for i in range(170, cells)]
    assert len(sources) == cells
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags} if tags else {})
                for src, tags in sources]
    nbformat.write(nb, path)
    return path


def _plain_notebook(path: Path, cells: int) -> Path:
    nb = new_lab_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x{i} = {i}", metadata={"tags": ["hide-input"]}
                                          if i == 2 else {}) for i in range(cells)]
    nbformat.write(nb, path)
    return path


def _tags(path: Path) -> list[list[str]] | None:
    """Each cell's tags; None while JupyterLab is still writing the file."""
    try:
        cells = json.loads(path.read_text())["cells"]
    except ValueError:
        return None
    return [c["metadata"].get("tags", []) for c in cells]


#: (cell, actions) done with the role control (the menu of the cell's marker), and the
#: tags wanted.  Actions: ("menu", item text), ("new", "stage"|"serve", name): a new
#: stage named in the prompt, ("refused", name): a new batch stage named like a role,
#: refused; ("after", stage): the "Runs after" submenu; ("form", {field: value}): the
#: role form for resources, image and secrets.
ROLE_STEPS = [
    (0, [("menu", "parameters — every stage")]),
    (1, [("menu", "imports — copied into every stage")]),
    (2, [("new", "stage", "prepare"), ("menu", "no-cache"),
         ("form", {"cpu": "0.5", "memory": "1Gi"})]),
    (3, [("menu", "metrics")]),
    (4, [("refused", "imports"), ("menu", "Batch stage: prepare"),
         ("menu", "Joins the stage above")]),
    (5, [("new", "stage", "train"), ("after", "prepare"),
         ("form", {"gpu": "1", "secrets": "s3-creds:key:AWS_KEY"})]),
    (6, [("menu", "functions")]),
    (7, [("new", "serve", "api"), ("form", {"image": "reg/ml:1"})]),
    (8, [("menu", "skip")]),
]
ROLE_TAGS = [
    ["parameters"], ["imports"], ["hide-input", "stage:prepare", "no-cache", "cpu:0.5",
                                  "memory:1Gi"],
    ["metrics"], [], ["train", "after:prepare", "gpu:1", "secret:s3-creds:key:AWS_KEY"],
    ["functions"], ["serve:api", "image:reg/ml:1"], ["skip"],
]
#: The tags once cells 6 to 8 were set to skip together, then cell 6 to functions.
ROLE_TAGS_AFTER_SELECTION = [*ROLE_TAGS[:7], ["skip"], ["skip"]]
#: What the markers say afterwards: the metrics cell says so.
ROLE_MARKERS = [
    "parameters · every stage", "imports · every stage", "prepare", "prepare · metrics",
    "prepare", "train", "functions · every stage", "api · service", "skip",
]


def _set_roles(page, cells, shots: Path) -> None:
    """Every step of ROLE_STEPS with the marker's menu."""
    from playwright.sync_api import expect

    dialog = page.locator(".jp-Dialog")
    menu = page.locator(".lm-Menu.nb2prod-RoleMenu").first
    for index, actions in ROLE_STEPS:
        marker = cells.nth(index).locator(".nb2prod-StageMarker")
        for action in actions:
            marker.click()
            expect(menu).to_be_visible()
            if action[0] == "menu":
                menu.locator(".lm-Menu-item", has_text=action[1]).click()
            elif action[0] in ("new", "refused"):
                kind, name = ("stage", action[1]) if action[0] == "refused" else action[1:]
                menu.locator(".lm-Menu-item", has_text="New service stage…" if kind == "serve"
                             else "New batch stage…").click()
                dialog.locator("input").fill(name)
                dialog.locator(".jp-Dialog-button", has_text="OK").click()
                if action[0] == "refused":
                    expect(dialog).to_contain_text(f"'{name}' is a tag of its own")
                    page.screenshot(path=str(shots / "role-refused.png"))
                    dialog.locator(".jp-Dialog-button").last.click()  # the error's OK
                    expect(dialog.locator("input")).to_have_value(name)  # asked again
                    dialog.locator(".jp-Dialog-button", has_text="Cancel").click()
            elif action[0] == "after":
                menu.locator(".lm-Menu-item", has_text="Runs after").hover()
                page.locator(".lm-Menu.nb2prod-RoleMenu").nth(1).locator(
                    ".lm-Menu-item", has_text=f"after:{action[1]}").click()
            else:
                menu.locator(".lm-Menu-item", has_text="the role form").click()
                for name, value in action[1].items():
                    dialog.locator(f"input[name={name}]").fill(value)
                dialog.locator(".jp-Dialog-button", has_text="Set role").click()
            expect(dialog).to_have_count(0)
            expect(page.locator(".lm-Menu")).to_have_count(0)


def _contrast(fg: str, bg: str) -> float:
    """WCAG contrast of two CSS `rgb(...)`/`rgba(...)` colours (alpha over `bg`)."""
    def parse(text: str) -> tuple[float, float, float, float]:
        values = [float(v) for v in re.findall(r"[\d.]+", text)]
        return (*values[:3], values[3] if len(values) > 3 else 1.0)  # type: ignore[return-value]

    def luminance(rgb: tuple[float, float, float]) -> float:
        def channel(c: float) -> float:
            c /= 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
        r, g, b = (channel(c) for c in rgb)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    f, b = parse(fg), parse(bg)
    mixed = tuple(f[i] * f[3] + b[i] * (1 - f[3]) for i in range(3))
    light, dark = sorted((luminance(mixed), luminance(b[:3])), reverse=True)  # type: ignore[arg-type]
    return (light + 0.05) / (dark + 0.05)


# The effective colours of each visible marker: its own background when it has
# one, else the first ancestor's that is not transparent.
MARKER_COLOURS_JS = """() => [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .nb2prod-StageMarker')].map(m => {
  let node = m, bg = 'rgba(0, 0, 0, 0)';
  while (node && /rgba\\(0, 0, 0, 0\\)|transparent/.test(bg)) {
    bg = getComputedStyle(node).backgroundColor; node = node.parentElement;
  }
  return {text: m.textContent, variant: m.dataset.variant, stage: m.dataset.stage,
          fg: getComputedStyle(m).color, bg};
})"""


CHIP_COLOURS_JS = """() => Object.fromEntries([...document.querySelectorAll(
    '.nb2prod-PanelStage .nb2prod-Stage-name')].map(c => [c.textContent,
    {fg: getComputedStyle(c).color, bg: getComputedStyle(c).backgroundColor}]))"""


def _open(page, server: Lab, name: str) -> None:
    """`name` as the only open notebook (`reset`: no tabs restored from the workspace)."""
    page.goto(f"{server.url}/lab/tree/{name}?reset&token={server.token}")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").first.wait_for()
    page.wait_for_function("""name => {
        const tab = document.querySelector('.lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current');
        return tab !== null && tab.textContent.includes(name)
          && document.querySelectorAll('.jp-NotebookPanel').length === 1;
    }""", arg=name)


def _show_panel(page) -> object:
    """The Pipeline panel, opened from its sidebar tab unless it is open (or opening):
    the tab is clicked only while it is not the current one, since a click on the
    current tab closes the panel."""
    panel = page.locator(PANEL)
    tab = page.locator('.jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id="nb2prod-pipeline-panel"]')
    tab.wait_for()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not panel.is_visible():
        assert time.monotonic() < deadline, "the pipeline panel did not open"
        if "lm-mod-current" not in (tab.get_attribute("class") or ""):
            tab.click()
        time.sleep(0.2)
    return panel


def test_pipeline_panel(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    shots = tmp_path / "shots"
    shots.mkdir()
    shutil.copy(IRIS, lab.root / "iris.ipynb")
    shutil.copy(WINE, lab.root / "wine.ipynb")
    _long_notebook(lab.root / "long.ipynb", broken=True)
    _long_notebook(lab.root / "long_ok.ipynb", broken=False)
    _plain_notebook(lab.root / "roles.ipynb", len(ROLE_TAGS))
    js_errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.on("pageerror", lambda error: js_errors.append(str(error)))

            # 0. the cell role control (each marker's menu): every place and option
            # becomes the right tags, and a stage can never be named like a role
            _open(page, lab, "roles.ipynb")
            cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
            dialog = page.locator(".jp-Dialog")
            expect(cells.nth(0).locator(".nb2prod-StageMarker")).to_have_text("no stage")
            _set_roles(page, cells, shots)
            markers = cells.locator(".nb2prod-StageMarker")
            expect(markers).to_have_text(ROLE_MARKERS)
            # the menu shows the cell's role: its place and options are ticked
            markers.nth(2).click()
            menu = page.locator(".lm-Menu.nb2prod-RoleMenu").first
            for ticked in ("Batch stage: prepare", "no-cache"):
                expect(menu.locator(".lm-Menu-item", has_text=ticked)).to_have_class(
                    re.compile(r"lm-mod-toggled"))
            expect(menu.locator(".lm-Menu-item", has_text="metrics")).not_to_have_class(
                re.compile(r"lm-mod-toggled"))
            page.screenshot(path=str(shots / "role-menu.png"))
            page.keyboard.press("Escape")
            expect(menu).to_have_count(0)
            # on selected cells: the menu of one of them sets them all (cell 8: skip
            # already); a cell outside the selection is set alone
            cells.nth(6).locator(".jp-InputPrompt").click()
            cells.nth(8).locator(".jp-InputPrompt").click(modifiers=["Shift"])
            markers.nth(7).click()
            expect(menu.locator(".lm-Menu-item").first).to_have_text("Role of 3 selected cells")
            expect(menu.locator(".lm-Menu-item.lm-mod-toggled")).to_have_text(
                ["Service stage: api"])  # the clicked cell's role
            page.screenshot(path=str(shots / "role-menu-selection.png"))
            menu.locator(".lm-Menu-item", has_text="skip — in no stage").click()
            expect(markers.nth(6)).to_have_text("skip")
            expect(markers.nth(7)).to_have_text("skip")
            markers.nth(1).click()
            menu.locator(".lm-Menu-item", has_text="imports — copied").click()
            expect(markers.nth(0)).to_have_text("parameters · every stage")
            markers.nth(6).click()  # not selected any more: set alone
            menu.locator(".lm-Menu-item", has_text="functions — copied").click()
            expect(markers.nth(6)).to_have_text("functions · every stage")
            expect(markers.nth(7)).to_have_text("skip")
            page.screenshot(path=str(shots / "roles.png"))
            page.keyboard.press("Control+s")
            page.wait_for_function("""() => !document.querySelector(
                '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-mod-dirty')""")
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while _tags(lab.root / "roles.ipynb") != ROLE_TAGS_AFTER_SELECTION:
                assert time.monotonic() < deadline, _tags(lab.root / "roles.ipynb")
                time.sleep(0.1)

            # 0b. deploy preflight: the cluster is checked before anything is split;
            # the form lists the kubeconfig's contexts and has store and parameters
            _open(page, lab, "iris.ipynb")
            page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .nb2prod-DeployButton").click()
            form = dialog.locator(".nb2prod-DeployForm")
            expect(form.locator("select[name=context] option")).to_have_text(
                ["current context (fake)", "fake", "unreachable"])
            form.locator("input[name=namespace]").fill("ml")
            form.locator("select[name=context]").select_option("unreachable")
            form.locator("input[name=store]").fill("s3://bucket/prefix")
            form.locator("textarea[name=params]").fill("max_iter=300")
            page.screenshot(path=str(shots / "deploy-form.png"))
            dialog.locator(".jp-Dialog-button", has_text="Deploy").click()
            error = page.locator(".nb2prod-ErrorDialog")
            expect(error).to_contain_text("cannot reach the Kubernetes API at http://127.0.0.1:")
            expect(dialog).to_have_count(1)  # one message, no progress dialog behind it
            page.screenshot(path=str(shots / "deploy-preflight.png"))
            error.locator(".jp-Dialog-button").first.click()
            expect(dialog).to_have_count(0)
            assert not (lab.root / "iris-pipeline").exists()  # nothing re-split

            # 1. iris: one node per stage, the edge passing the model
            _open(page, lab, "iris.ipynb")
            panel = _show_panel(page)
            nodes = panel.locator(".nb2prod-DagNode")
            expect(nodes).to_have_count(2)
            expect(panel.locator('.nb2prod-DagNode[data-stage="train"]')).to_have_attribute(
                "data-kind", "batch")
            expect(panel.locator('.nb2prod-DagNode[data-stage="serve"]')).to_have_attribute(
                "data-kind", "service")
            edge = panel.locator('.nb2prod-DagEdge[data-source="train"][data-target="serve"]')
            expect(edge).to_contain_text("model")
            expect(panel.locator('.nb2prod-PanelStage[data-stage="train"]')).to_contain_text(
                "scikit-learn==")
            expect(panel.locator(".nb2prod-Legend")).to_contain_text("cached")
            # a split from the toolbar checks the panel again
            checks = int(panel.get_attribute("data-checks") or "0")
            assert checks >= 1
            page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .nb2prod-SplitButton").click()
            expect(dialog.locator(".nb2prod-Report")).to_be_visible()
            page.wait_for_function(
                "n => +document.querySelector('#nb2prod-pipeline-panel').dataset.checks > n",
                arg=checks)
            dialog.locator(".jp-Dialog-button", has_text="Close").click()
            expect(dialog).to_have_count(0)
            page.screenshot(path=str(shots / "iris-panel.png"))

            # 2. Run locally: a real run to succeeded, accuracy shown, report opens; the
            # header follows the run record (run.json), not the launcher process, which
            # the test keeps up after the run ended
            hold = lab.root / ".nb2prod-test-hold-run-exit"
            hold.touch()
            run_button = panel.locator(".nb2prod-RunLocally")
            run_button.click()
            run = panel.locator(".nb2prod-RunSection")
            expect(run).to_have_attribute("data-status", "succeeded")
            expect(run_button).to_have_attribute("title", re.compile("process is exiting"))
            expect(run_button).to_have_text("Run locally")
            expect(panel.locator(".nb2prod-RunStop")).to_have_count(0)
            page.screenshot(path=str(shots / "iris-run-exiting.png"))
            hold.unlink()
            expect(run_button).to_be_enabled()
            train = run.locator('.nb2prod-RunStage[data-stage="train"]')
            expect(train).to_have_attribute("data-state", "done")
            expect(train).to_contain_text("accuracy=")
            expect(run.locator(".nb2prod-RunStatus")).to_contain_text("promoted to latest")
            expect(panel.locator('.nb2prod-DagNode[data-stage="train"]')).to_have_attribute(
                "data-state", "done")
            expect(panel.locator(".nb2prod-RunItem")).to_have_count(1)
            page.screenshot(path=str(shots / "iris-run.png"))
            with context.expect_page() as report_page:
                train.locator(".nb2prod-RunLink-html").click()
            report = report_page.value
            report.wait_for_load_state()
            expect(report.locator("body")).to_contain_text("accuracy")
            report.screenshot(path=str(shots / "iris-report.png"))
            report.close()
            # the executed notebook opens in JupyterLab, read-only, not as a download
            downloads: list[object] = []
            page.on("download", lambda download: downloads.append(download))
            train.locator(".nb2prod-RunLink-notebook").click()
            tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
            expect(tab).to_contain_text("train.ipynb")
            executed = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            expect(executed.locator(".jp-OutputArea-output").first).to_be_visible()
            expect(executed).to_contain_text("test accuracy:")  # the cell's printed output
            expect(executed.locator(".nb2prod-StageMarker")).to_have_count(0)  # not ours to tag
            expect(executed.locator(".nb2prod-SplitButton")).to_have_count(0)
            expect(panel.locator(".nb2prod-RunSection")).to_have_attribute(
                "data-status", "succeeded")  # the panel stays on iris' pipeline
            page.screenshot(path=str(shots / "iris-executed-notebook.png"))
            expect(executed).to_contain_text("notebook is read-only")  # JupyterLab's badge
            expect(tab).not_to_have_class(re.compile(r"jp-mod-dirty"))  # nothing to save
            page.locator(".lm-MenuBar-item", has_text="File").click()  # saving is off
            expect(page.locator(".lm-Menu-item", has_text="Save Notebook").first).to_have_class(
                re.compile(r"lm-mod-disabled"))
            page.keyboard.press("Escape")
            assert not downloads
            tab.locator(".lm-TabBar-tabCloseIcon").click()
            expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab",
                                has_text="train.ipynb")).to_have_count(0)

            # reopening the notebook (a new tab) reattaches to the same runs
            page.reload()
            panel = _show_panel(page)
            expect(panel.locator(".nb2prod-RunSection")).to_have_attribute(
                "data-status", "succeeded")

            # 3. wine_parallel: one node per stage, the two branches on one rank
            _open(page, lab, "wine.ipynb")
            panel = _show_panel(page)
            expect(panel.locator(".nb2prod-DagNode")).to_have_count(5)
            page.wait_for_function("""() => document.querySelectorAll(
                '.nb2prod-PanelHeader-name')[0].textContent.includes('wine')""")
            boxes = {name: panel.locator(f'.nb2prod-DagNode[data-stage="{name}"]').bounding_box()
                     for name in ("prepare", "train_forest", "train_logreg", "evaluate")}
            forest, logreg = boxes["train_forest"], boxes["train_logreg"]
            assert forest and logreg and abs(forest["y"] - logreg["y"]) < 1  # same rank
            assert abs(forest["x"] - logreg["x"]) >= forest["width"] / 2  # side by side
            assert boxes["prepare"]["y"] < forest["y"] < boxes["evaluate"]["y"]  # type: ignore[index]
            for target in ("train_forest", "train_logreg"):
                expect(panel.locator(f'.nb2prod-DagEdge[data-source="prepare"]'
                                     f'[data-target="{target}"]')).to_have_count(1)
            page.screenshot(path=str(shots / "wine-panel.png"))

            # 4. 200 cells: the problem is listed and marked; "Go to cell" and a
            # node click scroll the windowed notebook to the right cell
            _open(page, lab, "long.ipynb")
            panel = _show_panel(page)
            problem = panel.locator(".nb2prod-PanelProblems .nb2prod-Problem").first
            expect(problem).to_contain_text("not_defined_anywhere")
            go = problem.locator(".nb2prod-GoToCell")
            expect(go).to_have_text("Go to cell 170")
            go.click()
            notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
            active = notebook.locator(".jp-Cell.jp-mod-active")
            expect(active).to_contain_text("not_defined_anywhere")
            expect(active).to_be_in_viewport()
            expect(active.locator(".nb2prod-CellProblem")).to_contain_text(
                "not_defined_anywhere")
            page.screenshot(path=str(shots / "long-goto.png"))
            _open(page, lab, "long_ok.ipynb")
            panel = _show_panel(page)
            expect(panel.locator(".nb2prod-PanelProblems")).to_have_count(0)
            panel.locator('.nb2prod-DagNode[data-stage="train"]').click()
            expect(active).to_contain_text("total = value_1 + value_2")
            expect(active).to_be_in_viewport()
            panel.locator('.nb2prod-DagNode[data-stage="prepare"]').click()
            expect(active).to_contain_text("value_1 = math.sqrt(1)")
            expect(active).to_be_in_viewport()
            expect(active).to_have_count(1)

            # 5. marker contrast from the rendered colours, light then dark theme;
            # stage colours differ (wine has five stages)
            for theme in ("light", "dark"):
                seen: set[str] = set()
                for name, variants in (("iris.ipynb", ("start", "continued", "role")),
                                       ("wine.ipynb", ("start", "role"))):
                    _open(page, lab, name)
                    for variant in variants:  # cells render progressively: wait for each
                        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) "
                                     f".nb2prod-StageMarker[data-variant={variant}]"
                                     ).first.wait_for()
                    colours = page.evaluate(MARKER_COLOURS_JS)
                    seen |= {c["variant"] for c in colours}
                    for c in colours:
                        ratio = _contrast(c["fg"], c["bg"])
                        assert ratio >= 4.5, (theme, name, c, ratio)
                    page.screenshot(path=str(shots / f"markers-{theme}-{name}.png"))
                assert seen >= {"start", "continued", "role"}, seen
                # every stage's colour (the panel's chips: the cells of later stages
                # are not rendered in a windowed notebook) differs, white text on it
                # too has 4.5:1, and the markers use the same colours
                panel = _show_panel(page)
                expect(panel.locator(".nb2prod-PanelStage")).to_have_count(5)
                chips = page.evaluate(CHIP_COLOURS_JS)
                assert len({c["bg"] for c in chips.values()}) == len(chips) == 5, chips
                for chip in chips.values():
                    assert _contrast(chip["fg"], chip["bg"]) >= 4.5, (theme, chip)
                for c in colours:
                    if c["variant"] == "start":
                        assert c["bg"] == chips[c["stage"]]["bg"], (c, chips)
                if theme == "light":
                    settings = (lab.root.parent / "settings" / "@jupyterlab" /
                                "apputils-extension" / "themes.jupyterlab-settings")
                    settings.write_text(json.dumps({"theme": "JupyterLab Dark"}))
                    page.reload()
                    page.wait_for_function(
                        "() => document.body.dataset.jpThemeLight === 'false'")
        except Exception:
            page.screenshot(path=str(shots / "failure.png"))
            raise
        finally:
            browser.close()
    assert not js_errors, js_errors
    assert_no_nb2prod_tracebacks(lab.log)
    print(f"screenshots: {shots}")


@pytest.fixture(autouse=True)
def _no_leftover_runs(tmp_path: Path):
    """The run started from the panel has ended by itself (--no-serve) by the test's end."""
    yield
    for launch in tmp_path.glob("root/*-pipeline/.nb2prod/panel/*/launch.json"):
        record = json.loads(launch.read_text())
        from nb2prod.runners.local import runner_alive

        if "exit_code" not in record and runner_alive(record.get("runner")):
            import os
            import signal

            os.killpg(record["runner"]["pid"], signal.SIGTERM)
