"""The stage cache and parameters whose default is not a literal, through the real CLI.

Our notebook reads its data directory and a scale from environment variables in
its parameters cell (as tests/data/corpus/env_config does) and stamps the time
in a third parameter: `load` (reads ROWS_DIR) -> `fit` (SCALE, metric `score`)
-> `stamp` (STAMP; it saves nothing: its executed notebook is all a cache hit reuses).  A cached run must produce what a full run would: changing
an environment variable the parameters cell reads re-runs the stages reading
that parameter, the same environment is a hit, a default known only when the
cell runs (`datetime.now()`) makes its stages always run and says why once, and
`--param` overrides are keyed (and win over the environment).  The runs build on
each other in one fixture, in order; the tests check what each run did.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nb2prod import artifacts, cache
from nb2prod.analysis.parameters import Default, parameter_defaults
from nb2prod.pipeline import load_pipeline
from tests.test_cache import Run, copy_pipeline, cron_configmaps, write_notebook
from tests.test_run_e2e import clean_env, nb2prod

PARAMETERS = ('ROWS_DIR = os.environ.get("CACHE_TEST_ROWS_DIR", "rows")\n'
              'SCALE = int(os.getenv("CACHE_TEST_SCALE", "2"))\n'
              "STAMP = datetime.datetime.now().isoformat()")
CELLS = [
    (["imports"], "import datetime\nimport os"),
    (["parameters"], PARAMETERS),
    (["stage:load"], ('with open(os.path.join(ROWS_DIR, "values.txt")) as fh:\n'
                      "    data = [int(line) for line in fh]")),
    (["stage:fit"], "weights = [x * SCALE for x in data]"),
    (["metrics"], "score = sum(weights)"),
    (["stage:stamp"], "print({'total': sum(weights), 'at': STAMP})"),
]
RUN_ID = re.compile(r"^run (?P<run_id>[0-9a-z-]+): \d+ batch stage", re.MULTILINE)
WHY = ("nb2prod: not cached, always run: stamp: parameter STAMP is known only when its cell "
       "runs (STAMP = datetime.datetime.now().isoformat())")


class LabelledRuns:
    """A pipeline split into `work/p` and the runs made of it, by label (for sessions)."""

    work: Path
    runs: dict[str, Run]

    @property
    def pipeline_dir(self) -> Path:
        return self.work / "p"

    @property
    def store(self) -> artifacts.Store:
        return artifacts.open_store(load_pipeline(self.pipeline_dir).store_uri())

    def run_labelled(self, label: str, *args: str, **env: str) -> Run:
        """`nb2prod run` with `env` added to a clean environment; it must succeed."""
        done = nb2prod("run", self.pipeline_dir, "--no-serve", "--jobs", "2", *args,
                       cwd=self.work, env={**clean_env(), **env})
        match = RUN_ID.search(done.stdout)
        assert match, done.stdout + done.stderr
        run = Run(match["run_id"], done.returncode, done.stdout, done.stderr)
        run.record = artifacts.read_json(self.store, f"p/runs/{run.run_id}/run.json")
        assert run.code == 0, run.stdout + run.stderr
        self.runs[label] = run
        return run


@dataclass
class Session(LabelledRuns):
    work: Path
    other_rows: Path
    runs: dict[str, Run] = field(default_factory=dict)

    def run(self, label: str, *args: str, **env: str) -> Run:
        return self.run_labelled(label, *args, **env)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    work = tmp_path_factory.mktemp("cache-params")
    write_notebook(work / "p.ipynb", CELLS)
    (work / "rows").mkdir()
    (work / "rows" / "values.txt").write_text("1\n2\n3\n")
    other = tmp_path_factory.mktemp("elsewhere") / "rows"  # the data of "another machine"
    other.mkdir()
    (other / "values.txt").write_text("10\n20\n")
    done = nb2prod("split", "p.ipynb", "-o", "p", cwd=work)
    assert done.returncode == 0, done.stderr
    s = Session(work, other)
    elsewhere = {"CACHE_TEST_ROWS_DIR": str(other)}
    s.run("first")
    s.run("same")
    s.run("other-rows", **elsewhere)
    s.run("other-rows-again", **elsewhere)
    s.run("scale-env", **elsewhere, CACHE_TEST_SCALE="3")
    s.run("param", "--param", "SCALE=5", "--param", "STAMP=fixed", **elsewhere)
    s.run("param-again", "--param", "SCALE=5", "--param", "STAMP=fixed", **elsewhere,
          CACHE_TEST_SCALE="4")
    return s


def test_same_environment_is_a_hit(session: Session) -> None:
    first, same = session.runs["first"], session.runs["same"]
    assert first.states() == {"load": "done", "fit": "done", "stamp": "done"}
    assert same.states() == {"load": "cached", "fit": "cached", "stamp": "done"}
    assert same.cached_from() == {"load": first.run_id, "fit": first.run_id, "stamp": None}
    assert first.record["metrics"] == same.record["metrics"] == {"fit": {"score": 12}}


def test_a_changed_environment_variable_reruns_the_stages_reading_it(session: Session) -> None:
    first, other, again = (session.runs[k] for k in ("first", "other-rows", "other-rows-again"))
    # ROWS_DIR comes from CACHE_TEST_ROWS_DIR: load runs on the other data, fit on its output.
    assert other.states() == {"load": "done", "fit": "done", "stamp": "done"}
    assert other.record["metrics"] == {"fit": {"score": 60}}  # what a full run computes
    assert again.cached_from() == {"load": other.run_id, "fit": other.run_id, "stamp": None}
    assert again.record["metrics"] == other.record["metrics"]
    # Only the stages whose parameters read the variable: SCALE's changes re-run fit alone.
    scaled = session.runs["scale-env"]
    assert scaled.cached_from() == {"load": other.run_id, "fit": None, "stamp": None}
    assert scaled.record["metrics"] == {"fit": {"score": 90}}
    assert first.run_id not in json.dumps(scaled.record["stages"])


def test_a_default_known_only_when_its_cell_runs_always_runs_and_says_why_once(
        session: Session) -> None:
    for label in ("first", "same", "other-rows", "scale-env"):
        run = session.runs[label]
        assert run.states()["stamp"] == "done"
        assert run.stdout.count("not cached") == 1, run.stdout
        assert WHY in run.stdout.splitlines(), run.stdout
    no_cache = nb2prod("run", session.pipeline_dir, "--no-serve", "--no-cache",
                       cwd=session.work)
    assert no_cache.returncode == 0, no_cache.stderr
    assert "not cached, always run" not in no_cache.stdout  # every stage runs anyway


def test_param_overrides_are_keyed_and_win_over_the_environment(session: Session) -> None:
    param, again = session.runs["param"], session.runs["param-again"]
    other = session.runs["other-rows"]
    assert param.cached_from() == {"load": other.run_id, "fit": None, "stamp": None}
    assert param.record["metrics"] == {"fit": {"score": 150}}
    # STAMP given: stamp is cacheable; SCALE given: CACHE_TEST_SCALE no longer matters.
    assert "not cached" not in param.stdout
    assert again.cached_from() == {"load": other.run_id, "fit": param.run_id,
                                   "stamp": param.run_id}
    assert again.record["metrics"] == param.record["metrics"]
    # stamp saved nothing (no manifest): the hit is its executed notebook, linked.
    runs = session.pipeline_dir / ".nb2prod/artifacts/p/runs"
    reused = runs / again.run_id / "stamp" / "stamp.ipynb"
    assert reused.stat().st_ino == (runs / param.run_id / "stamp" / "stamp.ipynb").stat().st_ino
    assert not (runs / again.run_id / "stamp" / "manifest.json").exists()


def test_runs_shows_which_stages_were_cached_and_from_which_run(session: Session) -> None:
    done = nb2prod("runs", session.pipeline_dir, cwd=session.work)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("cached" in line for line in lines[:4]), done.stdout  # the column header

    def row(label: str) -> str:
        found = [line for line in lines
                 if "│" in line and session.runs[label].run_id in line.split("│")[1]]
        assert len(found) == 1, done.stdout
        return found[0]

    first, other, param = (session.runs[k].run_id for k in ("first", "other-rows", "param"))
    assert f"load, fit from {first}" in row("same")
    assert f"from {first}" not in row("first") and " from " not in row("first")
    assert f"fit, stamp from {param}" in row("param-again")
    assert f"load from {other}" in row("param-again")


def test_the_in_cluster_key_agrees_with_the_local_one(session: Session, tmp_path: Path) -> None:
    """`[schedule] CACHE = true`: the plan names the variables, the pod reads their values
    (here: given as the pod's environment) and gets the key `nb2prod run` indexed; the
    stage whose parameter is known only when it runs gets no plan (it always runs)."""
    from nb2prod.runtime.cache import plan_key

    data = cron_configmaps(session, tmp_path, "true", beside=("rows",))
    assert cache.CACHE_PLAN not in data["stamp"]
    plans = {s: json.loads(data[s][cache.CACHE_PLAN]) for s in ("load", "fit")}
    assert plans["load"]["env"] == ["CACHE_TEST_ROWS_DIR"]
    assert plans["fit"]["env"] == ["CACHE_TEST_SCALE"]

    def indexed(stage: str, label: str, environ: dict[str, str]) -> bool:
        key = plan_key(session.store, "p", session.runs[label].run_id, plans[stage], environ)
        return artifacts.read_json(session.store, f"p/cache/{stage}/{key}.json",
                                   default=None) is not None

    elsewhere = {"CACHE_TEST_ROWS_DIR": str(session.other_rows)}
    assert indexed("load", "first", {}) and indexed("fit", "first", {})
    assert indexed("load", "other-rows", elsewhere) and indexed("fit", "other-rows", elsewhere)
    first = session.runs["first"].run_id  # the pod's value decides, as locally
    assert plan_key(session.store, "p", first, plans["load"], elsewhere) != \
        plan_key(session.store, "p", first, plans["load"], {})
    assert indexed("fit", "scale-env", {**elsewhere, "CACHE_TEST_SCALE": "3"})


def test_deploy_keys_a_stage_with_the_environment_of_its_job(session: Session) -> None:
    """`deploy` decides on the deploying machine for a Job whose pod has its own
    environment: the key uses the Job's variables; a `valueFrom` one is unknown: no key."""
    from nb2prod import manifests
    from nb2prod.runners import kubernetes as kube

    pipeline = load_pipeline(session.pipeline_dir)
    opts = kube.options_for(pipeline, "ml", store="s3://bucket/prefix")
    job = manifests.plan(pipeline, opts).jobs["load"]
    environ = cache.job_environ(job)
    assert environ["NB2PROD_STAGE"] == "load" and "CACHE_TEST_ROWS_DIR" not in environ
    first = session.runs["first"].run_id
    load = pipeline.stages["load"]
    assert cache.key_for(session.store, pipeline, load, {}, first, environ=environ) == \
        cache.key_for(session.store, pipeline, load, {}, first, environ={})
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    env.append({"name": "CACHE_TEST_ROWS_DIR",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})
    assert cache.key_for(session.store, pipeline, load, {}, first,
                         environ=cache.job_environ(job)) is None


# -- the analysis (pure) ---------------------------------------------------------------
def test_parameter_defaults_name_the_variables_and_what_is_known_only_at_run_time() -> None:
    found = parameter_defaults(
        'DATA_DIR = os.environ.get("WINE_DATA_DIR", "data")\n'
        'LOG = os.environ.get("LOG_TIMINGS", "0") == "1"\n'
        'TOKEN = os.environ["API_TOKEN"]\n'
        "SEED = 11\n"
        'TRAIN = os.path.join(DATA_DIR, "train.csv")\n'
        'N = int(os.getenv("N", "5")) * 2\n'
        "OUT = f'{DATA_DIR}/out'.upper()\n"
        'A, B = os.environ["PAIR"].split(",")\n'
        "NAME_VAR = 'X'\n"
        "BY_NAME = os.environ.get(NAME_VAR)\n"
        "R = random.random()\n"
        "CFG = {'a': 1}\n"
        "CFG['at'] = time.time()\n"
        "K = 3\n"
        "if os.environ.get('CI'):\n    K = 1\nelif SEED > 10:\n    K, J = 2, TOKEN\n"
        "for i in range(3):\n    L = i\n"
        "if random.random() > 0.5:\n    M = 1\n"
        "WHOLE = dict(os.environ)\n")
    env = {name: sorted(d.env) for name, d in found.items() if d.unkeyable is None}
    assert env == {"DATA_DIR": ["WINE_DATA_DIR"], "LOG": ["LOG_TIMINGS"], "TOKEN": ["API_TOKEN"],
                   "SEED": [], "TRAIN": ["WINE_DATA_DIR"], "N": ["N"], "OUT": ["WINE_DATA_DIR"],
                   "A": ["PAIR"], "B": ["PAIR"], "NAME_VAR": [], "K": ["API_TOKEN", "CI"],
                   "J": ["API_TOKEN", "CI"]}
    assert found["R"] == Default(unkeyable="R = random.random()")
    assert found["CFG"].unkeyable == "CFG['at'] = time.time()"
    assert found["L"].unkeyable == "for i in range(3): L = i"
    assert found["M"].unkeyable == "if random.random() > 0.5: M = 1"
    assert {"BY_NAME", "WHOLE"} <= {n for n, d in found.items() if d.unkeyable}
    assert parameter_defaults("x = (") == {}


def test_a_secret_or_a_per_run_variable_makes_a_stage_uncacheable(session: Session,
                                                                  tmp_path: Path) -> None:
    copy = copy_pipeline(session, tmp_path, secrets="CACHE_TEST_SCALE = scale-secret")
    pipeline = load_pipeline(copy)
    assert cache.uncacheable(pipeline, pipeline.batch, {}) == [
        "not cached, always run: fit: parameter SCALE reads the secret $CACHE_TEST_SCALE",
        WHY.removeprefix("nb2prod: ")]
    assert cache.uncacheable(pipeline, pipeline.batch, {"SCALE": 2, "STAMP": "x"}) == []
    fit_nb = copy / "stage-2-fit" / "fit.ipynb"
    fit_nb.write_text(fit_nb.read_text().replace("CACHE_TEST_SCALE", "NB2PROD_RUN_ID"))
    assert cache.stage_environment(pipeline, pipeline.stages["fit"], {})[1] == (
        "parameter SCALE reads $NB2PROD_RUN_ID, which nb2prod sets for each run")
