"""CLI basics: --help, --version, `check` writes nothing, and a light import of nb2prod.cli."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nb2prod
from tests.environ import without_nb2prod_settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_notebooks"
HEAVY = ("rich", "nbformat", "papermill", "kubernetes", "boto3", "botocore", "flask",
         "jupytext", "jinja2", "IPython", "numpy", "pandas", "sklearn", "gunicorn")


def nb2prod_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = without_nb2prod_settings()
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "nb2prod", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120,
                          check=False)


def test_help_lists_the_commands() -> None:
    done = nb2prod_cli("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: nb2prod")
    for command in ("split", "check", "run"):
        assert f"  {command} " in done.stdout
    assert done.stderr == ""


def test_split_help_lists_its_options() -> None:
    done = nb2prod_cli("split", "-h")
    assert done.returncode == 0, done.stderr
    for option in ("--output", "--force", "--check", "--templates"):
        assert option in done.stdout


def test_version() -> None:
    done = nb2prod_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"nb2prod, version {nb2prod.__version__}"


def test_console_script_is_installed() -> None:
    script = shutil.which("nb2prod")
    assert script is not None, "the nb2prod console script is not on PATH"
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and nb2prod.__version__ in done.stdout


def test_unknown_command_is_a_usage_error() -> None:
    done = nb2prod_cli("splitt", "x.ipynb")
    assert done.returncode == 2
    assert "No such command" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_prints_the_table_and_writes_nothing(tmp_path: Path) -> None:
    notebook = tmp_path / "wine_parallel.ipynb"
    shutil.copyfile(EXAMPLES / "wine_parallel.ipynb", notebook)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = nb2prod_cli("check", notebook.name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    out = done.stdout
    assert "can be split" in out
    for column in ("stage", "type", "cells", "inputs", "outputs", "requirements"):
        assert column in out
    for directory in ("stage-1-prepare", "stage-2-train_forest", "stage-3-train_logreg",
                      "stage-4-evaluate", "stage-5-serve"):
        assert directory in out
    assert "scikit-learn" in out
    assert "prepare >> train_forest" in out


def test_check_of_a_bad_notebook_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    notebook = tmp_path / "bad.ipynb"
    notebook.write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": "a", "outputs": [],
                   "metadata": {"tags": ["train"]}, "source": "y = undefined_name"}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    done = nb2prod_cli("check", notebook.name, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ('nb2prod: error: bad.ipynb, cell 1 ("y = undefined_name"): stage '
                                   "'train' reads "
                                   "'undefined_name' but no earlier cell defines it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ipynb"]


@pytest.mark.parametrize("module", ["nb2prod.cli", "nb2prod"])
def test_importing_the_cli_stays_light(module: str) -> None:
    code = (f"import sys, {module}\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing {module} imported: {done.stdout.strip()}"


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys\nfrom nb2prod.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('LOADED=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "LOADED="


@pytest.mark.parametrize(("command", "expected"), [
    ("runs", ("iris.ipynb: a notebook, not a pipeline directory; give its pipeline directory "
             "(iris-pipeline, written by `nb2prod split iris.ipynb`)")),
    ("runs-missing", "nope-pipeline: no such file or directory"),
    ("run", "nope.ipynb: no such file or directory"),
    ("status", ("empty: not a pipeline directory (no nb2prod.ini); run `nb2prod split NOTEBOOK` "
               "first")),
])
def test_a_notebook_or_a_missing_path_where_a_pipeline_is_expected_says_which(
        tmp_path: Path, command: str, expected: str) -> None:
    shutil.copy(EXAMPLES / "iris.ipynb", tmp_path)
    (tmp_path / "empty").mkdir()
    args = {"runs": ("runs", "iris.ipynb"), "runs-missing": ("runs", "nope-pipeline"),
            "run": ("run", "nope.ipynb"), "status": ("status", "empty", "-n", "ml")}[command]
    done = nb2prod_cli(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == f"nb2prod: error: {expected}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "iris.ipynb"]  # wrote nothing


#: What `run DIR --no-serve` of a fresh pipeline without services must leave unloaded: the
#: split (its analysis, renderer, templates), serving, papermill and nbconvert (the stage
#: worker's processes run the stages), the cluster clients.
NOT_FOR_A_RUN = ("nb2prod.split", "nb2prod.render", "nb2prod.runners.services", "nb2prod.serve",
                 "nb2prod.runners.kubernetes", "jinja2", "jupytext", "papermill", "nbconvert",
                 "kubernetes", "boto3", "flask", "gunicorn", "numpy", "pandas")


def test_run_of_a_split_pipeline_imports_only_what_running_needs(tmp_path: Path) -> None:
    """The runner's start is part of every run's overhead (benchmarks/bench_stage_overhead)."""
    notebook = {"cells": [
        {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]},
         "source": "n = 10", "outputs": [], "execution_count": None},
        {"cell_type": "code", "id": "w", "metadata": {"tags": ["stage:work"]},
         "source": "total = sum(range(n))", "outputs": [], "execution_count": None},
        {"cell_type": "code", "id": "m", "metadata": {"tags": ["metrics"]},
         "source": "total", "outputs": [], "execution_count": None}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "one.ipynb").write_text(json.dumps(notebook))
    assert nb2prod_cli("split", "one.ipynb", "-o", "pl", cwd=tmp_path).returncode == 0
    env = without_nb2prod_settings()
    env.update(NB2PROD_RUNTIME_DIR=str(tmp_path / "rt"), NB2PROD_WORKER="1")
    code = ("import sys\nfrom nb2prod.cli import main\n"
            "try:\n    main(['run', 'pl', '--no-serve'])\nexcept SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            f"print('LOADED=' + ','.join(m for m in {NOT_FOR_A_RUN!r} if m in sys.modules))")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
    finally:
        subprocess.run([sys.executable, "-m", "nb2prod", "worker", "stop"], env=env,
                       capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "LOADED="
