"""The notebook corpus: our own notebooks in the styles real ones have, split and run unchanged.

Each notebook under tests/data/corpus/NAME/ (with its `data/` folder and local code) is
run twice from two fresh copies of its directory: top to bottom by papermill (a real
kernel; one extra cell appended to that copy writes the metric values and, when the
notebook serves, what `predict(payload)` returns), and as the pipeline `nb2prod split`
makes of it, by `nb2prod run` (papermill per stage, then gunicorn on a free port).
The metrics the pipeline records must be the notebook's, and a POST to the service
must answer what `predict` answered in the notebook.

Every notebook's two runs are started at once by one module fixture (a pool of
workers: each run is mostly one busy process) and each test waits for its own.
"""

from __future__ import annotations

import configparser
import csv
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nb2prod.dag import parse_dag
from tests.test_run_e2e import (
    RUN_LINE,
    RUN_TIMEOUT,
    SERVING_LINE,
    Command,
    clean_env,
    eventually_ready,
    free_port,
    http,
    nb2prod,
)

for _module in ("numpy", "pandas", "sklearn", "xgboost", "lightgbm", "polars", "matplotlib"):
    pytest.importorskip(_module)  # all in the test extra

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
RESULT_FILE = "corpus_result.json"
#: Parallel notebook runs; each is mostly one busy process (a kernel, a server start).
WORKERS = 3


def csv_rows(path: str, n: int = 2, drop: tuple[str, ...] = ("target",),
             as_dicts: bool = False) -> Callable[[Path], Any]:
    """A payload builder: the first `n` rows of a corpus data file, numbers as floats."""
    def rows(notebook_dir: Path) -> Any:
        with open(notebook_dir / path, newline="") as fh:
            records = list(csv.DictReader(fh))[:n]
        out = []
        for record in records:
            values = {k: _number(v) for k, v in record.items() if k not in drop}
            out.append(values if as_dicts else list(values.values()))
        return out
    return rows


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Spec:
    """What one corpus notebook must do: metric names, and the request its service gets."""

    metrics: tuple[str, ...]
    #: JSON body for the service; a callable builds it from the notebook's directory.
    payload: Any = None
    #: DAG edges that must be there, and ones that must not (false producers).
    edges: tuple[tuple[str, str], ...] = ()
    no_edges: tuple[tuple[str, str], ...] = ()
    #: Text that must not appear in any stage notebook (exploration above the first stage).
    absent_from_stages: tuple[str, ...] = ()
    #: (stage, distribution) pins its requirements.txt must hold (what its values need).
    pinned: tuple[tuple[str, str], ...] = ()

    def body(self, notebook_dir: Path) -> Any:
        payload = self.payload
        return payload(notebook_dir) if callable(payload) else payload


def _wrap(key: str, builder: Callable[[Path], Any]) -> Callable[[Path], Any]:
    return lambda directory: {key: builder(directory)}


