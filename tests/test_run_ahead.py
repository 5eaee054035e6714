"""Stage processes started ahead: the next stages' kernels boot while their inputs are
computed, get `go` when those are there, and are stopped (no leftovers) when they will
not run (an upstream failure, a cache hit)."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from nb2prod.pipeline import load_pipeline
from nb2prod.runners import local
from nb2prod.split import split_notebook

CELLS = [
    (["parameters"], "fail = False"),
    (["stage:first"], "x = 21\nassert not fail, 'failing on purpose'"),
    (["stage:second"], "y = x * 2"),
    (["metrics"], "answer = y"),
]


@pytest.fixture(autouse=True)
def own_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting ahead is how stages run without the stage worker (NB2PROD_WORKER=0, or
    when it is not available); with it, its warm processes do that job."""
    monkeypatch.setenv("NB2PROD_WORKER", "0")


@pytest.fixture()
def pipeline(tmp_path: Path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for tags, src in CELLS]
    nbformat.write(nb, tmp_path / "ahead.ipynb")
    split_notebook(tmp_path / "ahead.ipynb", tmp_path / "ahead")
    return load_pipeline(tmp_path / "ahead")


def run(pipeline, params: dict, use_cache: bool = True):
    runner = local.LocalRunner(pipeline, pipeline.store_uri(), params, 2, use_cache=use_cache)
    spawned: list[tuple[str, bool, float, local.StageProcess]] = []
    original = runner.spawn

    def spawn(name: str, input_run_id: str | None, wait: bool) -> local.StageProcess:
        started = original(name, input_run_id, wait)
        spawned.append((name, wait, time.time(), started))
        return started

    runner.spawn = spawn  # type: ignore[method-assign]
    result = local.run_batch(pipeline, store_uri=pipeline.store_uri(), params=params, jobs=2,
                             runner=runner)
    return runner, result, spawned


def test_the_next_stage_boots_while_its_input_is_computed(pipeline) -> None:
    runner, result, spawned = run(pipeline, {})
    assert result.status == "succeeded" and result.metrics["second"]["answer"] == 42
    assert [(n, w) for n, w, _, _ in spawned] == [("first", False), ("second", True)]
    assert spawned[1][2] < runner.states["first"].finished  # started before its input existed
    assert runner.ahead == {} and runner.processes == {}
    for _, _, _, started in spawned:
        assert started.proc.returncode == 0 and not started.work.exists()


def test_a_stage_that_will_not_run_has_its_process_stopped(pipeline) -> None:
    runner, result, spawned = run(pipeline, {"fail": True})
    assert result.status == "failed"
    assert runner.states["second"].state == "skipped"
    ahead = [s for n, w, _, s in spawned if w]
    assert len(ahead) == 1
    assert ahead[0].proc.returncode == 0  # told to stop, exited cleanly (kernel stopped)
    assert not ahead[0].work.exists() and runner.ahead == {} and runner.processes == {}
