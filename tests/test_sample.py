"""nb2prod/sample.py and the runtime's record_sample: a sample request the service answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nb2prod import artifacts
from nb2prod.analysis import analyze
from nb2prod.notebook import Cell, Notebook, load_notebook
from nb2prod.sample import FittedSample, fitted_sample, literal_request

EXAMPLES = Path(__file__).resolve().parents[1] / "example_notebooks"


def analysis(*cells: tuple[list[str], str]):
    built = tuple(Cell(i, "code", source, tuple(tags)) for i, (tags, source) in enumerate(cells))
    return analyze(Notebook(Path("nb.ipynb"), built, {}, "0" * 64))


@pytest.mark.parametrize(("notebook", "expected"), [
    ("wine_parallel.ipynb", FittedSample("train_forest", "X_train", "instances", False)),
    ("diabetes.py", FittedSample("train", "X_train", "instances", False)),
    ("iris.ipynb", FittedSample("train", "X_train", "instances", False)),
])
def test_examples_sample_the_rows_their_model_is_fitted_on(notebook: str,
                                                           expected: FittedSample) -> None:
    assert fitted_sample(analyze(load_notebook(EXAMPLES / notebook)), "predict") == expected


def test_a_literal_call_is_the_sample_when_the_notebook_has_one() -> None:
    a = analyze(load_notebook(EXAMPLES / "iris.ipynb"))
    assert literal_request(a, "predict") == \
        '{"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
    assert literal_request(analyze(load_notebook(EXAMPLES / "diabetes.py")), "predict") == ""


PRELUDE = (["imports"], ("import pandas as pd\nfrom sklearn.linear_model import Ridge\n"
                        "from sklearn.preprocessing import StandardScaler"))


def test_the_model_predict_uses_wins_and_the_payload_shape_follows_predict() -> None:
    a = analysis(
        PRELUDE,
        (["stage:prep"], ("raw = [[1.0], [2.0]]\ny = [0, 1]\nscaler = StandardScaler()\n"
                         "scaler.fit(raw)\nX = scaler.transform(raw)")),
        (["train"], "model = Ridge()\nmodel.fit(X, y)"),
        (["serve"], ("def predict(request):\n"
                     "    frame = pd.DataFrame(request.get('rows'))\n"
                     "    return model.predict(frame)")))
    assert fitted_sample(a, "predict") == FittedSample("train", "X", "rows", True)


def test_a_predict_that_takes_the_rows_themselves_gets_a_bare_list() -> None:
    a = analysis(PRELUDE,
                 (["train"], ("features, labels = [[1.0]], [2.0]\n"
                             "clf = Ridge().fit(features, labels)")),
                 (["serve"], "def predict(payload):\n    return clf.predict(payload).tolist()"))
    assert fitted_sample(a, "predict") == FittedSample("train", "features", None, False)


def test_no_fit_call_means_no_fitted_sample() -> None:
    a = analysis(PRELUDE, (["train"], "model = pd.read_pickle('model.pkl')"),
                 (["serve"], "def predict(payload):\n    return model(payload)"))
    assert fitted_sample(a, "predict") is None


def test_sample_rows_of_arrays_frames_and_lists() -> None:
    X = np.arange(12, dtype=float).reshape(4, 3)
    assert artifacts.sample_rows(X) == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert artifacts.sample_rows(df) == [[1, "x"], [2, "y"]]
    assert artifacts.sample_rows(df, records=True) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert artifacts.sample_rows([[1, 2], [3, 4], [5, 6]]) == [[1, 2], [3, 4]]
    assert artifacts.sample_rows(np.float64(3.0)) is None
    assert artifacts.sample_rows(object()) is None


def test_record_sample_writes_it_with_the_run_and_read_sample_finds_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = f"file://{tmp_path}"
    for var, value in {"NB2PROD_STORE": store, "NB2PROD_PIPELINE": "p",
                       "NB2PROD_STAGE": "train", "NB2PROD_RUN_ID": "r1"}.items():
        monkeypatch.setenv(var, value)
    payload = artifacts.record_sample(np.ones((5, 2)), key="instances")
    assert payload == {"instances": [[1.0, 1.0], [1.0, 1.0]]}
    assert artifacts.record_sample(np.array([np.nan, 1.0])) is None  # not valid JSON: nothing
    found = artifacts.read_sample(artifacts.open_store(store), "p", "r1", ["prep", "train"])
    assert found == payload
