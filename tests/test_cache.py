"""Stage caching through the real CLI: hits, misses on each key part, `no-cache`, `--no-cache`,
broken cache entries, and that a cached run promotes exactly like a full run.

The notebook is ours: `load` -> `fit` (metric `score`) -> `report`, where `report` is
tagged `no-cache` (it stamps the time, like a stage reading live data).  The runs of
the module build on each other (each one costs real papermill kernels), so they happen
in one fixture, in order, and the tests check what each run did.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from nb2prod import artifacts, cache, graph
from nb2prod.pipeline import load_pipeline
from tests.test_run_e2e import nb2prod

CELLS = [
    (["parameters"], "scale = 2\nunused = 'x'"),
    (["imports"], "import time"),
    (["stage:load"], "data = [1, 2, 3, 4, 5]"),
    (["stage:fit"], "weights = [x * scale for x in data]\nopen(\"scratch.txt\", \"w\").write(\"x\")"),
    (["metrics"], "score = sum(weights) / 100"),
    (["stage:report", "no-cache"], "summary = {'total': sum(weights), 'at': time.time()}"),
]
RUN_ID = re.compile(r"^run (?P<run_id>[0-9a-z-]+): \d+ batch stage", re.MULTILINE)
STAGES = ("load", "fit", "report")


def write_notebook(path: Path, cells: list[tuple[list[str], str]] = CELLS) -> None:
    """A notebook of code cells, each (tags, source)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for tags, src in cells]
    nbformat.write(nb, path)


@dataclass
class Run:
    run_id: str
    code: int
    stdout: str
    stderr: str
    record: dict = field(default_factory=dict)

    def states(self) -> dict[str, str]:
        return {n: s["status"] for n, s in self.record["stages"].items()}

    def cached_from(self) -> dict[str, str | None]:
        return {n: s.get("cached_from") for n, s in self.record["stages"].items()}


@dataclass
class Session:
    work: Path
    pipeline_dir: Path
    runs: dict[str, Run] = field(default_factory=dict)
    latest_after: dict[str, str | None] = field(default_factory=dict)

    @property
    def store(self) -> artifacts.Store:
        return artifacts.open_store(load_pipeline(self.pipeline_dir).store_uri())

    def run(self, label: str, *args: str) -> Run:
        done = nb2prod("run", self.pipeline_dir, "--no-serve", "--jobs", "2", *args,
                       cwd=self.work)
        match = RUN_ID.search(done.stdout)
        assert match, done.stdout + done.stderr
        run = Run(match["run_id"], done.returncode, done.stdout, done.stderr)
        run.record = artifacts.read_json(self.store, f"p/runs/{run.run_id}/run.json")
        self.runs[label] = run
        latest = artifacts.read_latest(self.store, "p")
        self.latest_after[label] = latest["run_id"] if latest else None
        return run


def set_gate(pipeline_dir: Path, minimum: float) -> None:
    ini = pipeline_dir / "nb2prod.ini"
    text = re.sub(r"(?m)^\[promotion\]\n(;.*\n|METRIC.*\n|MIN.*\n)*",
                  f"[promotion]\nMETRIC = score\nMIN = {minimum}\n", ini.read_text())
    ini.write_text(text)


def cached_artifact(session: Session, stage: str, name: str) -> Path:
    """The file of artifact `name` in the run the cache index names for `stage`."""
    index = sorted((session.pipeline_dir / ".nb2prod/artifacts/p/cache" / stage).glob("*.json"))
    assert len(index) == 1, index
    source = json.loads(index[0].read_text())["run_id"]
    manifest = json.loads((session.pipeline_dir / f".nb2prod/artifacts/p/runs/{source}/{stage}"
                           "/manifest.json").read_text())
    return (session.pipeline_dir / f".nb2prod/artifacts/p/runs/{source}/{stage}"
            / manifest["artifacts"][name]["file"])


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    work = tmp_path_factory.mktemp("cache")
    write_notebook(work / "p.ipynb")
    done = nb2prod("split", "p.ipynb", "-o", "p", cwd=work)
    assert done.returncode == 0, done.stderr
    s = Session(work, work / "p")
    set_gate(s.pipeline_dir, 0.1)
    s.run("full")
    s.run("cached")
    set_gate(s.pipeline_dir, 100)
    s.run("cached-gate-fails")
    s.run("full-gate-fails", "--no-cache")
    set_gate(s.pipeline_dir, 0.1)
    cached_artifact(s, "load", "data").write_bytes(b"[1, 2, 3]")  # corrupt the cached bytes
    s.run("corrupted")
    cached_artifact(s, "fit", "weights").unlink()
    s.run("missing")
    s.run("param", "--param", "scale=3")
    blob = s.pipeline_dir / ".nb2prod/artifacts/p/files" / written_sha(s, "missing", "fit")
    blob.unlink()  # the file fit wrote (scratch.txt), content-addressed in the store
    s.run("blob-missing")
    return s