SPECS: dict[str, Spec] = {
    "titanic_kaggle": Spec(
        metrics=("accuracy", "f1"),
        payload={"passengers": [
            {"Pclass": 1, "Sex": "female", "Age": 29, "SibSp": 0, "Parch": 0, "Fare": 80.0,
             "Embarked": "C"},
            {"Pclass": 3, "Sex": "male", "Age": 40, "SibSp": 1, "Parch": 2, "Fare": 12.5,
             "Embarked": "S"}]},
        edges=(("clean", "train"), ("train", "serve"))),
    "kale_titanic": Spec(
        metrics=("acc_random_forest", "acc_log", "acc_svc"),
        edges=(("loaddata", "datapreprocessing"), ("featureengineering", "svm"),
               ("randomforest", "results"), ("svm", "results")),
        no_edges=(("randomforest", "svm"), ("svm", "logisticregression"))),
    "xgb_dmatrix": Spec(
        metrics=("auc", "logloss"),
        payload=_wrap("rows", csv_rows("data/breast_cancer.csv")),
        edges=(("features", "train"), ("features", "evaluate"), ("train", "evaluate"),
               ("train", "serve"))),
    "lightgbm_native": Spec(
        metrics=("accuracy", "best_iteration"),
        payload=_wrap("samples", csv_rows("data/wine.csv")),
        edges=(("data", "train"), ("train", "importance"), ("train", "serve")),
        no_edges=(("importance", "serve"),)),
    "churn_gridsearch": Spec(
        metrics=("best_cv_auc", "test_auc"),
        payload=_wrap("customers", csv_rows("data/customers.csv", n=3, drop=("churn",),
                                            as_dicts=True))),
    "csv_handoff": Spec(
        metrics=("train_accuracy", "holdout_accuracy", "n_holdout"),
        edges=(("extract", "features"), ("features", "train"), ("train", "report"))),
    "local_package": Spec(
        metrics=("test_accuracy", "n_train"),
        payload=_wrap("customers", csv_rows("data/customers.csv", n=3, drop=("churn",),
                                            as_dicts=True)),
        edges=(("prepare", "train"), ("train", "serve"))),
    "classes_methods": Spec(
        metrics=("accuracy",),
        payload={"flowers": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]}),
    "parallel_evaluation": Spec(
        metrics=("holdout_accuracy", "holdout_auc", "cv_mean", "cv_std"),
        payload=_wrap("x", csv_rows("data/breast_cancer.csv", n=3)),
        edges=(("train", "evaluate_holdout"), ("train", "evaluate_cv"), ("train", "serve")),
        no_edges=(("evaluate_holdout", "evaluate_cv"), ("evaluate_cv", "evaluate_holdout"),
                  ("evaluate_holdout", "serve"), ("evaluate_cv", "serve"))),
    "optional_import": Spec(
        metrics=("best_r2", "best_alpha"),
        payload={"patients": [[0.038, 0.05, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003,
                               0.02, -0.018]]}),
    "inline_imports": Spec(
        metrics=("oof_accuracy",),
        payload={"wines": [[13.2, 1.78, 2.14, 11.2, 100.0, 2.65, 2.76, 0.26, 1.28, 4.38,
                            1.05, 3.4, 1050.0],
                           [12.37, 0.94, 1.36, 10.6, 88.0, 1.98, 0.57, 0.28, 0.42, 1.95,
                            1.05, 1.82, 520.0]]},
        edges=(("scale", "train"), ("train", "serve"))),
    "exploration_above": Spec(
        metrics=("test_accuracy", "depth"),
        payload={"rows": [[17.99, 10.38, 0.1184, 0.3001], [13.54, 14.36, 0.09779, 0.06664]]},
        absent_from_stages=("exploratory fit", "explore[FEATURES].hist")),
    "regression_plots": Spec(
        metrics=("rmse", "mae", "r2"),
        payload=_wrap("patients", csv_rows("data/diabetes.csv", n=3)),
        edges=(("load", "train"), ("train", "evaluate"))),
    "polars_features": Spec(
        metrics=("mae",),
        payload=_wrap("rows", csv_rows("data/diabetes.csv", n=3)),
        edges=(("load", "features"), ("features", "train"))),
    "text_reviews": Spec(
        metrics=("accuracy", "macro_f1"),
        payload={"texts": ["great product, fast and reliable", "broken and slow: refund",
                           "the box arrived after a week"]}),
    "sales_forecast": Spec(
        metrics=("mae", "naive_mae"),
        payload={"rows": [{"lag_1": 130.0, "lag_7": 128.5, "rolling_7": 131.2, "dow": 2,
                           "store_b": 0, "promo": 1},
                          {"lag_1": 95.0, "lag_7": 90.5, "rolling_7": 93.0, "dow": 5,
                           "store_b": 1, "promo": 0}]},
        edges=(("load", "features"), ("features", "train"))),
    "kmeans_segments": Spec(
        metrics=("silhouette", "inertia", "rand_index"),
        payload=_wrap("wines", csv_rows("data/wine.csv", n=3))),
    "boosting_bakeoff": Spec(
        metrics=("xgb_auc", "lgbm_auc", "best_auc"),
        payload={"rows": [{"tenure": 5, "monthly_charges": 95.0, "support_calls": 3,
                           "contract_month": 1, "region_north": 1},
                          {"tenure": 60, "monthly_charges": 30.0, "support_calls": 0,
                           "contract_two_year": 1, "region_west": 1}]},
        edges=(("prepare", "train_xgb"), ("prepare", "train_lgbm"), ("train_xgb", "compare"),
               ("train_lgbm", "compare")),
        no_edges=(("train_xgb", "train_lgbm"), ("train_lgbm", "train_xgb"))),
    "env_config": Spec(
        metrics=("accuracy", "best_k"),
        payload={"wines": [[13.2, 1.78, 2.14, 11.2, 100.0, 2.65, 2.76, 0.26, 1.28, 4.38,
                            1.05, 3.4, 1050.0],
                           [12.37, 0.94, 1.36, 10.6, 88.0, 1.98, 0.57, 0.28, 0.42, 1.95,
                            1.05, 1.82, 520.0]]},
        edges=(("prepare", "train"), ("train", "report"), ("train", "serve")),
        # `time` is imported in an `if` inside train's loop: a module, not data
        no_edges=(("prepare", "report"),),
        # prepare's arrays are saved with numpy, though it never names `np` (pruned)
        pinned=(("prepare", "numpy"), ("prepare", "pandas"), ("serve", "numpy"))),
}


