"""The stage runtime's serializer registry: each library's objects round-trip in its format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from nb2prod import artifacts
from nb2prod.artifacts import ArtifactError
from nb2prod.runtime import serializers
from tests.shipping import ship_runtime
from tests.test_artifacts import ENV_VARS, _clean_runtime_state, stage  # noqa: F401

np = pytest.importorskip("numpy")
#: every test here saves as stage 'train' of a file store (see tests/test_artifacts.py)
pytestmark = pytest.mark.usefixtures("stage")


def _round_trip(value: object, name: str = "value") -> tuple[dict, object]:
    entry = artifacts.save({name: value})["artifacts"][name]
    return entry, artifacts.load(name, producer="train")


def _xy(rows: int = 60) -> tuple[object, object]:
    rng = np.random.RandomState(0)
    X = rng.rand(rows, 3)
    return X, (X[:, 0] + 0.2 * X[:, 1] > 0.6).astype(int)


def test_xgboost_booster_and_dmatrix() -> None:
    xgb = pytest.importorskip("xgboost")
    X, y = _xy()
    dtrain = xgb.DMatrix(X, label=y, feature_names=["a", "b", "c"])
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2}, dtrain, 5)

    entry, loaded = _round_trip(dtrain, "D_trn")
    assert (entry["format"], entry["file"], entry["xgboost_type"]) == ("xgboost", "D_trn.xgb",
                                                                      "DMatrix")
    assert entry["versions"]["xgboost"] == xgb.__version__
    assert type(loaded) is xgb.DMatrix and loaded.feature_names == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded.get_label(), y)
    # The loaded DMatrix trains the same model as the original.
    again = xgb.train({"objective": "binary:logistic", "max_depth": 2}, loaded, 5)
    np.testing.assert_allclose(again.predict(dtrain), booster.predict(dtrain))

    entry, loaded = _round_trip(booster, "model")
    assert (entry["format"], entry["xgboost_type"]) == ("xgboost", "Booster")
    assert type(loaded) is xgb.Booster
    np.testing.assert_allclose(loaded.predict(dtrain), booster.predict(dtrain))


def test_xgboost_sklearn_wrapper_uses_joblib() -> None:
    xgb = pytest.importorskip("xgboost")
    X, y = _xy()
    model = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(X, y)
    entry, loaded = _round_trip(model)
    assert entry["format"] == "joblib"
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X))


def test_lightgbm_booster_and_datasets() -> None:
    lgb = pytest.importorskip("lightgbm")
    X, y = _xy(200)
    params = {"objective": "binary", "verbose": -1, "deterministic": True,
              "min_data_in_leaf": 5}

    # Never constructed: only raw inputs, kept as they are (the next stage bins them).
    raw = lgb.Dataset(X, label=y, feature_name=["a", "b", "c"])
    entry, loaded = _round_trip(raw, "dtrain")
    assert entry["format"] == "joblib"
    reference = lgb.train(params, lgb.Dataset(X, label=y, feature_name=["a", "b", "c"]), 5)
    np.testing.assert_allclose(lgb.train(params, loaded, 5).predict(X), reference.predict(X))

    # Constructed (after training): LightGBM's binary, loaded constructed.
    booster = lgb.train(params, raw, 5)
    entry, loaded = _round_trip(raw, "dtrain")
    assert (entry["format"], entry["lightgbm_type"], entry["file"]) == ("lightgbm", "Dataset",
                                                                       "dtrain.lgb")
    assert loaded.num_data() == 200 and loaded.get_feature_name() == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded.get_label(), y)
    np.testing.assert_allclose(lgb.train(params, loaded, 5).predict(X), booster.predict(X))

    entry, loaded = _round_trip(booster, "model")
    assert (entry["format"], entry["lightgbm_type"]) == ("lightgbm", "Booster")
    assert entry["versions"]["lightgbm"] == lgb.__version__
    assert type(loaded) is lgb.Booster
    np.testing.assert_allclose(loaded.predict(X), booster.predict(X))


def test_lightgbm_early_stopping_results_survive() -> None:
    """The text model drops best_iteration/best_score; a stage reading them must not see -1."""
    lgb = pytest.importorskip("lightgbm")
    X, y = _xy(300)
    train = lgb.Dataset(X[:200], y[:200])
    valid = lgb.Dataset(X[200:], y[200:], reference=train)
    booster = lgb.train({"objective": "binary", "verbose": -1, "deterministic": True}, train,
                        200, valid_sets=[valid], callbacks=[lgb.early_stopping(3, verbose=False)])
    assert 0 < booster.best_iteration < 200  # stopped early
    _, loaded = _round_trip(booster, "model")
    assert loaded.best_iteration == booster.best_iteration
    assert loaded.current_iteration() == booster.current_iteration()
    assert loaded.best_score == booster.best_score
    np.testing.assert_allclose(loaded.predict(X, num_iteration=loaded.best_iteration),
                               booster.predict(X, num_iteration=booster.best_iteration))


def test_polars_frames_and_series() -> None:
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({"a": [1, 2, None], "b": ["x", None, "z"],
                          "c": [1.5, 2.5, 3.5]}).with_columns(pl.col("b").cast(pl.Categorical))
    entry, loaded = _round_trip(frame, "frame")
    assert (entry["format"], entry["file"], entry["polars_type"]) == ("polars", "frame.arrow",
                                                                     "DataFrame")
    assert loaded.schema == frame.schema and loaded.equals(frame)

    series = pl.Series("petal", [0.1, 0.2], dtype=pl.Float32)
    entry, loaded = _round_trip(series, "series")
    assert entry["polars_type"] == "Series"
    assert isinstance(loaded, pl.Series) and loaded.name == "petal"
    assert loaded.dtype == pl.Float32 and loaded.equals(series)


def test_torch_tensor_and_module() -> None:
    torch = pytest.importorskip("torch")  # not in the test extra: too big for CI
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    entry, loaded = _round_trip(tensor, "t")
    assert (entry["format"], entry["torch_type"]) == ("torch", "tensor")
    assert torch.equal(loaded, tensor)
    module = torch.nn.Linear(3, 1)
    entry, loaded = _round_trip(module, "net")
    assert entry["torch_type"] == "module"
    assert torch.equal(loaded(tensor), module(tensor))


def test_keras_model() -> None:
    keras = pytest.importorskip("keras")  # not in the test extra: too big for CI
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    X, _ = _xy(4)
    entry, loaded = _round_trip(model, "net")
    assert entry["format"] == "keras"
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0))


def test_numpy_subclasses_and_object_arrays_fall_back_to_joblib() -> None:
    entry, loaded = _round_trip(np.ma.masked_array([1, 2], mask=[0, 1]))
    assert entry["format"] == "joblib" and loaded.mask.tolist() == [False, True]
    entry, _ = _round_trip(np.zeros(2))
    assert entry["format"] == "npy"


def test_unsaveable_value_names_variable_type_and_remedy(stage: SimpleNamespace  # noqa: F811
                                                         ) -> None:
    gen = (i for i in range(3))
    with pytest.raises(ArtifactError) as info:
        artifacts.save({"ok": 1, "batches": gen})
    message = str(info.value)
    assert message.startswith("cannot save 'batches' (builtins.generator)")
    assert "cannot pickle 'generator' object" in message
    assert "in the stage that uses it" in message
    assert artifacts.SERIALIZER_ENTRY_POINTS in message
    assert not stage.dir.exists()  # nothing written, not even 'ok'


def test_register_serializer_takes_precedence(stage: SimpleNamespace,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    class Reversed(artifacts.Serializer):
        format, ext, types = "reversed-list", "rev", ("builtins.list",)

        def dump(self, value):
            return json.dumps(value[::-1]).encode(), {"note": "reversed"}

        def load(self, data, entry):
            return json.loads(data)[::-1]

    monkeypatch.setattr(serializers, "_BY_TYPE", {k: list(v) for k, v in
                                                serializers._BY_TYPE.items()})
    monkeypatch.setattr(serializers, "_BY_FORMAT", dict(serializers._BY_FORMAT))
    artifacts.register_serializer(Reversed)
    entry, loaded = _round_trip([1, 2, 3])
    assert (entry["format"], entry["file"], entry["note"]) == ("reversed-list", "value.rev",
                                                              "reversed")
    assert (stage.dir / "value.rev").read_text() == "[3, 2, 1]"
    assert loaded == [1, 2, 3]
    with pytest.raises(ValueError, match="needs a 'format' and 'types'"):
        artifacts.register_serializer(object())


PLUGIN = '''
from fractions import Fraction

class FractionSerializer:
    """Duck-typed: a plugin needs no import of the runtime."""
    format, ext, types, libraries = "fraction", "frac", ("fractions.Fraction",), ()

    def accepts(self, value):
        return True

    def dump(self, value):
        return f"{value.numerator}/{value.denominator}".encode()

    def load(self, data, entry):
        return Fraction(data.decode())
'''


def test_entry_point_plugin_in_a_standalone_stage(tmp_path: Path) -> None:
    """A distribution installed with an nb2prod.serializers entry point is used by
    the runtime copied into a stage (no nb2prod importable); a broken one warns."""
    site = tmp_path / "site"
    dist = site / "fracser-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fracser\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[nb2prod.serializers]\nfraction = fracser:FractionSerializer\n"
        "broken = fracser_missing:Nothing\n")
    (site / "fracser.py").write_text(PLUGIN)
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    ship_runtime(stage_dir)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(PYTHONPATH=str(site), NB2PROD_STORE=(tmp_path / "store").as_uri(),
               NB2PROD_PIPELINE="p", NB2PROD_STAGE="train", NB2PROD_RUN_ID="r1")
    code = textwrap.dedent("""
        import sys, warnings
        from fractions import Fraction
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import nb2prod_runtime as rt
            manifest = rt.save({"ratio": Fraction(2, 6)})
        assert "nb2prod" not in sys.modules
        print(manifest["artifacts"]["ratio"]["format"], manifest["artifacts"]["ratio"]["file"])
        print(repr(rt.load("ratio", producer="train")))
        print([str(w.message) for w in caught])
        """)
    result = subprocess.run([sys.executable, "-c", code], cwd=stage_dir, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    fmt, loaded, warned = result.stdout.strip().splitlines()
    assert fmt == "fraction ratio.frac"
    assert loaded == "Fraction(1, 3)"
    assert "serializer entry point 'broken' (fracser_missing:Nothing) not loaded" in warned
    stored = tmp_path / "store/p/runs/r1/train/ratio.frac"
    assert stored.read_text() == "1/3"


def test_serializer_libraries_name_what_the_registry_writes_with() -> None:
    # split pins these for stages that save or load values (render._artifact_libraries)
    from nb2prod.runtime.serializers import serializer_libraries

    assert {"numpy", "pandas", "joblib", "xgboost", "polars"} <= serializer_libraries()
