"""`nb2prod run` when things go wrong: a raising stage, the promotion gate, bad input,
`--stage`, and a tampered artifact.  Real CLI subprocesses, real HTTP.

tests/data/run/branches.ipynb: prepare -> (bad -> after_bad) and prepare -> good; `bad`
raises in notebook cell 4 when `fail_bad` is true; `good` records `total = sum(range(n))`.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_run_e2e import (
    EXAMPLES,
    RUN_DATA,
    RUN_TIMEOUT,
    SERVING_LINE,
    Command,
    clean_env,
    eventually_ready,
    file_store,
    free_port,
    http,
    latest_bytes,
    nb2prod,
    port_open,
    run_record,
    start_serving,
)

RUN_ID = re.compile(r"^run (?P<run_id>[0-9a-z-]+): \d+ batch stage", re.MULTILINE)


def run_id_of(output: str) -> str:
    match = RUN_ID.search(output)
    assert match, output
    return match["run_id"]


def runs_in_store(pipeline_dir: Path, name: str) -> set[str]:
    runs = file_store(pipeline_dir) / name / "runs"
    return {p.name for p in runs.iterdir()} if runs.is_dir() else set()


# --------------------------------------------------------------------------- a stage raises


@dataclass
class Branches:
    pipeline_dir: Path
    good_run: str
    latest_after_good: bytes
    failed: subprocess.CompletedProcess[str]
    failed_run: str


@dataclass
class Iris:
    work: Path
    pipeline_dir: Path
    good_run: str
    latest: bytes  # latest.json right after the good run
    gated: subprocess.CompletedProcess[str]  # a later run that misses MIN = 0.99


def prepare_iris(work: Path) -> Iris:
    """Split iris, run it (promoted), then set a gate it cannot pass and run it again."""
    shutil.copy(EXAMPLES / "iris.ipynb", work)
    split = nb2prod("split", "iris.ipynb", cwd=work)
    assert split.returncode == 0, split.stderr
    good = nb2prod("run", "iris-pipeline", "--no-serve", cwd=work)
    assert good.returncode == 0, good.stdout + good.stderr
    pipeline_dir = work / "iris-pipeline"
    latest = latest_bytes(pipeline_dir, "iris")
    set_promotion_gate(pipeline_dir, "accuracy", 0.99)
    gated = nb2prod("run", "iris-pipeline", "--no-serve", "--param", "max_iter=1", cwd=work)
    return Iris(work, pipeline_dir, run_id_of(good.stdout), latest, gated)


@pytest.fixture(scope="module")
def iris_future(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future[Iris]]:
    """The iris runs, started in the background so they overlap the branches runs.

    Each run is mostly one busy process at a time; two runs side by side use both cores.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(prepare_iris, tmp_path_factory.mktemp("iris-gate"))
        yield future


@pytest.fixture(scope="module")
def iris_good(iris_future: Future[Iris]) -> Iris:
    return iris_future.result(timeout=2 * RUN_TIMEOUT)


@pytest.fixture(scope="module")
def branches(tmp_path_factory: pytest.TempPathFactory,
             iris_future: Future[Iris]) -> Branches:
    # iris_future: start the iris runs first, so they overlap these.
    work = tmp_path_factory.mktemp("branches")
    shutil.copy(RUN_DATA / "branches.ipynb", work)
    split = nb2prod("split", "branches.ipynb", "-o", "pl", cwd=work)
    assert split.returncode == 0, split.stderr
    pipeline_dir = work / "pl"
    good = nb2prod("run", "pl", "--no-serve", "--jobs", "2", cwd=work)
    assert good.returncode == 0, good.stdout + good.stderr
    good_run = run_id_of(good.stdout)
    latest = latest_bytes(pipeline_dir, "branches")
    assert json.loads(latest)["run_id"] == good_run
    failed = nb2prod("run", "pl", "--no-serve", "--jobs", "2", "--param", "fail_bad=True",
                     "--param", "n=7", cwd=work)
    return Branches(pipeline_dir, good_run, latest, failed, run_id_of(failed.stdout))


