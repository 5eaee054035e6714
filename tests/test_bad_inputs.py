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

from tests.environ import without_nb2prod_settings

BAD = Path(__file__).resolve().parent / "data" / "bad"
PREFIX = "nb2prod: error: "


@dataclass(frozen=True)
class Case:
    notebook: str
    expected: tuple[str, ...]  # stderr lines; a line starting with "re:" is a regex
    setup: str = ""  # "dir" | "file" | "pipeline" | "afile" | "dangling" | "templates"
    args: tuple[str, ...] = ()
    output: str = "out"
    source: str = ""  # corpus file copied to `notebook` [the same name]


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
    "parameters_read_a_function": Case("parameters_read_a_function.ipynb", (
        ("parameters_read_a_function.ipynb, cell 2 (\"DATA_DIR = str(default_data_dir())\"): "
         "the parameters cell reads 'default_data_dir', which is neither a parameter nor an "
         "import: every stage runs its parameters cell first; move the code that needs "
         "'default_data_dir' to a later cell"),)),
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
    "expression_of_600_terms": Case("deep_expression.ipynb", (
        ("deep_expression.ipynb, cell 2 (\"y = x + x + x + x + x + x + x + x + x + x + x + x + "
         "x + x +…\"): code nested too deeply to analyse (an expression of hundreds of "
         "terms?); split it into smaller statements"),)),
    "broken_jinja_in_templates": Case("ok.ipynb", (
        ("tpl/config.ini.j2: template error: Expected an expression, got 'end of statement "
         "block', line 2"),), setup="templates",
        args=("--templates", "tpl")),
    "output_under_a_file": Case("ok.ipynb", (
        r"re:afile/sub: /.*/afile is not a directory",), setup="afile", output="afile/sub"),
    "output_is_a_dangling_symlink": Case("ok.ipynb", (
        ("out: is a symlink to a missing path (gone/pipeline); remove it or point it at a "
         "directory"),), setup="dangling"),
    "newline_in_the_notebook_name": Case("bad\nname.ipynb", (
        (r"re:/.*/bad\\nname\.ipynb: the notebook path contains a control character "
         r"\(a newline\?\); rename it"),), source="ok.ipynb"),
}


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    before: dict[str, bytes]
    after: dict[str, bytes] = field(default_factory=dict)


def _snapshot(root: Path) -> dict[str, bytes]:
    def content(p: Path) -> bytes:
        if p.is_symlink():
            return b"<link>" + os.readlink(p).encode()
        return b"<dir>" if p.is_dir() else p.read_bytes()
    return {p.relative_to(root).as_posix(): content(p) for p in sorted(root.rglob("*"))
            if "__pycache__" not in p.parts}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = without_nb2prod_settings()
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "nb2prod", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120,
                          check=False)


def _prepare(case: Case, workdir: Path) -> None:
    workdir.mkdir(parents=True)
    if (BAD / (case.source or case.notebook)).exists():
        shutil.copyfile(BAD / (case.source or case.notebook), workdir / case.notebook)
    out = workdir / "out"
    if case.setup == "afile":
        (workdir / "afile").write_text("a file, not a directory\n")
    elif case.setup == "dangling":
        out.symlink_to("gone/pipeline")
    elif case.setup == "templates":
        (workdir / "tpl").mkdir()
        (workdir / "tpl" / "config.ini.j2").write_text("[default]\n{% for x in %}\n")
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
    done = _run(["split", case.notebook, "-o", case.output, *case.args], workdir)
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
            assert (BAD / (case.source or case.notebook)).is_file(), case.notebook


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


# -- bad config values and store files: refused by run/runs/deploy/render before any stage -------
IRIS = Path(__file__).resolve().parent.parent / "example_notebooks" / "iris.ipynb"
STAGE_INI = {"train": "stage-1-train/config.ini", "serve": "stage-2-serve/config.ini"}


def set_value(path: Path, section: str, key: str, value: str) -> None:
    """Set `key` in `[section]` of an .ini file by editing its text, as a user would."""
    text = path.read_text()
    line = re.compile(rf"^{key} = .*$", re.MULTILINE)
    if line.search(text):
        path.write_text(line.sub(lambda _: f"{key} = {value}", text, count=1))
    else:
        path.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{key} = {value}\n", 1))


@dataclass(frozen=True)
class PipelineCase:
    edit: tuple[str, str, str, str] | None  # (file, section, key, value) in the pipeline `p`
    args: tuple[str, ...]
    expected: str  # the one stderr line after the prefix; "re:" for a regex
    then: tuple[str, str, str, str] | None = None  # a second edit
    env: tuple[tuple[str, str], ...] = ()
    store_file: tuple[str, bytes] | None = None  # (path under the store, content)


