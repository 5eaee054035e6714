"""The bad-input corpus (tests/data/bad/) through the real CLI, as a user runs it.

Each case runs `python -m nb2prod split NOTEBOOK -o out` in a fresh directory holding a
copy of the notebook and must: exit 2, print exactly the expected problems (one line per
problem, naming the file and the cell; never a traceback), and write nothing (no output
dir, an existing one unchanged, no temp dir left beside it).

The subprocesses of all cases are started together once per module (they are independent
and each spends most of its time importing), and each test checks one result.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BAD = Path(__file__).resolve().parent / "data" / "bad"
PREFIX = "nb2prod: error: "


@dataclass(frozen=True)
class Case:
    notebook: str
    expected: tuple[str, ...]  # stderr lines; a line starting with "re:" is a regex
    setup: str = ""  # "dir" | "file" | "pipeline": what exists at `out` before the run
    args: tuple[str, ...] = ()


CASES = {
    "corrupt_json": Case("corrupt_json.ipynb", (
        r"re:corrupt_json\.ipynb: not a notebook: invalid JSON \(.+ line \d+ column \d+.*\)",)),
    "json_but_not_a_notebook": Case("not_a_notebook.ipynb", (
        "not_a_notebook.ipynb: not a notebook: no 'cells' in the JSON",)),
    "two_stage_tags": Case("two_stage_tags.ipynb", (
        "two_stage_tags.ipynb, cell 2 (\"x = 1\"): two stage tags on one cell: 'train' and 'stage:evaluate'",)),
    "name_never_provided": Case("never_provided.ipynb", (
        ("never_provided.ipynb, cell 3 (\"score = np.mean(X_test)\"): stage 'evaluate' reads "
        "'X_test' but no earlier cell defines it"),)),
    "after_cycle": Case("after_cycle.ipynb", (
        (r"re:after_cycle\.ipynb, cell \d \(\"[^\"]*\"\): cycle in stage DAG: "
        r"(load >> train >> report >> load|train >> report >> load >> train|"
        r"report >> load >> train >> report)"),)),
    "serve_without_predict": Case("serve_without_predict.ipynb", (
        "serve_without_predict.ipynb, cell 2 (\"def handle(payload):\"): service stage 'serve' must define predict(payload)",)),
    "star_import": Case("star_import.ipynb", (
        ("star_import.ipynb, cell 1 (\"from math import *\"): star import (line 1) hides which names are used; import "
        "the names explicitly"),)),
    "unresolvable_import": Case("unresolvable_import.ipynb", (
        ("unresolvable_import.ipynb, cell 2 (\"import json\"): import 'nb2prod_no_such_module_xyz' is not "
        "installed here, so its version cannot be pinned: install it, or add "
        "'nb2prod_no_such_module_xyz = DISTRIBUTION==VERSION' (empty value: leave it out) "
        "under [requirements] in nb2prod.ini"),)),
    "empty_notebook": Case("empty.ipynb", ("empty.ipynb: the notebook has no code cells",)),
    "markdown_only": Case("markdown_only.ipynb", (
        "markdown_only.ipynb: the notebook has no code cells",)),
    "no_stage_tags": Case("no_stage_tags.ipynb", (
        ("no_stage_tags.ipynb: no stage tags: tag the first cell of each stage with "
        "'stage:NAME', 'train' or 'serve'"),)),
    "syntax_error": Case("syntax_error.ipynb", (
        "syntax_error.ipynb, cell 2 (\"y = = x\"): not valid Python: invalid syntax (line 1)",)),
    "several_problems_at_once": Case("several_problems.ipynb", (
        ("several_problems.ipynb, cell 1 (\"x = 1\"): tag 'stage:Load': stage names use lowercase letters, "
        "digits, '-' and '_' (at most 40); try 'stage:load'"),
        ("several_problems.ipynb, cell 2 (\"y = 2\"): tag 'cpu:lots': CPU quantity like '500m' or '2' "
        "expected"))),
    "missing_notebook": Case("does_not_exist.ipynb", (
        "does_not_exist.ipynb: no such notebook file",)),
    "output_dir_exists_not_a_pipeline": Case("ok.ipynb", (
        "out: exists and is not an nb2prod pipeline; choose another -o",), setup="dir"),
    "output_dir_exists_not_a_pipeline_even_with_force": Case("ok.ipynb", (
        "out: exists and is not an nb2prod pipeline; choose another -o",), setup="dir",
        args=("--force",)),
    "output_is_an_existing_file": Case("ok.ipynb", (
        r"re:out: .*(not a directory|exists).*",), setup="file", args=("--force",)),
    "output_pipeline_exists_without_force": Case("ok.ipynb", (
        ("out: output directory exists; use --force to update it (your config.ini edits "
        "are kept)"),), setup="pipeline"),
}


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    before: dict[str, bytes]
    after: dict[str, bytes] = field(default_factory=dict)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): (b"<dir>" if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NB2PROD_")}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "nb2prod", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120,
                          check=False)


def _prepare(case: Case, workdir: Path) -> None:
    workdir.mkdir(parents=True)
    if (BAD / case.notebook).exists():
        shutil.copyfile(BAD / case.notebook, workdir / case.notebook)
    out = workdir / "out"
    if case.setup == "dir":
        out.mkdir()
        (out / "results.csv").write_text("a,b\n1,2\n")
    elif case.setup == "file":
        out.write_text("not a directory\n")
    elif case.setup == "pipeline":
        shutil.copyfile(BAD / "ok.ipynb", workdir / "seed.ipynb")
        done = _run(["split", "seed.ipynb", "-o", "out"], workdir)
        assert done.returncode == 0, done.stderr
        (out / "stage-1-train" / "config.ini").write_text("[batch]\nRETRIES = 9\n")


def _execute(name: str, case: Case, workdir: Path) -> Result:
    _prepare(case, workdir)
    before = _snapshot(workdir)
    done = _run(["split", case.notebook, "-o", "out", *case.args], workdir)
    return Result(done.returncode, done.stdout, done.stderr, before, _snapshot(workdir))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    root = tmp_path_factory.mktemp("bad")
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_execute, name, case, root / name)
                   for name, case in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


def test_corpus_files_exist() -> None:
    for case in CASES.values():
        if case.notebook != "does_not_exist.ipynb":
            assert (BAD / case.notebook).is_file(), case.notebook


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2(results: dict[str, Result], name: str) -> None:
    result = results[name]
    assert result.code == 2, f"exit {result.code}\nstdout: {result.stdout}\nstderr: {result.stderr}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_message_is_one_line_per_problem(results: dict[str, Result], name: str) -> None:
    result = results[name]
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    expected = CASES[name].expected
    assert len(lines) == len(expected), result.stderr
    for line, want in zip(lines, expected):
        assert line.startswith(PREFIX), line
        message = line[len(PREFIX):]
        if want.startswith("re:"):
            assert re.fullmatch(want[3:], message), f"{message!r} !~ {want[3:]!r}"
        else:
            assert message == want
    assert "pipeline written" not in result.stdout


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_writes_nothing(results: dict[str, Result], name: str) -> None:
    result = results[name]
    assert result.after == result.before, (
        f"changed: {sorted(set(result.after) ^ set(result.before))} "
        f"{[k for k in result.before if result.after.get(k) != result.before[k]]}")


def test_good_notebook_of_the_corpus_splits(tmp_path: Path) -> None:
    """The control: ok.ipynb, run the same way, exits 0 and writes the pipeline."""
    shutil.copyfile(BAD / "ok.ipynb", tmp_path / "ok.ipynb")
    done = _run(["split", "ok.ipynb", "-o", "out"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "nb2prod.ini").is_file()
    assert (tmp_path / "out" / "stage-1-train" / "train.ipynb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.ipynb", "out"]