def test_failing_stage_exits_1_naming_stage_cell_exception_and_report(branches: Branches) -> None:
    failed = branches.failed
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    lines = [line for line in failed.stderr.splitlines() if "stage 'bad' failed" in line]
    assert lines, failed.stderr
    message = lines[0]
    # The message is printed once: not again in the progress lines or the summary.
    output = failed.stdout + failed.stderr
    assert output.count("bad stage failed on purpose") == 1, output
    # Cell 5 of branches.ipynb raises (cell 4, the stage's first cell, ran fine): named as
    # JupyterLab's status bar counts cells (from 1, markdown included), with its first line.
    assert 'in cell 5 ("if fail_bad:"):' in message, message
    assert "ValueError: bad stage failed on purpose" in message
    see = re.search(r"\(see file://(?P<path>\S+)\)", message)
    assert see, message
    report = Path(see["path"])
    assert report.is_file() and report.suffix in (".html", ".ipynb")
    assert f"runs/{branches.failed_run}/bad/" in report.as_posix()
    assert "ValueError" in report.read_text()
    assert f"run {branches.failed_run} failed" in failed.stderr


def test_descendant_skipped_and_sibling_branch_finished(branches: Branches) -> None:
    record = run_record(branches.pipeline_dir, "branches", branches.failed_run)
    statuses = {name: stage["status"] for name, stage in record["stages"].items()}
    assert statuses == {"prepare": "done", "bad": "failed", "good": "done",
                        "after_bad": "skipped"}
    assert record["status"] == "failed" and record["promoted"] is False
    assert record["stages"]["after_bad"]["started"] is None  # never run
    assert record["stages"]["bad"]["ename"] == "ValueError"
    assert record["stages"]["bad"]["cell"] == 4
    run_dir = file_store(branches.pipeline_dir) / "branches" / "runs" / branches.failed_run
    assert not (run_dir / "after_bad").exists()
    # The sibling ran to the end on this run's data (n=7) and recorded its metric.
    assert json.loads((run_dir / "good" / "metrics.json").read_text()) == {"total": 21}
    assert record["metrics"] == {"good": {"total": 21}}


