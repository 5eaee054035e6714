"""`split --force` under faults: kill -9 at every dangerous moment, two splits at once.

Each test runs the real CLI (`python -m nb2prod split`) as a subprocess.  The
moment to kill is reached deterministically through nb2prod's test pause points
(`nb2prod.faults`): the process announces it has reached the point by creating
a marker file and waits there; the test then kills it with SIGKILL.  After the
kill the run history must be exactly where and what it was, and the next split
must finish or clean up what the killed one left and leave a correct pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nb2prod.errors import UserError
from nb2prod.pipeline import load_pipeline
from tests.environ import without_nb2prod_settings

REPO = Path(__file__).resolve().parent.parent
IRIS = REPO / "example_notebooks" / "iris.ipynb"
WAIT_LIMIT = 300.0  # seconds; only a hung process gets near it

HISTORY = {
    ".nb2prod/artifacts/iris/runs/r1/train/model.joblib": b"\x00model bytes",
    ".nb2prod/artifacts/iris/runs/r1/run.json": b'{"run_id": "r1", "status": "succeeded"}',
    ".nb2prod/artifacts/iris/latest.json": b'{"run_id": "r1"}',
    ".nb2prod/runs/r1.log": b"log\n",
}


def _env(pause_at: str | None = None, marker: Path | None = None) -> dict[str, str]:
    env = without_nb2prod_settings()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "200"
    if pause_at:
        env["NB2PROD_TEST_PAUSE_AT"] = pause_at
        env["NB2PROD_TEST_PAUSE_FILE"] = str(marker)
    return env


def _split(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nb2prod", "split", *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=WAIT_LIMIT,
                          check=False)


class Paused:
    """A `split` subprocess that stops at a pause point; always killed at the end."""

    def __init__(self, cwd: Path, args: list[str], point: str) -> None:
        self.marker = cwd.parent / f"pause-{point}-{time.monotonic_ns()}"
        self.stderr = cwd.parent / f"{self.marker.name}.stderr"
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nb2prod", "split", *args], cwd=cwd,
                env=_env(point, self.marker), stdout=subprocess.DEVNULL, stderr=err)

    def reached(self) -> None:
        """Block until the process is paused at its point (fails if it ends first)."""
        deadline = time.monotonic() + WAIT_LIMIT
        while not self.marker.exists():
            code = self.proc.poll()
            assert code is None, f"split ended ({code}) before its pause point: " \
                                 f"{self.stderr.read_text()}"
            assert time.monotonic() < deadline, "split never reached its pause point"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=WAIT_LIMIT)

    def resume(self) -> None:
        self.marker.with_name(self.marker.name + ".go").write_text("go")


@pytest.fixture
def started() -> Iterator[list[Paused]]:
    processes: list[Paused] = []
    yield processes
    for paused in processes:
        paused.kill()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    """iris split once, with run history, an edited value and a file the user added;
    then the notebook changes, so the next split rewrites every stage."""
    work = tmp_path / "work"
    work.mkdir()
    notebook = work / "iris.ipynb"
    shutil.copyfile(IRIS, notebook)
    done = _split(work, "iris.ipynb")
    assert done.returncode == 0, done.stderr
    out = work / "iris-pipeline"
    for rel, data in HISTORY.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    config = out / "stage-1-train" / "config.ini"
    config.write_text(config.read_text().replace("RETRIES = 2", "RETRIES = 7"))
    (out / "stage-1-train" / "my_notes.txt").write_text("mine\n")
    data = json.loads(notebook.read_text())
    data["cells"][1]["source"] = "test_size = 0.25\nrandom_state = 42\nmax_iter = 200"
    notebook.write_text(json.dumps(data, indent=1))
    return out


def _assert_history_intact(out: Path) -> None:
    after = _files(out)
    for rel, data in HISTORY.items():
        assert after.get(rel) == data, f"run history {rel} lost or changed"


def _assert_good_pipeline(out: Path, work: Path | None = None) -> None:
    """Everything a correct split of the edited notebook gives, the user's work included."""
    work = work or out.parent
    _assert_history_intact(out)
    assert "test_size = 0.25" in (out / "stage-1-train" / "train.py").read_text()
    assert "RETRIES = 7" in (out / "stage-1-train" / "config.ini").read_text()
    assert (out / "stage-1-train" / "my_notes.txt").read_text() == "mine\n"
    assert not [p.name for p in (out / ".nb2prod").iterdir() if p.name.startswith("split-")]
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]
    assert load_pipeline(out).order == ["train", "serve"]
    check = _split(work, "iris.ipynb", "--check")
    assert check.returncode == 0, check.stderr


# iris gives 4 swapped entries: two stage dirs, nb2prod.ini, the record
POINTS = ["staged", "committed", "swapped-1", "swapped-2", "swapped-3", "swapped-4",
          "swapped-all"]


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_during_split_force_loses_nothing(pipeline: Path, started: list[Paused],
                                                  point: str) -> None:
    paused = Paused(pipeline.parent, ["iris.ipynb", "--force"], point)
    started.append(paused)
    paused.reached()
    paused.kill()
    assert paused.proc.returncode == -signal.SIGKILL

    _assert_history_intact(pipeline)  # local state never left its place
    if point != "staged":
        with pytest.raises(UserError, match="interrupted"):
            load_pipeline(pipeline)  # half-swapped: refused, not run

    again = _split(pipeline.parent, "iris.ipynb", "--force")
    assert again.returncode == 0, again.stderr
    assert "interrupted split" in again.stderr
    _assert_good_pipeline(pipeline)