# -- running ---------------------------------------------------------------------------
def corpus_env() -> dict[str, str]:
    """The runs' environment: no display, no pip self-check (`!pip install` lines run)."""
    return clean_env(MPLBACKEND="Agg", PIP_DISABLE_PIP_VERSION_CHECK="1")


def result_cell(spec: Spec, payload: Any) -> str:
    """Source of the cell appended to the papermill copy: metrics and prediction as JSON."""
    lines = [
        "import json as _corpus_json",
        "def _corpus_plain(value):",
        "    if hasattr(value, 'tolist'):",
        "        return value.tolist()",
        "    if hasattr(value, 'item'):",
        "        return value.item()",
        "    raise TypeError(type(value))",
        f"_corpus = {{'metrics': {{n: globals()[n] for n in {list(spec.metrics)!r}}}}}",
    ]
    if payload is not None:
        lines.append(f"_corpus['prediction'] = predict(_corpus_json.loads({json.dumps(payload)!r}))")
    lines.append(f"with open({RESULT_FILE!r}, 'w') as _fh:")
    lines.append("    _fh.write(_corpus_json.dumps(_corpus, default=_corpus_plain))")
    return "\n".join(lines)


def run_whole_notebook(name: str, spec: Spec, directory: Path, payload: Any) -> dict:
    """papermill, top to bottom, in the notebook's own directory."""
    notebook = directory / f"{name}.ipynb"
    data = json.loads(notebook.read_text())
    data["cells"].append({"cell_type": "code", "execution_count": None, "id": "corpus-result",
                          "metadata": {}, "outputs": [], "source": result_cell(spec, payload)})
    notebook.write_text(json.dumps(data))
    result = subprocess.run(
        [sys.executable, "-m", "papermill", notebook.name, f"{name}.out.ipynb", "--cwd", ".",
         "-k", "python3", "--no-progress-bar"],
        cwd=directory, env=corpus_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise AssertionError(f"papermill failed on {name}.ipynb:\n{result.stderr[-4000:]}")
    return json.loads((directory / RESULT_FILE).read_text())


@dataclass
class PipelineRun:
    split: subprocess.CompletedProcess[str]
    output: str = ""
    returncode: int | None = None
    run_id: str | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    response: tuple[int, Any] | None = None
    dag: list[tuple[str, str]] = field(default_factory=list)
    stage_sources: dict[str, str] = field(default_factory=dict)
    requirements: dict[str, set[str]] = field(default_factory=dict)  # stage -> distributions


def run_pipeline(name: str, directory: Path, payload: Any) -> PipelineRun:
    """`nb2prod split` then `nb2prod run` (and one POST when the notebook serves)."""
    env = corpus_env()
    split = nb2prod("split", f"{name}.ipynb", "-o", "pipeline", cwd=directory, env=env)
    outcome = PipelineRun(split)
    if split.returncode != 0:
        return outcome
    pipeline = directory / "pipeline"
    for config in pipeline.glob("stage-*/config.ini"):  # one gunicorn worker is enough here
        text, edited = re.subn(r"(?m)^WORKERS = \d+$", "WORKERS = 1", config.read_text())
        assert edited == ("STAGE_TYPE = service" in text), config
        config.write_text(text)
    top = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    top.read(pipeline / "nb2prod.ini")
    outcome.dag = parse_dag(top["workflow"]["DAG"])[1]
    outcome.stage_sources = {p.parent.name: p.read_text() for p in pipeline.glob("stage-*/*.py")
                             if p.name not in ("app.py", "nb2prod_runtime.py")}
    outcome.requirements = {
        p.parent.name.split("-", 2)[2]: {line.split("==")[0].lower() for line in
                                         p.read_text().splitlines() if "==" in line}
        for p in pipeline.glob("stage-*/requirements.txt")}
    if payload is None:
        run = nb2prod("run", "pipeline", cwd=directory, env=env)
        outcome.output, outcome.returncode = run.stdout + run.stderr, run.returncode
    else:
        command = Command("run", "pipeline", "--port", str(free_port()), cwd=directory, env=env)
        try:
            match = command.wait_for(SERVING_LINE)
            eventually_ready(match["url"].rsplit("/", 1)[0])
            status, _, body = http(match["url"], payload)
            outcome.response = (status, body)
        except AssertionError:
            pass  # the output says why; the tests report it
        finally:
            outcome.returncode = command.stop()
            outcome.output = command.output
    found = RUN_LINE.search(outcome.output)
    if found:
        outcome.run_id = found["run_id"]
        record = pipeline / ".nb2prod/artifacts" / top["project"]["NAME"] / "runs" / \
            found["run_id"] / "run.json"
        if record.is_file():
            outcome.metrics = json.loads(record.read_text()).get("metrics") or {}
    return outcome


@dataclass
class Runs:
    notebook: Future
    pipeline: Future
    payload: Any


@pytest.fixture(scope="module")
def corpus(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Runs]]:
    """Start both runs of every selected corpus notebook; tests wait for theirs."""
    wanted = {item.callspec.params["name"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")
              and "name" in item.callspec.params}
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="corpus")
    runs: dict[str, Runs] = {}
    try:
        for name in sorted(wanted):
            spec = SPECS[name]
            work = tmp_path_factory.mktemp(name)
            copies = [work / "notebook", work / "pipeline-src"]
            for copy in copies:
                shutil.copytree(CORPUS / name, copy)
            payload = spec.body(copies[0])
            runs[name] = Runs(pool.submit(run_whole_notebook, name, spec, copies[0], payload),
                              pool.submit(run_pipeline, name, copies[1], payload), payload)
        yield runs
    finally:
        for run in runs.values():
            run.notebook.cancel()
            run.pipeline.cancel()
        pool.shutdown(wait=True)