def written_sha(session: Session, label: str, stage: str) -> str:
    manifest = artifacts.read_json(session.store, f"p/runs/{session.runs[label].run_id}/{stage}"
                                   "/manifest.json")
    return manifest["files"]["scratch.txt"]["sha256"]


def test_first_run_executes_and_second_reuses_every_unchanged_stage(session: Session) -> None:
    full, again = session.runs["full"], session.runs["cached"]
    assert full.code == 0 and again.code == 0, again.stderr
    assert full.states() == {"load": "done", "fit": "done", "report": "done"}
    assert again.states() == {"load": "cached", "fit": "cached", "report": "done"}
    for stage in ("load", "fit"):
        assert again.record["stages"][stage]["cached_from"] == full.run_id
        manifest = artifacts.read_json(session.store,
                                       f"p/runs/{again.run_id}/{stage}/manifest.json")
        assert manifest["cached_from"] == full.run_id and manifest["run_id"] == again.run_id
        assert f"stage {stage}: cached (run {full.run_id})" in again.stdout
    assert "2 of 3 stage(s) cached" in again.stdout
    # Reused bytes are hard links into the earlier run, not copies.
    root = session.pipeline_dir / ".nb2prod/artifacts/p/runs"
    reused = root / again.run_id / "fit" / "weights.json"
    assert reused.stat().st_ino == (root / full.run_id / "fit" / "weights.json").stat().st_ino


def test_cached_run_promotes_like_a_full_run(session: Session) -> None:
    full, again = session.runs["full"], session.runs["cached"]
    assert again.record["metrics"] == full.record["metrics"] == {"fit": {"score": 0.3}}
    assert again.record["promoted"] is full.record["promoted"] is True
    assert session.latest_after["full"] == full.run_id
    assert session.latest_after["cached"] == again.run_id
    # What latest.json serves is the same data as the full run's.
    for stage, name in (("load", "data"), ("fit", "weights")):
        assert load_artifact(session, again.run_id, stage, name) == \
            load_artifact(session, full.run_id, stage, name)
    failing_cached, failing_full = session.runs["cached-gate-fails"], session.runs[
        "full-gate-fails"]
    assert failing_cached.states()["fit"] == "cached"
    assert set(failing_full.states().values()) == {"done"}  # --no-cache: everything ran
    for run in (failing_cached, failing_full):
        assert run.code == 1 and run.record["promoted"] is False
        assert run.record["metrics"] == full.record["metrics"]
    assert failing_cached.record["reason"] == failing_full.record["reason"]
    assert "score" in failing_cached.record["reason"]
    assert session.latest_after["full-gate-fails"] == again.run_id  # latest did not move


def load_artifact(session: Session, run_id: str, stage: str, name: str) -> object:
    import os

    saved = dict(os.environ)
    try:
        os.environ.update(NB2PROD_STORE=load_pipeline(session.pipeline_dir).store_uri(),
                          NB2PROD_PIPELINE="p")
        return artifacts.load(name, producer=stage, run_id=run_id)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_no_cache_tag_always_runs_its_stage(session: Session) -> None:
    config = (session.pipeline_dir / "stage-3-report" / "config.ini").read_text()
    assert re.search(r"(?m)^CACHE = false$", config)
    assert all(run.states()["report"] == "done" for run in session.runs.values())
    assert not (session.pipeline_dir / ".nb2prod/artifacts/p/cache/report").exists()


def test_corrupted_or_missing_cached_artifact_is_a_miss_not_a_failure(session: Session) -> None:
    corrupted, missing = session.runs["corrupted"], session.runs["missing"]
    assert corrupted.code == 0, corrupted.stderr
    # The load stage ran again; its (identical) output leaves fit's key unchanged.
    assert corrupted.states() == {"load": "done", "fit": "cached", "report": "done"}
    assert missing.code == 0, missing.stderr
    assert missing.states() == {"load": "cached", "fit": "done", "report": "done"}
    assert missing.record["stages"]["load"]["cached_from"] == corrupted.run_id
    assert missing.record["metrics"] == session.runs["full"].record["metrics"]


def test_a_missing_file_the_stage_wrote_is_a_miss(session: Session) -> None:
    run = session.runs["blob-missing"]
    assert run.code == 0, run.stderr
    assert run.states() == {"load": "cached", "fit": "done", "report": "done"}
    assert (session.pipeline_dir / ".nb2prod/artifacts/p/files"
            / written_sha(session, "blob-missing", "fit")).is_file()