def test_failed_stage_keeps_executed_notebook_html_and_log(branches: Branches) -> None:
    stage_dir = (file_store(branches.pipeline_dir) / "branches" / "runs" / branches.failed_run
                 / "bad")
    executed = json.loads((stage_dir / "bad.ipynb").read_text())
    errors = [out for cell in executed["cells"] for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert [(e["ename"], e["evalue"]) for e in errors] == [
        ("ValueError", "bad stage failed on purpose")]
    html = (stage_dir / "bad.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "bad stage failed" in html
    # The stage log holds what the cells printed and why the stage failed, not the
    # kernel's start-up warnings.
    log = (stage_dir / "log.txt").read_text()
    assert "without encryption" not in log and "Executing Cell" not in log, log
    assert 'failed in cell 5 ("if fail_bad:"): ValueError: bad stage failed on purpose' in log
    good_log = (stage_dir.parent / "good" / "log.txt").read_text()
    assert good_log.splitlines()[0] == "21", good_log  # the bare `total` the cell shows
    good_dir = stage_dir.parent / "good"
    assert (good_dir / "good.ipynb").is_file() and (good_dir / "good.html").is_file()


def test_failed_run_does_not_move_latest(branches: Branches) -> None:
    assert latest_bytes(branches.pipeline_dir, "branches") == branches.latest_after_good
    listing = nb2prod("runs", branches.pipeline_dir, cwd=branches.pipeline_dir.parent)
    assert listing.returncode == 0, listing.stderr
    good_row = next(line for line in listing.stdout.splitlines() if branches.good_run in line)
    failed_row = next(line for line in listing.stdout.splitlines()
                      if branches.failed_run in line)
    assert "(latest)" in good_row and "succeeded" in good_row and "total=6" in good_row
    assert "(latest)" not in failed_row and "failed" in failed_row and "bad" in failed_row


def test_stage_option_runs_one_stage_with_inputs_from_latest(branches: Branches) -> None:
    before = runs_in_store(branches.pipeline_dir, "branches")
    result = nb2prod("run", branches.pipeline_dir, "--stage", "good",
                     cwd=branches.pipeline_dir.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    assert runs_in_store(branches.pipeline_dir, "branches") - before == {run_id}
    record = run_record(branches.pipeline_dir, "branches", run_id)
    assert list(record["stages"]) == ["good"]
    assert record["status"] == "succeeded" and record["promoted"] is False
    # `data` came from the latest *promoted* run (n=4: total 6), not from the more recent
    # failed run (n=7: total 21).
    assert record["metrics"] == {"good": {"total": 6}}
    run_dir = file_store(branches.pipeline_dir) / "branches" / "runs" / run_id
    assert sorted(p.name for p in run_dir.iterdir()) == ["good", "run.json"]
    assert latest_bytes(branches.pipeline_dir, "branches") == branches.latest_after_good


@pytest.mark.parametrize(("args", "expected"), [
    (("--param", "n=abc"), "parameter n='abc': expected int"),
    (("--param", "fail_bad=maybe"), "expected bool"),
    (("--param", "bogus=1"), "parameter 'bogus' is not in the notebook's parameters cell"),
    (("--param", "n"), "expected NAME=VALUE"),
    (("--stage", "nope"), "--stage nope: no such stage"),
])
def test_bad_input_exits_2_with_one_line(branches: Branches, args: tuple[str, ...],
                                         expected: str) -> None:
    before = runs_in_store(branches.pipeline_dir, "branches")
    result = nb2prod("run", branches.pipeline_dir, "--no-serve", *args,
                     cwd=branches.pipeline_dir.parent, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nb2prod: error: ") and expected in lines[0], lines[0]
    assert runs_in_store(branches.pipeline_dir, "branches") == before  # nothing ran


# --------------------------------------------------------------------------- promotion gate


def set_promotion_gate(pipeline_dir: Path, metric: str, minimum: float) -> None:
    ini = pipeline_dir / "nb2prod.ini"
    text, count = re.subn(r"^\[promotion\]\n", f"[promotion]\nMETRIC = {metric}\n"
                          f"MIN = {minimum}\n", ini.read_text(), flags=re.MULTILINE)
    assert count == 1
    ini.write_text(text)


def test_promotion_gate_keeps_previous_model_latest_and_served(iris_good: Iris) -> None:
    gated = iris_good.gated  # run with [promotion] METRIC = accuracy, MIN = 0.99
    assert gated.returncode == 1, gated.stdout + gated.stderr
    gated_run = run_id_of(gated.stdout)
    message = gated.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"nb2prod: run {gated_run} not promoted: accuracy = [0-9.]+ < "
                        r"minimum 0\.99 \(stage train\)", message), gated.stderr
    record = run_record(iris_good.pipeline_dir, "iris", gated_run)
    assert record["status"] == "succeeded" and record["promoted"] is False
    assert record["params"] == {"max_iter": 1}
    assert record["metrics"]["train"]["accuracy"] < 0.99
    assert latest_bytes(iris_good.pipeline_dir, "iris") == iris_good.latest

    # A later `--stage serve` serves the previous (promoted) model, token-protected.
    token = "s3cret-token"
    served = start_serving("run", "iris-pipeline", "--stage", "serve", cwd=iris_good.work,
                           pipeline_dir=iris_good.pipeline_dir,
                           env=clean_env(NB2PROD_API_TOKEN=token))
    try:
        assert served.served_run_id == iris_good.good_run
        auth = {"Authorization": f"Bearer {token}"}
        status, _, info = http(served.base + "/info", headers=auth)
        assert status == 200 and info["run_id"] == iris_good.good_run
        status, _, body = served.predict({"instances": [[5.1, 3.5, 1.4, 0.2]]}, headers=auth)
        assert (status, body) == (200, {"predictions": ["setosa"]})
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, head, body = served.predict({"instances": [[5.1, 3.5, 1.4, 0.2]]},
                                                headers=headers)
            assert status == 401 and body == {"error": "missing or invalid bearer token"}
            assert head["WWW-Authenticate"].startswith("Bearer")
        eventually_ready(served.base)  # probes need no token
    finally:
        assert served.command.stop(signal.SIGTERM) == 0, served.command.output
    assert not port_open(served.port)


def test_runs_and_the_panel_say_which_run_the_gate_held_back(iris_good: Iris) -> None:
    """`runs` tells "succeeded and promoted" (latest) from "succeeded, below the gate" (why);
    the panel's run list gets the same words."""
    from nb2prod.jupyter.runs import run_summary

    gated_run = run_id_of(iris_good.gated.stdout)
    done = nb2prod("runs", "iris-pipeline", cwd=iris_good.work)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[1]: line for line in done.stdout.splitlines()
            if line.startswith("│") and line.split()[1].startswith("2")}
    assert re.search(r"│ succeeded, not promoted: accuracy = [0-9.]+ < minimum 0\.99 "
                     r"\(stage train\) +│", rows[gated_run]), done.stdout
    assert re.search(rf"{iris_good.good_run} \(latest\) +│ succeeded +│",
                     rows[iris_good.good_run]), done.stdout
    record = run_record(iris_good.pipeline_dir, "iris", gated_run)
    assert run_summary(record, {})["verdict"] == rows[gated_run].split("succeeded, ")[1] \
        .split(" │")[0].strip()
    good = run_record(iris_good.pipeline_dir, "iris", iris_good.good_run)
    assert run_summary(good, {})["verdict"] == ""


def test_smoke_exits_1_when_the_run_misses_the_promotion_gate(iris_good: Iris) -> None:
    """--smoke still answers (from the promoted model) but the run failed its gate: exit 1."""
    port = free_port()
    done = nb2prod("run", "iris-pipeline", "--smoke", "--port", str(port),
                   "--param", "max_iter=1", cwd=iris_good.work)
    assert done.returncode == 1, done.stdout + done.stderr
    run_id = run_id_of(done.stdout)
    assert re.search(r"^POST /predict .* -> 200 ", done.stdout, re.MULTILINE), done.stdout
    assert f"serving serve (run {iris_good.good_run})" in done.stdout
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"nb2prod: run {run_id} not promoted: accuracy = "), done.stderr
    assert latest_bytes(iris_good.pipeline_dir, "iris") == iris_good.latest
    assert not port_open(port)


def test_tampered_artifact_is_refused_by_the_service(iris_good: Iris,
                                                     tmp_path: Path) -> None:
    copy = tmp_path / "iris-pipeline"
    shutil.copytree(iris_good.pipeline_dir, copy)
    stage_dir = file_store(copy) / "iris" / "runs" / iris_good.good_run / "train"
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    entry = manifest["artifacts"]["model"]
    model = stage_dir / entry["file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    model.write_bytes(bytes(data))

    port = free_port()
    command = Command("run", copy, "--stage", "serve", "--port", str(port), cwd=tmp_path)
    try:
        code = command.proc.wait(180)
    finally:
        command.stop()
    output = command.output
    assert code == 1, output
    assert not SERVING_LINE.search(output), output
    first = next(line for line in output.splitlines() if line.startswith("nb2prod: "))
    assert f"service at http://127.0.0.1:{port} failed to start" in first
    assert "ArtifactIntegrityError: artifact 'model' (stage 'train', " \
           f"run '{iris_good.good_run}') failed its integrity check" in first
    assert f"expected sha256 {entry['sha256']}" in first
    assert not port_open(port), "gunicorn left running after a refused start"