def _pipeline(runs: Runs) -> PipelineRun:
    outcome = runs.pipeline.result(timeout=4 * RUN_TIMEOUT)
    assert outcome.split.returncode == 0, f"split failed:\n{outcome.split.stderr}"
    return outcome


def assert_close(actual: Any, expected: Any, where: str = "") -> None:
    """Equal JSON values, numbers within float noise (types: int and float may differ)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (where, actual)
        for key in expected:
            assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (where, actual)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, (int, float)) and not isinstance(expected, bool):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12), where
    else:
        assert actual == expected, where


# -- tests -----------------------------------------------------------------------------
NAMES = sorted(SPECS)
SERVING = sorted(name for name, spec in SPECS.items() if spec.payload is not None)


def test_the_corpus_is_complete() -> None:
    """Every notebook folder has a spec (and the other way round), 15 or more of them."""
    folders = {p.parent.name for p in CORPUS.glob("*/*.ipynb")}
    assert folders == set(SPECS)
    assert len(SPECS) >= 15


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_metrics_equal_the_notebooks(corpus: dict[str, Runs], name: str) -> None:
    runs = corpus[name]
    outcome = _pipeline(runs)
    assert outcome.run_id, outcome.output
    if runs.payload is None:
        assert outcome.returncode == 0, outcome.output
    by_name: dict[str, Any] = {}
    for values in outcome.metrics.values():
        for metric, value in values.items():
            assert metric not in by_name or by_name[metric] == value, (metric, outcome.metrics)
            by_name[metric] = value
    assert sorted(by_name) == sorted(SPECS[name].metrics), (outcome.metrics, outcome.output)
    expected = runs.notebook.result(timeout=4 * RUN_TIMEOUT)["metrics"]
    assert_close(by_name, expected, "metrics")


@pytest.mark.parametrize("name", SERVING)
def test_service_answers_what_predict_answered(corpus: dict[str, Runs], name: str) -> None:
    runs = corpus[name]
    outcome = _pipeline(runs)
    assert outcome.response is not None, outcome.output
    status, body = outcome.response
    assert status == 200, body
    expected = runs.notebook.result(timeout=4 * RUN_TIMEOUT)["prediction"]
    assert_close(body, expected, "prediction")


STRUCTURED = sorted(name for name, spec in SPECS.items()
                    if spec.edges or spec.no_edges or spec.absent_from_stages or spec.pinned)


@pytest.mark.parametrize("name", STRUCTURED)
def test_split_structure(corpus: dict[str, Runs], name: str) -> None:
    """Data and file edges that must be inferred, false producers that must not be."""
    spec, outcome = SPECS[name], _pipeline(corpus[name])
    dag = set(outcome.dag)
    assert set(spec.edges) <= dag, f"missing {set(spec.edges) - dag} in {sorted(dag)}"
    assert not set(spec.no_edges) & dag, f"unwanted {set(spec.no_edges) & dag}"
    for text in spec.absent_from_stages:
        hits = [stage for stage, source in outcome.stage_sources.items() if text in source]
        assert not hits, f"{text!r} runs in {hits}"
    for stage, distribution in spec.pinned:
        assert distribution in outcome.requirements[stage], (stage, outcome.requirements)