def test_a_parameter_reruns_only_the_stages_that_use_it(session: Session) -> None:
    run = session.runs["param"]
    assert run.code == 0, run.stderr
    assert run.states() == {"load": "cached", "fit": "done", "report": "done"}
    assert run.record["metrics"] == {"fit": {"score": 0.45}}


def test_graph_draws_the_cached_run(session: Session) -> None:
    again = session.runs["cached"]
    g = graph.graph_for(session.pipeline_dir, again.run_id)
    fit = next(n for n in g.nodes if n.name == "fit")
    assert fit.cached_from == session.runs["full"].run_id and fit.metrics == {"score": 0.3}
    assert f"cached (run {session.runs['full'].run_id})" in graph.to_mermaid(g)


# -- the key's parts, without running anything more ------------------------------------
@pytest.fixture()
def keyed(session: Session, tmp_path: Path):
    """A copy of the pipeline and a function computing a stage's key against the full run."""
    copy = copy_pipeline(session, tmp_path)
    store = session.store
    run_id = session.runs["full"].run_id

    def key(stage: str, params: dict | None = None) -> str:
        pipeline = load_pipeline(copy)
        found = cache.key_for(store, pipeline, pipeline.stages[stage], params or {}, run_id)
        assert found is not None
        return found
    return copy, key


def copy_pipeline(session, tmp_path: Path, name: str = "p", beside: tuple[str, ...] = (),
                  **sections: str) -> Path:
    """A copy of `session`'s pipeline (no run state) in `tmp_path`, its notebook and the
    `beside` directories next to it; `sections`: a line added to that nb2prod.ini section."""
    copy = tmp_path / name
    shutil.copytree(session.pipeline_dir, copy, ignore=shutil.ignore_patterns(".nb2prod"))
    shutil.copy(session.work / "p.ipynb", tmp_path / "p.ipynb")
    for directory in beside:
        shutil.copytree(session.work / directory, tmp_path / directory)
    ini = copy / "nb2prod.ini"
    text = ini.read_text()
    for section, line in sections.items():
        text = text.replace(f"[{section}]\n", f"[{section}]\n{line}\n")
    ini.write_text(text)
    return copy


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_key_changes_with_code_params_requirements_and_files_only(keyed) -> None:
    copy, key = keyed
    base = {s: key(s) for s in STAGES}
    # Unchanged inputs, the same key: the copy computes what the run computed.
    assert key("fit") == base["fit"]
    # Not part of the key: config.ini values, cell outputs, the jupytext twin.
    cfg = copy / "stage-2-fit" / "config.ini"
    cfg.write_text(cfg.read_text().replace("RETRIES = 2", "RETRIES = 5"))
    edit_json(copy / "stage-2-fit" / "fit.ipynb", lambda nb: nb["cells"][-1].update(
        outputs=[{"output_type": "stream", "name": "stdout", "text": "hi"}]))
    (copy / "stage-2-fit" / "fit.py").write_text("# edited")
    assert key("fit") == base["fit"]
    # Parameters: only stages that use the name.
    assert key("fit", {"scale": 3}) != base["fit"]
    assert key("load", {"scale": 3}) == base["load"]
    assert key("fit", {"unused": "y"}) == base["fit"]
    # Code.
    fit_nb = copy / "stage-2-fit" / "fit.ipynb"
    original = fit_nb.read_text()
    edit_json(fit_nb, lambda nb: nb["cells"].append(nbformat.v4.new_code_cell("extra = 1")))
    assert key("fit") != base["fit"]
    fit_nb.write_text(original)
    (copy / "stage-2-fit" / "helpers.py").write_text("X = 1\n")  # a local module
    assert key("fit") != base["fit"]
    (copy / "stage-2-fit" / "helpers.py").unlink()
    # Requirements.
    reqs = copy / "stage-2-fit" / "requirements.txt"
    reqs.write_text(reqs.read_text() + "numpy==1.0\n")
    assert key("fit") != base["fit"]
    reqs.write_text(reqs.read_text().replace("numpy==1.0\n", ""))
    assert key("fit") == base["fit"]
    # Input files (FILES, relative to the notebook's directory), by content.
    (copy.parent / "data.csv").write_text("a,b\n1,2\n")
    cfg.write_text(re.sub(r"(?m)^FILES =.*$", "FILES = data.csv", cfg.read_text()))
    with_file = key("fit")
    assert with_file != base["fit"]
    (copy.parent / "data.csv").write_text("a,b\n1,3\n")
    assert key("fit") not in (with_file, base["fit"])
    (copy.parent / "data.csv").unlink()
    assert key("fit") not in (with_file, base["fit"])  # missing: a key still, never a hit