def _ini(stage: str) -> str:
    return STAGE_INI.get(stage, "nb2prod.ini")


PIPELINE_CASES = {
    "store_scheme_unknown": PipelineCase(
        ("nb2prod.ini", "artifacts", "STORE", "ftp://x/y"), ("run", "p", "--no-serve"),
        "re:/.*/p/nb2prod.ini: \\[artifacts\\] STORE = 'ftp://x/y': scheme ftp:// is not "
        "supported \\(use file://, pvc://, s3://\\)"),
    "port_out_of_range": PipelineCase(
        (_ini("serve"), "service", "PORT", "99999"), ("run", "p", "--no-serve"),
        "re:/.*/p/stage-2-serve/config.ini: \\[service\\] PORT = '99999': expected a whole "
        "number from 1 to 65535"),
    "zero_workers": PipelineCase(
        (_ini("serve"), "service", "WORKERS", "0"), ("run", "p", "--no-serve"),
        "re:/.*/config.ini: \\[service\\] WORKERS = '0': expected a whole number from 1 to 64"),
    "route_shadows_healthz": PipelineCase(
        (_ini("serve"), "service", "ROUTE", "/healthz"), ("run", "p", "--no-serve"),
        "re:/.*/config.ini: \\[service\\] ROUTE = '/healthz': /healthz is served by nb2prod "
        "itself .*"),
    "promotion_min_not_a_number": PipelineCase(
        ("nb2prod.ini", "promotion", "MIN", "lots"), ("run", "p", "--no-serve"),
        "re:/.*/nb2prod.ini: \\[promotion\\] MIN = 'lots': expected a number",
        then=("nb2prod.ini", "promotion", "METRIC", "accuracy")),
    "zero_completion_time": PipelineCase(
        (_ini("train"), "batch", "MAX_COMPLETION_TIME_SECONDS", "0"), ("run", "p", "--no-serve"),
        "re:/.*/config.ini: \\[batch\\] MAX_COMPLETION_TIME_SECONDS = '0': expected a whole "
        "number of at least 1"),
    "grace_seconds_not_a_number": PipelineCase(
        ("nb2prod.ini", "kubernetes", "UNSCHEDULABLE_GRACE_SECONDS", "soon"),
        ("deploy", "p", "-n", "ml", "--dry-run"),
        "re:/.*/nb2prod.ini: \\[kubernetes\\] UNSCHEDULABLE_GRACE_SECONDS = 'soon': expected a "
        "number .*"),
    "image_with_space_and_newline": PipelineCase(
        None, ("deploy", "p", "-n", "ml", "--dry-run", "--image", "a b\nc"),
        "--image: control characters (a newline?) are not allowed"),
    "image_with_space": PipelineCase(
        None, ("render", "p", "-n", "ml", "--store", "s3://b/p", "--image", "a b"),
        "--image 'a b': expected an image reference like registry/name:tag (no spaces)"),
    "endpoint_url_with_credentials": PipelineCase(
        None, ("render", "p", "-n", "ml", "--store", "s3://b/p"),
        "AWS_ENDPOINT_URL: contains credentials (user:password@); give them as "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead",
        env=(("AWS_ENDPOINT_URL", "http://user:s3cr3t-pw@minio:9000"),)),
    "render_to_a_directory": PipelineCase(
        None, ("render", "p", "-n", "ml", "--store", "s3://b/p", "-o", "p"),
        "p: is a directory; give a file name for -o"),
    "render_to_a_missing_directory": PipelineCase(
        None, ("render", "p", "-n", "ml", "--store", "s3://b/p", "-o", "nowhere/all.yaml"),
        "nowhere/all.yaml: no such directory nowhere; create it first or choose another -o"),
    "runs_with_truncated_latest_json": PipelineCase(
        None, ("runs", "p"),
        "re:file:///.*/iris/latest.json is not valid JSON: .*",
        store_file=("iris/latest.json", b'{"run_id": ')),
    "run_with_latest_json_run_id_5": PipelineCase(
        None, ("run", "p", "--stage", "serve"),
        "re:file:///.*/iris/latest.json has no string 'run_id'",
        store_file=("iris/latest.json", b'{"run_id": 5}')),
    "runs_with_truncated_run_json": PipelineCase(
        None, ("runs", "p"),
        "re:file:///.*/iris/runs/r1/run.json is not valid JSON: .*",
        store_file=("iris/runs/r1/run.json", b'{"run_id": "r')),
    "runs_with_run_json_run_id_5": PipelineCase(
        None, ("runs", "p"),
        "re:file:///.*/iris/runs/r1/run.json is not the record of run r1 .*",
        store_file=("iris/runs/r1/run.json", b'{"run_id": 5}')),
}