def test_kill_9_during_a_first_split_leaves_nothing_the_next_one_does_not_clean(
        tmp_path: Path, started: list[Paused]) -> None:
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    shutil.copyfile(IRIS, tmp_path / "iris.ipynb")
    paused = Paused(tmp_path, ["iris.ipynb"], "fresh-staged")
    started.append(paused)
    paused.reached()
    paused.kill()
    assert not (tmp_path / "iris-pipeline").exists()  # never half-written
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".iris-pipeline.tmp-")]
    assert len(leftovers) == 1

    again = _split(tmp_path, "iris.ipynb")
    assert again.returncode == 0, again.stderr
    assert f"removed {leftovers[0]}, left by an interrupted split" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iris-pipeline", "iris.ipynb"]


def test_two_splits_at_once_the_second_waits_then_finishes_the_killed_first(
        pipeline: Path, started: list[Paused]) -> None:
    first = Paused(pipeline.parent, ["iris.ipynb", "--force"], "committed")
    started.append(first)
    first.reached()  # holds the lock, half-way through its swaps
    second = Paused(pipeline.parent, ["iris.ipynb", "--force"], "never-reached")
    started.append(second)
    deadline = time.monotonic() + WAIT_LIMIT
    while "waiting for it to finish" not in second.stderr.read_text():
        assert second.proc.poll() is None, second.stderr.read_text()
        assert time.monotonic() < deadline, "the second split never said it waits"
        time.sleep(0.02)
    assert second.proc.poll() is None  # waiting, not writing
    _assert_history_intact(pipeline)

    first.kill()
    assert second.proc.wait(timeout=WAIT_LIMIT) == 0, second.stderr.read_text()
    assert "finished an interrupted split" in second.stderr.read_text()
    _assert_good_pipeline(pipeline)


def test_two_splits_at_once_both_succeed_one_after_the_other(
        pipeline: Path, started: list[Paused]) -> None:
    first = Paused(pipeline.parent, ["iris.ipynb", "--force"], "staged")
    started.append(first)
    first.reached()
    second = Paused(pipeline.parent, ["iris.ipynb", "--force"], "never-reached")
    started.append(second)
    deadline = time.monotonic() + WAIT_LIMIT
    while "waiting for it to finish" not in second.stderr.read_text():
        assert second.proc.poll() is None, second.stderr.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.resume()
    assert first.proc.wait(timeout=WAIT_LIMIT) == 0
    assert second.proc.wait(timeout=WAIT_LIMIT) == 0, second.stderr.read_text()
    assert "interrupted" not in second.stderr.read_text()
    _assert_good_pipeline(pipeline)


def test_a_split_that_must_not_wait_fails_with_one_line(pipeline: Path) -> None:
    """What the JupyterLab handler does: refuse at once while another split writes."""
    from nb2prod import writer
    from nb2prod.split import split_notebook

    with writer.locked(pipeline, pipeline), pytest.raises(UserError) as info:
        split_notebook(pipeline.parent / "iris.ipynb", force=True, wait=False)
    assert len(info.value.problems) == 1
    assert "another nb2prod split is writing" in str(info.value)
    _assert_history_intact(pipeline)


# -- leftovers of nb2prod versions that swapped the whole directory ----------------------------
def test_history_left_in_an_old_style_temp_dir_is_moved_back(pipeline: Path) -> None:
    leftover = pipeline.parent / ".iris-pipeline.tmp-k1ll3d"
    (leftover / ".nb2prod").mkdir(parents=True)
    (pipeline / ".nb2prod" / "artifacts").rename(leftover / ".nb2prod" / "artifacts")
    (leftover / "nb2prod.ini").write_text("[project]\n")
    done = _split(pipeline.parent, "iris.ipynb", "--force")
    assert done.returncode == 0, done.stderr
    assert "moved its run history back" in done.stderr
    _assert_good_pipeline(pipeline)


def test_a_pipeline_renamed_away_by_a_killed_old_style_swap_is_restored(pipeline: Path) -> None:
    pipeline.rename(pipeline.parent / ".iris-pipeline.old-1764000000000")
    done = _split(pipeline.parent, "iris.ipynb", "--force")
    assert done.returncode == 0, done.stderr
    assert "restored" in done.stderr
    _assert_good_pipeline(pipeline)


# -- a pipeline on another filesystem, reached through a symlink -------------------------------
def test_output_symlinked_to_another_filesystem_can_be_split_again(pipeline: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == pipeline.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) on this machine")
    elsewhere = Path(__import__("tempfile").mkdtemp(dir=shm))
    try:
        real = elsewhere / "iris-pipeline"
        shutil.move(str(pipeline), real)
        pipeline.symlink_to(real)
        for _ in range(2):
            done = _split(pipeline.parent, "iris.ipynb", "--force")
            assert done.returncode == 0, done.stderr
        assert pipeline.is_symlink()
        _assert_good_pipeline(real, pipeline.parent)
    finally:
        if pipeline.is_symlink():
            pipeline.unlink()
        shutil.rmtree(elsewhere)