def test_key_changes_when_an_input_artifact_changed(session: Session, keyed) -> None:
    _, key = keyed
    before = key("fit")
    manifest = session.pipeline_dir / (f".nb2prod/artifacts/p/runs/{session.runs['full'].run_id}"
                                       "/load/manifest.json")
    original = manifest.read_text()
    try:
        edit_json(manifest, lambda m: m["artifacts"]["data"].update(sha256="0" * 64))
        assert key("fit") != before
        assert key("load") == cache.key_for(session.store, load_pipeline(session.pipeline_dir),
                                            load_pipeline(session.pipeline_dir).stages["load"],
                                            {}, session.runs["full"].run_id)
    finally:
        manifest.write_text(original)


def test_no_cache_tag_is_vocabulary_and_typos_are_caught() -> None:
    from nb2prod.tags import parse_tags

    assert parse_tags(["no-cache"]).hints == {"CACHE": "false"}
    assert parse_tags(["nocache"]).warnings == [
        "tag 'nocache' is not an nb2prod tag; did you mean 'no-cache'?"]


def cron_configmaps(session, tmp_path: Path, cache_setting: str | None,
                    beside: tuple[str, ...] = ()) -> dict:
    """`render --cron` of a copy of the pipeline: stage -> its code ConfigMap's data."""
    import yaml

    copy = copy_pipeline(session, tmp_path, f"p-{cache_setting}", beside, **(
        {} if cache_setting is None else {"schedule": f"CACHE = {cache_setting}"}))
    done = nb2prod("render", copy, "-n", "ml", "--store", "s3://bucket/prefix", "--cron",
                   "0 3 * * *", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not supported" not in done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    assert any(o["kind"] == "CronJob" for o in objects)
    return {o["metadata"]["labels"]["nb2prod.io/stage"]: o["data"] for o in objects
            if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get(
                "app.kubernetes.io/component") == "code"}


def test_schedule_cache_ships_the_key_run_uses_to_each_cacheable_stage(
        session: Session, tmp_path: Path) -> None:
    """`[schedule] CACHE = true`: each batch stage's ConfigMap carries its cache plan, whose
    key (with the input run's manifests, as the pod computes it) is the key `nb2prod run`
    indexed; a `no-cache` stage gets none; without the setting no stage does."""
    from nb2prod.runtime.cache import plan_key

    assert all(cache.CACHE_PLAN not in data for data in cron_configmaps(
        session, tmp_path, None).values())
    assert all(cache.CACHE_PLAN not in data for data in cron_configmaps(
        session, tmp_path, "false").values())
    data = cron_configmaps(session, tmp_path, "true")
    assert cache.CACHE_PLAN not in data["report"]  # tagged no-cache: it always runs
    full = session.runs["full"].run_id
    for stage in ("load", "fit"):
        plan = json.loads(data[stage][cache.CACHE_PLAN])
        key = plan_key(session.store, "p", full, plan)
        index = artifacts.read_json(session.store, f"p/cache/{stage}/{key}.json", default=None)
        assert index is not None, f"{stage}: the in-cluster key is not the key run indexed"
        assert index["stage"] == stage and index["key"] == key
    assert json.loads(data["fit"][cache.CACHE_PLAN])["loads"] == {"data": "load"}


def test_no_wait_no_cache_ships_no_cache_plan(session: Session, tmp_path: Path) -> None:
    """`deploy --no-wait --no-cache` (`use_cache=False`) runs every stage even with
    `[schedule] CACHE = true`."""
    from nb2prod import retrain
    from nb2prod.runners import kubernetes as kube

    pipeline = load_pipeline(copy_pipeline(session, tmp_path, schedule="CACHE = true"))
    opts = kube.options_for(pipeline, "ml", store="s3://bucket/prefix")

    def planned(use_cache: bool) -> set[str]:
        setup = retrain.plan(pipeline, opts, use_cache=use_cache).setup
        return {o["metadata"]["labels"]["nb2prod.io/stage"] for o in setup
                if o["kind"] == "ConfigMap" and cache.CACHE_PLAN in o.get("data", {})}

    assert planned(True) == {"load", "fit"}
    assert planned(False) == set()


def test_no_cache_on_a_serve_cell_is_reported(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for tags, src in (
        (["stage:train"], "model = 3"),
        (["serve"], "def predict(payload):\n    return {'y': model}"),
        (["no-cache"], "started = True"))]
    nbformat.write(nb, tmp_path / "svc.ipynb")
    done = nb2prod("split", "svc.ipynb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stderr.splitlines() if "no-cache" in line]
    assert lines == [("warning: svc.ipynb, cell 3 (\"started = True\"): tag 'no-cache' has no "
                      "effect on service stage 'serve': only batch stages are cached (a service "
                      "always starts from its run)")], done.stderr
    assert "CACHE" not in (tmp_path / "svc-pipeline/stage-2-serve/config.ini").read_text()