def _non_utf8(p: Path) -> None:
    path = p / "stage-1-train" / "config.ini"
    path.write_bytes(path.read_bytes().replace(b"RETRIES = 2", b"RETRIES = 2 ; caf\xe9"))


@pytest.fixture(scope="module")
def split_iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("iris")
    shutil.copyfile(IRIS, base / "iris.ipynb")
    done = _run(["split", "iris.ipynb", "-o", "p"], base)
    assert done.returncode == 0, done.stderr
    return base


def _pipeline_case(base: Path, workdir: Path, case: PipelineCase | None) -> Result:
    shutil.copytree(base, workdir)
    p = workdir / "p"
    if case is None:
        _non_utf8(p)
        args: tuple[str, ...] = ("run", "p", "--no-serve")
    else:
        for edit in (case.edit, case.then):
            if edit:
                file, section, key, value = edit
                set_value(p / file, section, key, value)
        if case.store_file:
            rel, data = case.store_file
            path = p / ".nb2prod" / "artifacts" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        args = case.args
    before = _snapshot(workdir)
    env = dict(case.env) if case else {}
    done = _run_env(list(args), workdir, env)
    return Result(done.returncode, done.stdout, done.stderr, before, _snapshot(workdir))


def _run_env(args: list[str], cwd: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NB2PROD_", "AWS_ENDPOINT_URL"))}
    env.update(COLUMNS="200", **extra)
    return subprocess.run([sys.executable, "-m", "nb2prod", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def pipeline_results(split_iris: Path, tmp_path_factory: pytest.TempPathFactory
                     ) -> dict[str, Result]:
    root = tmp_path_factory.mktemp("bad-config")
    cases: dict[str, PipelineCase | None] = {**PIPELINE_CASES, "config_ini_not_utf8": None}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_pipeline_case, split_iris, root / name, case)
                   for name, case in cases.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", [*PIPELINE_CASES, "config_ini_not_utf8"])
def test_bad_config_or_store_file_is_one_line_exit_2_before_any_stage(
        pipeline_results: dict[str, Result], name: str) -> None:
    result = pipeline_results[name]
    assert result.code == 2, f"exit {result.code}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX)
    message = lines[0][len(PREFIX):]
    want = PIPELINE_CASES[name].expected if name in PIPELINE_CASES else (
        "re:/.*/p/stage-1-train/config.ini: not UTF-8 text: byte 0xe9 on line \\d+")
    if want.startswith("re:"):
        assert re.fullmatch(want[3:], message), f"{message!r} !~ {want[3:]!r}"
    else:
        assert message == want
    assert result.after == result.before  # nothing ran, nothing was written
    assert "s3cr3t-pw" not in result.stdout + result.stderr


def _as_non_root(work: Path) -> list[str]:
    """A command prefix that runs without root's power to write anywhere.

    The user `nobody` when this interpreter is readable by it; else (the
    interpreter lives under a 0700 /root) root without the capabilities that
    bypass file permissions, so the kernel checks them as for any user.  `work`
    is made read-only for whichever it is.
    """
    import pwd

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to start the split as a non-root "
                    "user")
    nobody = pwd.getpwnam("nobody")
    as_nobody = [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                 "--clear-groups"]
    probe = subprocess.run([*as_nobody, sys.executable, "-c", "import click, nbformat"],
                           capture_output=True, check=False, timeout=120)
    if probe.returncode == 0:
        work.chmod(0o755)  # owned by root: read-only for nobody
        return as_nobody
    caps = "-dac_override,-dac_read_search,-fowner"
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    work.chmod(0o555)  # owned by nobody, writable by no one
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_read_only_parent_directory_as_non_root(tmp_path: Path) -> None:
    """A split into a directory the user may not write: one line, exit 2, nothing written."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="nb2prod-ro-"))  # under /tmp: reachable by nobody
    try:
        shutil.copyfile(BAD / "ok.ipynb", work / "ok.ipynb")
        (work / "ok.ipynb").chmod(0o644)
        prefix = _as_non_root(work)
        env = without_nb2prod_settings()
        env.update(HOME=str(work), COLUMNS="200")
        done = subprocess.run([*prefix, sys.executable, "-m", "nb2prod", "split", "ok.ipynb"],
                              cwd=work, env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0] == f"{PREFIX}ok-pipeline: cannot write {work}: permission denied"
        assert sorted(p.name for p in work.iterdir()) == ["ok.ipynb"]
    finally:
        if os.geteuid() == 0:
            os.chown(work, 0, 0)
            work.chmod(0o755)
        shutil.rmtree(work)
