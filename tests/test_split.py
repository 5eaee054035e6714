"""`nb2prod split`: re-splitting keeps the user's work, `--check`, `--templates`, Kale notebooks.

The CLI runs in-process through `nb2prod.cli.main` (same exit codes and messages as the
console script, much faster than a subprocess); tests/test_bad_inputs.py covers the
subprocess path.
"""

from __future__ import annotations

import configparser
import itertools
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from nb2prod.cli import main
from nb2prod.notebook import import_nbformat
from nb2prod.split import changed_source, split_notebook

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_notebooks"
KALE = REPO / "tests" / "data" / "kale" / "kale_pipeline.ipynb"

import_nbformat()  # nbformat through nb2prod's fast path before jupytext imports it


class CLI:
    """Run `nb2prod ...` in-process and capture its output."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # `split --check` exits 1 through sys.exit
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CLI:
    return CLI(capsys)


@pytest.fixture
def iris(tmp_path: Path) -> Path:
    notebook = tmp_path / "iris.ipynb"
    shutil.copyfile(EXAMPLES / "iris.ipynb", notebook)
    return notebook


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def edit_notebook(notebook: Path, cell: int, source: str) -> None:
    data = json.loads(notebook.read_text())
    data["cells"][cell]["source"] = source
    notebook.write_text(json.dumps(data, indent=1))


# -- re-split keeps the user's work -----------------------------------------------------------
def test_resplit_keeps_an_edited_config_value_and_says_so(cli: CLI, iris: Path) -> None:
    out = iris.parent / "iris-pipeline"
    assert cli("split", iris, "-o", out)[0] == 0
    config = out / "stage-1-train" / "config.ini"
    config.write_text(config.read_text().replace("RETRIES = 2", "RETRIES = 5"))

    code, stdout, _ = cli("split", iris, "-o", out, "--force")
    assert code == 0
    assert "kept your edit: stage-1-train/config.ini [batch] RETRIES" in stdout
    assert ini(config)["batch"]["RETRIES"] == "5"
    assert ini(config)["batch"]["MAX_COMPLETION_TIME_SECONDS"] == "1800"


def test_an_edit_kept_once_is_kept_on_every_later_split(cli: CLI, iris: Path) -> None:
    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    config = out / "stage-1-train" / "config.ini"
    config.write_text(config.read_text().replace("RETRIES = 2", "RETRIES = 5"))
    cli("split", iris, "-o", out, "--force")
    assert ini(config)["batch"]["RETRIES"] == "5"
    # unchanged notebook, unchanged pipeline: it is up to date, and stays as edited
    assert cli("split", iris, "-o", out, "--check")[0] == 0
    cli("split", iris, "-o", out, "--force")
    assert ini(config)["batch"]["RETRIES"] == "5"


def test_resplit_keeps_nb2prod_ini_edits_but_derived_keys_follow_the_notebook(
        cli: CLI, iris: Path) -> None:
    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    top = out / "nb2prod.ini"
    top.write_text(top.read_text().replace("IMAGE = python:3.11-slim", "IMAGE = my/image:1"))
    config = out / "stage-2-serve" / "config.ini"
    config.write_text(config.read_text().replace("INPUTS = model, species", "INPUTS = bogus")
                      .replace("REPLICAS = 2", "REPLICAS = 3"))
    code, _, _ = cli("split", iris, "-o", out, "--force")
    assert code == 0
    assert ini(top)["kubernetes"]["IMAGE"] == "my/image:1"
    assert ini(config)["service"]["REPLICAS"] == "3"
    assert ini(config)["default"]["INPUTS"] == "model, species"  # derived: not kept


def test_edited_generated_files_are_backed_up(cli: CLI, iris: Path) -> None:
    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    script = out / "stage-1-train" / "train.py"
    stage_nb = out / "stage-2-serve" / "serve.ipynb"
    edited_script = script.read_text() + "\n# my note\n"
    script.write_text(edited_script)
    edited_nb = stage_nb.read_text().replace('"source": "def predict', '"source": "#x\\ndef predict')
    assert edited_nb != stage_nb.read_text()
    stage_nb.write_text(edited_nb)

    code, stdout, _ = cli("split", iris, "-o", out, "--force")
    assert code == 0
    assert "replaced your edited stage-1-train/train.py" in stdout
    assert "replaced your edited stage-2-serve/serve.ipynb" in stdout
    assert "# my note" not in script.read_text()  # regenerated
    backups = sorted((out / ".nb2prod" / "backup").iterdir())
    assert len(backups) == 1
    assert (backups[0] / "stage-1-train" / "train.py").read_text() == edited_script
    assert (backups[0] / "stage-2-serve" / "serve.ipynb").read_text() == edited_nb
    # files the user did not touch are not backed up
    assert sorted(p.relative_to(backups[0]).as_posix() for p in backups[0].rglob("*")
                  if p.is_file()) == ["stage-1-train/train.py", "stage-2-serve/serve.ipynb"]


def test_the_split_record_is_never_reported_as_an_edit(cli: CLI, iris: Path) -> None:
    """The record changes with the notebook; it is bookkeeping, not a file the user edited."""
    nbformat = import_nbformat()
    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    before = (out / "nb2prod.split.json").read_bytes()
    nb = nbformat.read(iris, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("extra = 1", metadata={"tags": ["skip"]}))
    nbformat.write(nb, iris)
    code, stdout, _ = cli("split", iris, "-o", out, "--force")
    assert code == 0, stdout
    assert (out / "nb2prod.split.json").read_bytes() != before  # it did change
    assert "nb2prod.split.json" not in stdout
    assert not (out / ".nb2prod" / "backup").exists()


def test_user_files_and_run_state_survive_a_resplit(cli: CLI, iris: Path) -> None:
    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    added = {
        "NOTES.md": b"my notes\n",
        "stage-1-train/extra_data.csv": b"a,b\n1,2\n",
        "stage-2-serve/static/logo.txt": b"logo\n",
        "docs/readme.txt": b"hello\n",
    }
    state = {
        ".nb2prod/artifacts/iris/runs/r1/train/model.joblib": b"\x00model",
        ".nb2prod/artifacts/iris/latest.json": b'{"run_id": "r1"}',
    }
    for rel, data in {**added, **state}.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    edit_notebook(iris, 5, "model = LogisticRegression(max_iter=max_iter + 1)\n"
                           "model.fit(X_train, y_train)\n")

    assert cli("split", iris, "-o", out, "--force")[0] == 0
    after = files(out)
    for rel, data in {**added, **state}.items():
        assert after.get(rel) == data, f"{rel} did not survive the re-split"
    assert "max_iter + 1" in (out / "stage-1-train" / "train.py").read_text()
    assert [p.name for p in iris.parent.iterdir() if p.name.startswith(".")] == []  # no temp dirs


def test_removed_stage_directory_disappears_on_resplit(tmp_path: Path) -> None:
    notebook = tmp_path / "wine.ipynb"
    shutil.copyfile(EXAMPLES / "wine_parallel.ipynb", notebook)
    out = tmp_path / "wine-pipeline"
    split_notebook(notebook, out)
    data = json.loads(notebook.read_text())
    data["cells"][5]["metadata"]["tags"] = []  # train_logreg joins train_forest
    data["cells"][6]["source"] = "".join(data["cells"][6]["source"]).replace(
        '"logreg": logreg.score(X_test, y_test)', '"logreg": 0.0')
    notebook.write_text(json.dumps(data))
    split_notebook(notebook, out, force=True)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("stage-")) == [
        "stage-1-prepare", "stage-2-train_forest", "stage-3-evaluate", "stage-4-serve"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_pipeline_directory_mode_follows_the_umask_and_survives_a_resplit(
        iris: Path, umask: int) -> None:
    """The temp dir split writes into is mkdtemp's 0700; the pipeline must not inherit it."""
    out = iris.parent / "iris-pipeline"
    previous = os.umask(umask)
    try:
        split_notebook(iris, out)
    finally:
        os.umask(previous)
    expected = 0o777 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == expected
    assert stat.S_IMODE((out / "stage-1-train").stat().st_mode) == expected
    out.chmod(0o750)  # the user's choice is kept when split replaces the directory
    split_notebook(iris, out, force=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750


# -- --check ---------------------------------------------------------------------------------
def test_check_is_0_when_fresh_and_1_after_the_notebook_changes(cli: CLI, iris: Path) -> None:
    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    before = files(out)
    code, stdout, _ = cli("split", iris, "-o", out, "--check")
    assert code == 0, stdout
    assert "up to date" in stdout

    edit_notebook(iris, 1, "test_size = 0.3\nrandom_state = 42\nmax_iter = 200\n")
    code, _, stderr = cli("split", iris, "-o", out, "--check")
    assert code == 1
    assert "stale" in stderr
    assert "stage-1-train/train.ipynb" in stderr
    assert files(out) == before  # --check writes nothing

    cli("split", iris, "-o", out, "--force")
    assert cli("split", iris, "-o", out, "--check")[0] == 0


def test_run_of_a_stale_pipeline_stops_with_how_to_update(cli: CLI, iris: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`run DIR` notices the notebook changed since the split (nb2prod.ini SOURCE_SHA256)."""
    monkeypatch.chdir(iris.parent)
    out = Path("iris-pipeline")
    cli("split", "iris.ipynb")
    # Saved again with new outputs and execution counts only: the pipeline is still current.
    data = json.loads(iris.read_text())
    data["cells"][4]["execution_count"] = 7
    iris.write_text(json.dumps(data, indent=2))
    assert changed_source(out.resolve(), "../iris.ipynb", ini(out / "nb2prod.ini")[
        "project"]["SOURCE_SHA256"]) is None
    edit_notebook(iris, 1, "test_size = 0.3\nrandom_state = 42\nmax_iter = 200\n")
    code, stdout, stderr = cli("run", out, "--no-serve")
    assert code == 2, stdout + stderr
    assert stderr.strip() == (
        "nb2prod: error: iris-pipeline: stale: iris.ipynb changed since it was split; update "
        "with `nb2prod split iris.ipynb -o iris-pipeline --force` (your config.ini edits are "
        "kept), or run the notebook itself: `nb2prod run iris.ipynb`")
    assert not (out / ".nb2prod" / "artifacts").exists()  # nothing ran
    cli("split", "iris.ipynb", "-o", out, "--force")
    assert changed_source(out.resolve(), "../iris.ipynb", ini(out / "nb2prod.ini")[
        "project"]["SOURCE_SHA256"]) is None


def test_check_detects_a_deleted_generated_file(cli: CLI, iris: Path) -> None:
    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    (out / "stage-2-serve" / "app.py").unlink()
    code, _, stderr = cli("split", iris, "-o", out, "--check")
    assert code == 1 and "stage-2-serve/app.py" in stderr


def test_check_of_a_text_notebook_is_fresh_right_after_split(cli: CLI, tmp_path: Path) -> None:
    notebook = tmp_path / "diabetes.py"
    shutil.copyfile(EXAMPLES / "diabetes.py", notebook)
    out = tmp_path / "diabetes-pipeline"
    assert cli("split", notebook, "-o", out)[0] == 0
    code, _, stderr = cli("split", notebook, "-o", out, "--check")
    assert code == 0, stderr  # jupytext gives cells random ids: they must not leak into output


# -- --templates -----------------------------------------------------------------------------
def test_templates_dir_overrides_one_template_and_keeps_the_others(cli: CLI, iris: Path,
                                                                   tmp_path: Path) -> None:
    templates = tmp_path / "my_templates"
    templates.mkdir()
    (templates / "requirements.txt.j2").write_text(
        "# custom requirements for {{ stage.name }}\n"
        "{% for line in requirements %}\n{{ line }}\n{% endfor %}\n"
        "my-company-logging==1.0\n")
    default = iris.parent / "default-pipeline"
    custom = iris.parent / "custom-pipeline"
    assert cli("split", iris, "-o", default)[0] == 0
    assert cli("split", iris, "-o", custom, "--templates", templates)[0] == 0

    reqs = (custom / "stage-1-train" / "requirements.txt").read_text().splitlines()
    assert reqs[0] == "# custom requirements for train"
    assert reqs[-1] == "my-company-logging==1.0"
    assert [r for r in reqs[1:-1]] == [
        r for r in (default / "stage-1-train" / "requirements.txt").read_text().splitlines()
        if not r.startswith("#")]
    # every other file comes from the default templates
    for rel, data in files(default).items():
        if rel.endswith("requirements.txt") or rel.startswith(".nb2prod/") \
                or rel == "nb2prod.split.json":  # hashes of the files above
            continue
        if rel == "nb2prod.ini":
            assert files(custom)[rel].replace(b"custom-pipeline", b"default-pipeline") == data
            continue
        assert files(custom)[rel] == data, rel


def test_missing_templates_dir_is_a_user_error(cli: CLI, iris: Path) -> None:
    code, _, stderr = cli("split", iris, "-o", iris.parent / "out", "--templates",
                          iris.parent / "nope")
    assert code == 2
    assert "templates directory does not exist" in stderr
    assert not (iris.parent / "out").exists()


# -- a Kale-tagged notebook -------------------------------------------------------------------
def _closure(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    closure = set(edges)
    while True:
        more = {(a, d) for (a, b), (c, d) in itertools.product(closure, closure) if b == c}
        if more <= closure:
            return closure
        closure |= more


def test_kale_notebook_splits_unedited_into_kales_steps_and_edges(cli: CLI,
                                                                  tmp_path: Path) -> None:
    notebook = tmp_path / "kale_pipeline.ipynb"
    shutil.copyfile(KALE, notebook)
    out = tmp_path / "kale-pipeline"
    code, _, stderr = cli("split", notebook, "-o", out)
    assert code == 0, stderr
    assert "warning" not in stderr  # every Kale tag is understood

    # Kale's steps: block:load (+ the untagged cell below it), block:train, step:evaluate
    top = ini(out / "nb2prod.ini")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("stage-")) == [
        "stage-1-load", "stage-2-train", "stage-3-evaluate"]
    # Kale's edges come from prev: tags; nb2prod may add data edges Kale implies transitively
    kale_edges = {("load", "train"), ("train", "evaluate")}
    edges = {tuple(line.split(" >> ")) for line in top["workflow"]["DAG"].split("\n")}
    assert kale_edges <= edges
    assert _closure(edges) == _closure(kale_edges)

    stages = {name: ini(out / f"stage-{i}-{name}" / "config.ini")
              for i, name in enumerate(["load", "train", "evaluate"], start=1)}
    assert stages["train"]["default"]["INPUTS"] == "X_train, y_train"
    assert stages["evaluate"]["default"]["INPUTS"] == "X_test, model, y_test"
    assert stages["evaluate"]["default"]["METRICS"] == "accuracy"  # pipeline-metrics
    # limit:nvidia.com/gpu:1 and limit:memory:2Gi land in the train stage's config.ini
    assert stages["train"]["default"]["GPU"] == "1"
    assert stages["train"]["default"]["MEMORY_REQUEST_MB"] == "2048"
    assert stages["load"]["default"]["GPU"] == "0"

    for name, cells in {"load": [4, 5], "train": [7], "evaluate": [9, 10]}.items():
        i = ["load", "train", "evaluate"].index(name) + 1
        stage_nb = json.loads((out / f"stage-{i}-{name}" / f"{name}.ipynb").read_text())
        first = stage_nb["cells"][0]
        assert first["metadata"]["tags"] == ["parameters"]  # pipeline-parameters, for papermill
        assert first["source"] == "n_samples = 200\nseed = 7"
        sources = [c["source"] for c in stage_nb["cells"]]
        assert stage_nb["cells"][1]["metadata"]["tags"] == ["imports"]  # unused ones left out
        assert {line for line in sources[1].splitlines() if not line.startswith("#")} <= {
            "import numpy as np", "from sklearn.linear_model import LogisticRegression"}
        assert sources[2].startswith("def accuracy_of")  # functions
        by_id = stage_nb["metadata"]["nb2prod"]["source_cells_by_id"]
        assert sorted(i for i in by_id.values() if i > 3) == cells
        assert not any("exploration only" in s for s in sources)  # skip


# -- edits follow a renamed stage; comments; .ini backups; the committed record --------------------
def _retag(notebook: Path, cell: int, tags: list[str]) -> None:
    data = json.loads(notebook.read_text())
    data["cells"][cell]["metadata"]["tags"] = tags
    notebook.write_text(json.dumps(data, indent=1))


def test_renaming_a_stage_keeps_its_config_edits_comments_and_files(cli: CLI, iris: Path) -> None:
    out = iris.parent / "iris-pipeline"
    assert cli("split", iris, "-o", out)[0] == 0
    config = out / "stage-1-train" / "config.ini"
    text = config.read_text().replace("MEMORY_LIMIT_MB = 1000",
                                      "; the full data set needs more\nMEMORY_LIMIT_MB = 4000")
    edited = text.replace("RETRIES = 2", "RETRIES = 4 ; flaky network")
    config.write_text(edited)
    (out / "stage-1-train" / "lookup.csv").write_text("a,b\n")
    _retag(iris, 4, ["stage:fit"])

    code, stdout, stderr = cli("split", iris, "-o", out, "--force")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("stage-")) == [
        "stage-1-fit", "stage-2-serve"]  # no orphan left behind
    moved = out / "stage-1-fit" / "config.ini"
    assert ini(moved)["default"]["MEMORY_LIMIT_MB"] == "4000"
    assert ini(moved)["default"]["NAME"] == "fit"
    assert ini(moved)["batch"]["RETRIES"] == "4"
    lines = moved.read_text().splitlines()
    at = lines.index("MEMORY_LIMIT_MB = 4000")
    assert lines[at - 1] == "; the full data set needs more"  # the comment stays with its key
    assert "RETRIES = 4 ; flaky network" in lines
    assert (out / "stage-1-fit" / "lookup.csv").read_text() == "a,b\n"
    assert ("kept your edit: stage-1-fit/config.ini [default] MEMORY_LIMIT_MB "
            "(from stage-1-train/config.ini)") in stdout
    assert "stage directory stage-1-train is now stage-1-fit" in stdout
    # the edited .ini was backed up like any edited generated file
    backup = next((out / ".nb2prod" / "backup").iterdir()) / "stage-1-train" / "config.ini"
    assert backup.read_text() == edited
    # and a second split changes nothing and keeps everything
    before = files(out)
    assert cli("split", iris, "-o", out, "--force")[0] == 0
    assert {k: v for k, v in files(out).items() if not k.startswith(".nb2prod/")} == {
        k: v for k, v in before.items() if not k.startswith(".nb2prod/")}
    assert cli("split", iris, "-o", out, "--check")[0] == 0


def test_a_stage_that_is_gone_with_the_users_files_in_it_is_reported(cli: CLI,
                                                                     tmp_path: Path) -> None:
    notebook = tmp_path / "wine.ipynb"
    shutil.copyfile(EXAMPLES / "wine_parallel.ipynb", notebook)
    out = tmp_path / "wine-pipeline"
    assert cli("split", notebook, "-o", out)[0] == 0
    (out / "stage-3-train_logreg" / "results.csv").write_text("x\n")
    data = json.loads(notebook.read_text())
    data["cells"][5]["metadata"]["tags"] = []  # train_logreg joins train_forest
    data["cells"][6]["source"] = "".join(data["cells"][6]["source"]).replace(
        '"logreg": logreg.score(X_test, y_test)', '"logreg": 0.0')
    notebook.write_text(json.dumps(data))
    code, _, stderr = cli("split", notebook, "-o", out, "--force")
    assert code == 0, stderr
    assert ("stage-3-train_logreg/ is no longer a stage; kept for your files: results.csv"
            in stderr)
    assert (out / "stage-3-train_logreg" / "results.csv").read_text() == "x\n"
    assert not (out / "stage-3-train_logreg" / "config.ini").exists()


def test_comments_added_to_an_ini_survive_every_resplit(cli: CLI, iris: Path) -> None:
    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    top = out / "nb2prod.ini"
    text = top.read_text().replace("[kubernetes]", "; our cluster, see wiki/ml\n[kubernetes]")
    top.write_text(text + "; last line of mine\n")
    for _ in range(2):
        assert cli("split", iris, "-o", out, "--force")[0] == 0
        lines = top.read_text().splitlines()
        assert lines[lines.index("[kubernetes]") - 1] == "; our cluster, see wiki/ml"
        assert lines.count("; our cluster, see wiki/ml") == 1
        assert lines[-1] == "; last line of mine"
    assert cli("split", iris, "-o", out, "--check")[0] == 0


def test_config_edits_survive_a_fresh_clone(cli: CLI, tmp_path: Path) -> None:
    """The record is committed with the pipeline: .nb2prod/ is ignored and not in the clone."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(EXAMPLES / "iris.ipynb", repo / "iris.ipynb")
    out = repo / "iris-pipeline"
    cli("split", repo / "iris.ipynb", "-o", out)
    config = out / "stage-1-train" / "config.ini"
    config.write_text(config.read_text().replace("RETRIES = 2", "RETRIES = 6"))
    (repo / ".gitignore").write_text(".nb2prod/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "pipeline"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True,
                   capture_output=True)
    assert not (clone / "iris-pipeline" / ".nb2prod").exists()
    assert (clone / "iris-pipeline" / "nb2prod.split.json").is_file()

    code, stdout, _ = cli("split", clone / "iris.ipynb", "-o", clone / "iris-pipeline", "--force")
    assert code == 0
    assert ini(clone / "iris-pipeline" / "stage-1-train" / "config.ini")["batch"]["RETRIES"] == "6"
    assert "kept your edit: stage-1-train/config.ini [batch] RETRIES" in stdout


def test_split_says_which_cells_run_in_no_stage(cli: CLI, tmp_path: Path) -> None:
    nbformat = import_nbformat()
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell
    nb.cells = [nbformat.v4.new_markdown_cell("# title"),
                code("import json", metadata={"tags": ["imports"]}),
                code("data = json.loads('[1, 2]')\ndata"),  # exploration: ends the block
                code("x = 1", metadata={"tags": ["train"]}),
                code("print(x)", metadata={"tags": ["skip"]})]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    code_, out, _ = cli("split", tmp_path / "nb.ipynb")
    assert code_ == 0
    # numbered as JupyterLab counts cells (from 1, markdown included)
    assert "cells in no stage: 3 (before the first stage tag); 5 (tagged skip)" in out
    train = (tmp_path / "nb-pipeline" / "stage-1-train" / "train.py").read_text()
    assert "json.loads" not in train


def test_a_template_that_uses_an_unknown_variable_is_one_line(cli: CLI, iris: Path,
                                                              tmp_path: Path) -> None:
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "requirements.txt.j2").write_text("{{ no_such_variable }}\n")
    code, _, stderr = cli("split", iris, "-o", iris.parent / "out", "--templates", templates)
    assert code == 2
    assert stderr.strip() == (f"nb2prod: error: {templates / 'requirements.txt.j2'}: template "
                              "error: 'no_such_variable' is undefined")
    assert not (iris.parent / "out").exists()


def test_without_a_record_every_value_is_kept_and_every_replaced_file_backed_up(
        cli: CLI, iris: Path) -> None:
    """A pipeline copied without nb2prod.split.json: nothing of the user's may be lost."""
    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    (out / "nb2prod.split.json").unlink()
    config = out / "stage-1-train" / "config.ini"
    edited = config.read_text().replace("RETRIES = 2", "RETRIES = 3")
    config.write_text(edited)
    (out / "stage-1-train" / "extra.csv").write_text("x\n")
    _retag(iris, 4, ["stage:fit"])  # and the stage is renamed

    code, _, stderr = cli("split", iris, "-o", out, "--force")
    assert code == 0, stderr
    assert ini(out / "stage-1-fit" / "config.ini")["batch"]["RETRIES"] == "3"
    assert (out / "stage-1-fit" / "extra.csv").read_text() == "x\n"
    assert not (out / "stage-1-train").exists()
    backup = next((out / ".nb2prod" / "backup").iterdir())
    assert (backup / "stage-1-train" / "config.ini").read_text() == edited
    assert (out / "nb2prod.split.json").is_file()


def test_a_pipeline_split_by_an_older_nb2prod_keeps_its_edits(cli: CLI, iris: Path) -> None:
    """The record used to be `.nb2prod/split.json` (full sha256s, no stages): still read."""
    import hashlib

    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    record = json.loads((out / "nb2prod.split.json").read_text())
    legacy = {"files": {rel: hashlib.sha256((out / rel).read_bytes()).hexdigest()
                        for rel in record["files"]},
              "configs": record["configs"]}
    (out / ".nb2prod").mkdir(exist_ok=True)
    (out / ".nb2prod" / "split.json").write_text(json.dumps(legacy))
    (out / "nb2prod.split.json").unlink()
    config = out / "stage-1-train" / "config.ini"
    config.write_text(config.read_text().replace("RETRIES = 2", "RETRIES = 8"))
    script = out / "stage-1-train" / "train.py"

    code, stdout, _ = cli("split", iris, "-o", out, "--force")
    assert code == 0
    assert ini(config)["batch"]["RETRIES"] == "8"
    assert "kept your edit: stage-1-train/config.ini [batch] RETRIES" in stdout
    assert "train.py" not in stdout  # unedited: recognised by its full-length hash
    assert script.is_file()
    assert (out / "nb2prod.split.json").is_file()
    assert not (out / ".nb2prod" / "split.json").exists()  # migrated


def test_split_force_moves_an_old_layout_pipeline_to_one_runtime(cli: CLI, iris: Path) -> None:
    """The layout before issue 18: a `nb2prod_runtime.py` in every stage dir, recorded as
    generated.  `split --force` replaces them by `nb2prod_runtime/`, keeping the user's
    edits, files and run history (an edited runtime copy is backed up, never carried:
    beside the stage's code it would shadow the pipeline's runtime)."""
    from nb2prod.record import digest

    out = iris.parent / "iris-pipeline"
    cli("split", iris, "-o", out)
    shutil.rmtree(out / "nb2prod_runtime")
    record = json.loads((out / "nb2prod.split.json").read_text())
    record["files"] = {k: v for k, v in record["files"].items()
                       if not k.startswith("nb2prod_runtime/")}
    for stage in ("stage-1-train", "stage-2-serve"):
        old = b"# nb2prod stage runtime 0.0.9\nOLD = True\n"
        (out / stage / "nb2prod_runtime.py").write_bytes(old)
        record["files"][f"{stage}/nb2prod_runtime.py"] = digest(old)
    (out / "nb2prod.split.json").write_text(json.dumps(record))
    edited_runtime = out / "stage-2-serve" / "nb2prod_runtime.py"
    edited_runtime.write_text("# nb2prod stage runtime 0.0.9\nOLD = 'patched by hand'\n")
    config = out / "stage-1-train" / "config.ini"
    config.write_text(config.read_text().replace("RETRIES = 2", "RETRIES = 5"))
    (out / "stage-1-train" / "NOTES.md").write_text("mine\n")
    history = out / ".nb2prod" / "artifacts" / "iris" / "runs" / "r1" / "run.json"
    history.parent.mkdir(parents=True)
    history.write_text('{"status": "succeeded"}\n')

    code, stdout, stderr = cli("split", iris, "-o", out, "--force")
    assert code == 0, stderr
    assert not list(out.glob("stage-*/nb2prod_runtime.py"))
    assert (out / "nb2prod_runtime" / "__init__.py").is_file()
    assert ini(config)["batch"]["RETRIES"] == "5"
    assert (out / "stage-1-train" / "NOTES.md").read_text() == "mine\n"
    assert history.read_text() == '{"status": "succeeded"}\n'
    backup = next((out / ".nb2prod" / "backup").iterdir())
    assert "patched by hand" in (backup / "stage-2-serve" / "nb2prod_runtime.py").read_text()
    assert "stage-2-serve/nb2prod_runtime.py" in stdout
    code, _, _ = cli("split", iris, "-o", out, "--check")
    assert code == 0  # up to date in the new layout
