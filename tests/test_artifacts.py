"""Tests of the stage runtime (nb2prod/runtime/, shipped once per pipeline as nb2prod_runtime/)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import warnings
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nb2prod import artifacts
from nb2prod.artifacts import (
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    ArtifactVersionWarning,
    FileStore,
    S3Store,
    open_store,
)
from nb2prod.runtime import serializers, stage_env, stores
from tests.s3server import s3_env, s3_server  # noqa: F401
from tests.shipping import ship_runtime

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")

REPO = Path(__file__).resolve().parent.parent
ENV_VARS = ("NB2PROD_STORE", "NB2PROD_PIPELINE", "NB2PROD_STAGE", "NB2PROD_RUN_ID",
            "NB2PROD_INPUT_RUN_ID", "MODEL_RUN_ID")
HEAVY = ("boto3", "botocore", "joblib", "numpy", "pandas", "pyarrow")


@pytest.fixture(autouse=True)
def _clean_runtime_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NB2PROD_* leaking in from the outer env, no pinned latest across tests."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    stage_env._PINNED_LATEST.clear()
    yield
    stage_env._PINNED_LATEST.clear()


def _set_stage(monkeypatch: pytest.MonkeyPatch, store: str, stage: str = "train",
               run_id: str = "r1", pipeline: str = "iris") -> None:
    monkeypatch.setenv("NB2PROD_STORE", store)
    monkeypatch.setenv("NB2PROD_PIPELINE", pipeline)
    monkeypatch.setenv("NB2PROD_STAGE", stage)
    monkeypatch.setenv("NB2PROD_RUN_ID", run_id)


@pytest.fixture
def stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A stage 'train' of pipeline 'iris', run 'r1', writing to a file store."""
    root = tmp_path / "store"
    monkeypatch.chdir(tmp_path)
    _set_stage(monkeypatch, root.as_uri())
    return SimpleNamespace(root=root, store=FileStore(root), dir=root / "iris/runs/r1/train")


@pytest.fixture
def s3_stage(s3_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:  # noqa: F811
    """Same as ``stage`` but against a fresh bucket on the moto server, over HTTP."""
    bucket = s3_env.make_bucket()
    uri = f"s3://{bucket}/team/artifacts"
    monkeypatch.chdir(tmp_path)
    _set_stage(monkeypatch, uri)
    return SimpleNamespace(uri=uri, bucket=bucket, store=open_store(uri), server=s3_env)


def _assert_same(expected: object, actual: object) -> None:
    if isinstance(expected, np.ndarray):
        assert type(actual) is np.ndarray
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(actual, expected)
    else:
        assert type(actual) is type(expected)
        nan = isinstance(expected, float) and math.isnan(expected) and math.isnan(actual)
        assert nan or actual == expected


def _values() -> dict[str, tuple[object, str]]:
    """name -> (value, expected format)."""
    return {
        "params": ({"C": 1.0, "kernel": "rbf", "layers": [1, 2, {"x": None}], "ok": True},
                   "json"),
        "label": ("setosa", "json"),
        "count": (3, "json"),
        "nothing": (None, "json"),
        "shape": ((3, 4), "joblib"),                    # a tuple is not JSON
        "int_keys": ({1: "a"}, "joblib"),               # non-str keys are not JSON
        "not_a_number": (float("nan"), "joblib"),       # NaN is not exact JSON
        "np_scalar": (np.float64(0.5), "joblib"),       # float subclass, not exact JSON
        "tags": ({"a", "b"}, "joblib"),
        "X": (np.arange(12, dtype=np.float32).reshape(3, 4), "npy"),
        "y": (np.array([0, 1, 2], dtype=np.int64), "npy"),
        "records": (np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]), "npy"),
        "objects": (np.array([{"a": 1}, None], dtype=object), "joblib"),
        "df": (pd.DataFrame({"a": [1, 2], "b": ["x", "y"]},
                            index=pd.Index([10, 20], name="k")), "parquet"),
        "series": (pd.Series([1.5, 2.5], name="petal"), "parquet"),
        "unnamed": (pd.Series([1, 2]), "parquet"),
        "mixed": (pd.DataFrame({"a": [1, "x"]}), "pickle"),   # pyarrow refuses it
        "tuple_named": (pd.Series([1], name=("a", "b")), "pickle"),
    }


def test_round_trip_every_format_file_store(stage: SimpleNamespace) -> None:
    values = _values()
    manifest = artifacts.save({name: value for name, (value, _) in values.items()})
    for name, (value, fmt) in values.items():
        assert manifest["artifacts"][name]["format"] == fmt, name
        _assert_same(value, artifacts.load(name, producer="train"))
    assert manifest["artifacts"]["mixed"]["parquet_error"].startswith("ArrowInvalid")
    assert manifest["artifacts"]["series"]["pandas_type"] == "Series"


def test_sklearn_model_round_trips_with_versions(stage: SimpleNamespace) -> None:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = LogisticRegression().fit(X, [0, 0, 1, 1])
    entry = artifacts.save({"model": model})["artifacts"]["model"]
    assert entry["format"] == "joblib"
    assert entry["file"] == "model.joblib"
    assert entry["versions"]["sklearn"] == sklearn.__version__
    assert entry["versions"]["joblib"]
    assert entry["type"] == "sklearn.linear_model._logistic.LogisticRegression"
    loaded = artifacts.load("model", producer="train")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_pandas_without_pyarrow_uses_pickle(stage, monkeypatch) -> None:
    monkeypatch.setattr(serializers, "_has_pyarrow", lambda: False)
    df = pd.DataFrame({"a": [1.0, 2.0]})
    entry = artifacts.save({"df": df})["artifacts"]["df"]
    assert (entry["format"], entry["file"]) == ("pickle", "df.pkl")
    assert "pyarrow" not in entry["versions"]
    pd.testing.assert_frame_equal(artifacts.load("df", producer="train"), df)


def test_manifest_contents_and_merge(stage: SimpleNamespace) -> None:
    artifacts.save({"X": np.zeros(3), "params": {"a": 1}})
    manifest = artifacts.save({"df": pd.DataFrame({"a": [1]}), "params": {"a": 2}})
    on_disk = json.loads((stage.dir / "manifest.json").read_text())
    assert on_disk == manifest
    assert set(manifest["artifacts"]) == {"X", "params", "df"}
    assert (manifest["pipeline"], manifest["run_id"], manifest["stage"]) == ("iris", "r1", "train")
    for name, entry in manifest["artifacts"].items():
        data = (stage.dir / entry["file"]).read_bytes()
        import hashlib

        assert entry["name"] == name
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
        assert entry["producer"] == "train"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", entry["created"])
        assert entry["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert manifest["artifacts"]["X"]["versions"]["numpy"] == np.__version__
    assert manifest["artifacts"]["df"]["versions"]["pandas"] == pd.__version__
    assert "pyarrow" in manifest["artifacts"]["df"]["versions"]
    assert artifacts.load("params", producer="train") == {"a": 2}  # later save wins


def test_reserved_file_names_do_not_clobber_bookkeeping(stage: SimpleNamespace) -> None:
    manifest = artifacts.save({"metrics": {"f1": 0.5}, "manifest": [1]})
    artifacts.record_metrics({"accuracy": 0.9})
    assert manifest["artifacts"]["metrics"]["file"] == "metrics.artifact.json"
    assert artifacts.load("metrics", producer="train") == {"f1": 0.5}
    assert artifacts.load("manifest", producer="train") == [1]
    assert json.loads((stage.dir / "metrics.json").read_text()) == {"accuracy": 0.9}


def test_sha256_tamper_is_detected(stage: SimpleNamespace) -> None:
    artifacts.save({"X": np.arange(4)})
    path = stage.dir / "X.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError) as info:
        artifacts.load("X", producer="train")
    message = str(info.value)
    assert "\n" not in message
    assert "'X'" in message and "'r1'" in message and "'train'" in message
    expected = json.loads((stage.dir / "manifest.json").read_text())["artifacts"]["X"]["sha256"]
    import hashlib

    assert expected in message and hashlib.sha256(bytes(data)).hexdigest() in message


def test_manifest_pointing_outside_the_stage_is_rejected(stage: SimpleNamespace) -> None:
    artifacts.save({"a": 1})
    manifest_path = stage.dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"]["a"]["file"] = "../../../../secret"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactIntegrityError, match="invalid file"):
        artifacts.load("a", producer="train")


def test_missing_inputs_have_clear_errors(stage: SimpleNamespace) -> None:
    with pytest.raises(ArtifactNotFoundError, match="stage 'prep' has no saved outputs in run 'r1'"):
        artifacts.load("X", producer="prep")
    artifacts.save({"a": 1})
    with pytest.raises(ArtifactNotFoundError, match="'b': not in the manifest"):
        artifacts.load("b", producer="train")
    (stage.dir / "a.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):  # ArtifactNotFoundError is one
        artifacts.load("a", producer="train")


def test_version_mismatch_warns(stage: SimpleNamespace) -> None:
    artifacts.save({"X": np.zeros(2)})
    path = stage.dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"]["X"]["versions"]["numpy"] = "0.0.1"
    path.write_text(json.dumps(manifest))
    with pytest.warns(ArtifactVersionWarning, match="numpy 0.0.1"):
        artifacts.load("X", producer="train")


def test_save_rejects_bad_names_and_writes_nothing_on_failure(stage: SimpleNamespace) -> None:
    with pytest.raises(ArtifactError, match="artifact names"):
        artifacts.save({"../evil": 1})
    with pytest.raises(ArtifactError, match="cannot save 'gen'"):
        artifacts.save({"ok": 1, "gen": (i for i in range(3))})  # generators don't pickle
    assert not stage.root.exists()


def test_save_needs_pipeline_and_stage(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB2PROD_STORE", (tmp_path / "s").as_uri())
    with pytest.raises(ArtifactError, match="NB2PROD_PIPELINE and NB2PROD_STAGE not set"):
        artifacts.save({"a": 1})


def test_record_metrics_keeps_only_finite_real_numbers(stage: SimpleNamespace) -> None:
    recorded = artifacts.record_metrics({
        "accuracy": np.float64(0.93), "n": np.int64(150), "loss": 0.25, "epochs": 3,
        "f32": np.float32(0.5), "frac": Fraction(1, 4),
        "flag": True, "np_flag": np.bool_(True), "name": "x", "none": None,
        "nan": float("nan"), "inf": np.inf, "arr": np.array([1.0]), "cplx": 1j,
    })
    assert recorded == {"accuracy": 0.93, "n": 150, "loss": 0.25, "epochs": 3,
                        "f32": 0.5, "frac": 0.25}
    assert type(recorded["n"]) is int and type(recorded["accuracy"]) is float
    artifacts.record_metrics({"loss": 0.2, "bad": "x"})
    on_disk = json.loads((stage.dir / "metrics.json").read_text())
    assert on_disk == {**recorded, "loss": 0.2}
    assert artifacts.record_metrics({"x": "nope"}) == {}


@pytest.mark.parametrize(
    ("metrics", "metric", "minimum", "passed", "reason"),
    [
        ({}, None, None, True, "no promotion gate"),
        ({"train": {"accuracy": 0.95}}, "accuracy", 0.9, True, "accuracy = 0.95 >= 0.9"),
        ({"train": {"accuracy": 0.85}}, "accuracy", 0.9, False, "< minimum 0.9"),
        ({"train": {"accuracy": 0.9}}, "accuracy", 0.9, True, ">= 0.9"),
        ({"accuracy": 0.95}, "accuracy", 0.9, True, ">= 0.9"),
        ({"train": {"loss": 0.1}}, "accuracy", 0.9, False, "'accuracy' was not recorded"),
        ({}, "accuracy", 0.9, False, "not recorded"),
        ({"train": {"accuracy": 0.95}}, "accuracy", None, True, "no minimum"),
        ({"train": {}}, None, 0.9, False, "without a METRIC"),
        ({"a": {"acc": 0.95}, "b": {"acc": 0.5}}, "acc", 0.9, False, "set METRIC = stage.acc"),
        ({"a": {"acc": 0.95}, "b": {"acc": 0.5}}, "a.acc", 0.9, True, "(stage a)"),
        ({"a": {"acc": 0.95}, "b": {"acc": 0.95}}, "acc", 0.9, True, ">= 0.9"),
        ({"a": {"acc": float("nan")}}, "acc", 0.9, False, "not a finite number"),
    ],
)
def test_promotion_gate(metrics, metric, minimum, passed, reason) -> None:
    ok, why = artifacts.promotion_passes(metrics, metric, minimum)
    assert ok is passed
    assert reason in why
    assert "\n" not in why


def test_latest_is_written_atomically(tmp_path, monkeypatch) -> None:
    store = FileStore(tmp_path)
    assert artifacts.read_latest(store, "iris") is None
    record = artifacts.write_latest(store, "iris", "r1", metric="accuracy")
    assert artifacts.read_latest(store, "iris") == record
    assert record["run_id"] == "r1" and record["metric"] == "accuracy" and record["promoted_at"]

    def crash(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(stores.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        artifacts.write_latest(store, "iris", "r2")
    monkeypatch.undo()
    assert artifacts.read_latest(store, "iris")["run_id"] == "r1"  # old value intact
    assert os.listdir(tmp_path / "iris") == ["latest.json"]      # no temp file left over


def test_write_atomic_keeps_umask_permissions(tmp_path) -> None:
    FileStore(tmp_path).write_atomic("a/b.json", b"{}")
    mode = (tmp_path / "a/b.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_file_store_keys_listing_and_upload(tmp_path) -> None:
    store = FileStore(tmp_path / "s")
    assert store.list() == [] and not store.exists("x")
    for key in ("p/runs/a/s/m.json", "p/runs/b/s/m.json", "p/latest.json", "q/x"):
        store.write_bytes(key, b"1")
    (tmp_path / "s/p/.latest.json.abc.nb2prod-tmp").write_bytes(b"partial")
    assert store.list("p/") == ["p/latest.json", "p/runs/a/s/m.json", "p/runs/b/s/m.json"]
    assert store.list("p/runs/a") == ["p/runs/a/s/m.json"]
    assert store.list("p/l") == ["p/latest.json"]
    assert store.list("nope/") == []
    assert len(store.list()) == 4
    assert store.exists("q/x") and not store.exists("q")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("q/y")
    for bad in ("../x", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError, match="invalid store key"):
            store.read_bytes(bad)
    src = tmp_path / "big.html"
    src.write_bytes(b"<html>" * 1000)
    artifacts.upload_file(store, "p/runs/a/s/s.html", src)
    assert store.read_bytes("p/runs/a/s/s.html") == src.read_bytes()


def test_open_store_schemes_and_relative_file_uris(tmp_path, monkeypatch) -> None:
    assert open_store(f"file://{tmp_path}/abs").root == tmp_path / "abs"
    assert open_store("file://rel/dir", base_dir=tmp_path).root == tmp_path / "rel/dir"
    assert open_store("file://../up", base_dir=tmp_path / "stage").root == tmp_path / "up"
    monkeypatch.chdir(tmp_path)
    assert open_store("file://rel").root == tmp_path / "rel"        # default base: cwd
    assert open_store(str(tmp_path / "bare")).root == tmp_path / "bare"
    assert open_store("file://localhost/tmp/x").root == Path("/tmp/x")
    store = open_store("file://rel")
    assert open_store(store) is store
    s3 = open_store("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.uri == "s3://bucket/some/prefix"
    with pytest.raises(ValueError, match=r"scheme pvc:// is not registered \(known: file://, s3://"):
        open_store("pvc://claim/path")
    assert artifacts.absolute_store_uri("file://rel", tmp_path) == (tmp_path / "rel").as_uri()
    assert artifacts.absolute_store_uri("s3://b/p") == "s3://b/p"


def test_register_store_adds_a_scheme(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(stores, "_FACTORIES", dict(stores._FACTORIES))
    artifacts.register_store("mem", lambda uri, base_dir: FileStore(tmp_path / uri[6:]))
    assert "mem" in artifacts.registered_schemes()
    assert open_store("mem://x").root == tmp_path / "x"


def test_new_run_id_is_sortable_and_dns_friendly() -> None:
    ids = [artifacts.new_run_id() for _ in range(20)]
    for run_id in ids:
        assert re.fullmatch(r"\d{8}t\d{6}-[0-9a-f]{4}", run_id)
        assert len(run_id) <= 63
    assert sorted(i.split("-")[0] for i in ids) == [i.split("-")[0] for i in ids]
    assert artifacts.run_prefix("iris", ids[0]) == f"iris/runs/{ids[0]}"
    with pytest.raises(ValueError, match="invalid run id"):
        artifacts.run_prefix("iris", "../x")


# -- context and input run resolution ------------------------------------------------
def test_input_run_resolution_from_env(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB2PROD_STORE", (tmp_path / "s").as_uri())
    monkeypatch.setenv("NB2PROD_PIPELINE", "iris")
    assert artifacts.current_input_run_id() == "manual"          # nothing at all
    artifacts.write_latest(tmp_path / "s", "iris", "promoted1")
    assert artifacts.current_input_run_id() == "promoted1"       # latest.json
    monkeypatch.setenv("NB2PROD_RUN_ID", "r2")
    assert artifacts.current_input_run_id() == "r2"              # same run as written
    assert artifacts.context().run_id == "r2"
    monkeypatch.setenv("NB2PROD_INPUT_RUN_ID", "r1")
    assert artifacts.current_input_run_id() == "r1"              # `run --stage`
    monkeypatch.setenv("MODEL_RUN_ID", "m0")
    assert artifacts.current_input_run_id() == "m0"              # service pin wins
    ctx = artifacts.context()
    assert (ctx.run_id, ctx.input_run_id, ctx.pipeline) == ("r2", "m0", "iris")
    monkeypatch.setenv("MODEL_RUN_ID", "latest")
    assert artifacts.current_input_run_id() == "promoted1"
    monkeypatch.setenv("MODEL_RUN_ID", "")                        # empty means unset
    assert artifacts.current_input_run_id() == "r1"


def test_latest_fallback_is_pinned_per_process(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB2PROD_STORE", (tmp_path / "s").as_uri())
    monkeypatch.setenv("NB2PROD_PIPELINE", "iris")
    artifacts.write_latest(tmp_path / "s", "iris", "a")
    assert artifacts.current_input_run_id() == "a"
    artifacts.write_latest(tmp_path / "s", "iris", "b")
    assert artifacts.current_input_run_id() == "a"
    assert artifacts.current_input_run_id(refresh=True) == "b"


def test_model_run_id_latest_without_promotion_is_an_error(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB2PROD_STORE", (tmp_path / "s").as_uri())
    monkeypatch.setenv("NB2PROD_PIPELINE", "iris")
    monkeypatch.setenv("MODEL_RUN_ID", "latest")
    with pytest.raises(ArtifactNotFoundError, match="no run of pipeline 'iris' was promoted"):
        artifacts.current_input_run_id()


def _write_stage_dir(pipeline_dir: Path, name: str, store: str | None = None) -> Path:
    stage_dir = pipeline_dir / f"stage-1-{name}"
    stage_dir.mkdir(parents=True)
    config = textwrap.dedent(f"""\
        ; generated
        [default]
        NAME = {name}           ; stage name
        PIPELINE = iris
        STAGE_TYPE = batch      ; or service
        """)
    if store:
        config += f"[artifacts]\nSTORE = {store}\n"
    (stage_dir / "config.ini").write_text(config)
    return stage_dir


def test_context_defaults_from_config_ini(tmp_path, monkeypatch) -> None:
    stage_dir = _write_stage_dir(tmp_path / "pipe", "train")
    monkeypatch.chdir(stage_dir)
    ctx = artifacts.context()
    assert ctx == artifacts.Context(
        store=(tmp_path / "pipe/.nb2prod/artifacts").as_uri(), pipeline="iris", stage="train",
        run_id="manual", input_run_id="manual")
    monkeypatch.setenv("NB2PROD_STAGE", "other")
    monkeypatch.setenv("NB2PROD_STORE", "file://elsewhere")  # relative to the stage dir
    ctx = artifacts.context()
    assert ctx.stage == "other"
    assert ctx.store == (stage_dir / "elsewhere").as_uri()
    with pytest.raises(AttributeError):
        ctx.stage = "x"  # frozen


def test_config_ini_store_relative_to_stage_dir(tmp_path, monkeypatch) -> None:
    stage_dir = _write_stage_dir(tmp_path / "pipe", "train", store="file://../shared-store")
    monkeypatch.chdir(stage_dir)
    artifacts.save({"a": [1, 2]})
    assert (tmp_path / "pipe/shared-store/iris/runs/manual/train/a.json").is_file()
    assert artifacts.load("a", producer="train") == [1, 2]


# -- runs and promotion ----------------------------------------------------------------
def _run_with_metrics(store, run_id: str, **stages: dict) -> None:
    for stage_name, metrics in stages.items():
        artifacts.write_json(store, f"iris/runs/{run_id}/{stage_name}/metrics.json", metrics)


def test_list_runs_of_in_cluster_runs_come_from_stage_results(tmp_path: Path) -> None:
    """Runs without a runner's `stages` (in-cluster) are described by their result.json files."""
    store = FileStore(tmp_path)
    ok = {"status": "succeeded", "started": 2000.0, "finished": 2010.0}
    artifacts.write_json(store, "iris/runs/iris-retrain-9/prepare/result.json", ok)
    artifacts.write_json(store, "iris/runs/iris-retrain-9/train/result.json", {
        "status": "failed", "started": 2011.0, "finished": 2020.0, "cell": 3, "cell_line": "fit()",
        "ename": "ValueError", "evalue": "max_iter must be positive"})
    artifacts.write_json(store, "iris/runs/iris-retrain-5/train/result.json",
                         {**ok, "started": 1000.0, "finished": 1005.0})
    artifacts.write_json(store, "iris/runs/iris-retrain-5/run.json",
                         {"status": "succeeded", "promoted": True, "reason": "accuracy ok"})
    artifacts.write_json(store, "iris/runs/iris-retrain-7/train/result.json",
                         {**ok, "started": 1500.0})
    runs = artifacts.list_runs(store, "iris")
    # Ordered by start time (Job names do not sort by time).
    assert [r["run_id"] for r in runs] == ["iris-retrain-5", "iris-retrain-7", "iris-retrain-9"]
    promoted, unfinished, failed = runs
    assert promoted["status"] == "succeeded" and promoted["promoted"] is True
    assert promoted["reason"] == "accuracy ok" and promoted["started"] == 1000.0
    assert unfinished["status"] == "incomplete"
    assert failed["status"] == "failed" and (failed["started"], failed["finished"]) == (2000, 2020)
    assert failed["stages"]["prepare"] == ok
    assert failed["stages"]["train"]["reason"] == \
        'failed in cell 4 ("fit()"): ValueError: max_iter must be positive'
    assert failed["reason"].startswith('stage \'train\' failed in cell 4 ("fit()")')

    # The roll step's outcome, merged into run.json by the runtime's `record` command.
    code = artifacts.main(["record", "--pipeline", "iris", "--run-id", "iris-retrain-5",
                           "--store", store.uri, "--values",
                           '{"status": "failed", "reason": "rolled back"}'])
    assert code == 0
    record = artifacts.read_json(store, "iris/runs/iris-retrain-5/run.json")
    assert record == {"status": "failed", "promoted": True, "reason": "rolled back"}
    assert artifacts.main(["record", "--pipeline", "iris", "--run-id", "iris-retrain-5",
                           "--store", store.uri, "--values", "[1]"]) == 1


def test_list_runs(tmp_path) -> None:
    store = FileStore(tmp_path)
    _run_with_metrics(store, "20260101t000000-aaaa", train={"acc": 0.8})
    _run_with_metrics(store, "20260102t000000-bbbb", train={"acc": 0.9}, evaluate={"f1": 0.7})
    artifacts.write_json(store, "iris/runs/20260102t000000-bbbb/run.json",
                         {"status": "succeeded", "stages": {"train": "succeeded"}})
    artifacts.write_latest(store, "iris", "20260102t000000-bbbb")
    runs = artifacts.list_runs(store, "iris")
    assert [r["run_id"] for r in runs] == ["20260101t000000-aaaa", "20260102t000000-bbbb"]
    assert runs[0] == {"run_id": "20260101t000000-aaaa", "stage_dirs": ["train"],
                       "latest": False}
    assert runs[1]["status"] == "succeeded" and runs[1]["latest"] is True
    assert runs[1]["stages"] == {"train": "succeeded"}  # run.json kept as written
    assert runs[1]["stage_dirs"] == ["evaluate", "train"]
    assert artifacts.list_runs(store, "nope") == []
    assert artifacts.read_run_metrics(store, "iris", "20260102t000000-bbbb") == {
        "train": {"acc": 0.9}, "evaluate": {"f1": 0.7}}


def test_read_and_write_json(tmp_path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        artifacts.read_json(store, "x.json")
    assert artifacts.read_json(store, "x.json", default=None) is None
    artifacts.write_json(store, "x.json", {"b": 1, "a": [1]}, atomic=True)
    assert artifacts.read_json(str(tmp_path), "x.json") == {"a": [1], "b": 1}
    assert (tmp_path / "x.json").read_text() == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}\n'
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifacts.read_json(store, "bad.json")


def _promote_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "nb2prod.runtime", "promote", *args],
                          capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120, check=False)


def test_promote_cli_file_store(tmp_path) -> None:
    uri = (tmp_path / "s").as_uri()
    store = open_store(uri)
    _run_with_metrics(store, "good", train={"accuracy": 0.95})
    _run_with_metrics(store, "bad", train={"accuracy": 0.5})
    artifacts.write_json(store, "iris/runs/good/run.json", {"status": "succeeded", "x": 1})

    result = _promote_cli("--pipeline", "iris", "--run-id", "good", "--metric", "accuracy",
                          "--min", "0.9", "--store", uri)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "promoted run good of iris: accuracy = 0.95 >= 0.9 (stage train)"]
    assert artifacts.read_latest(store, "iris")["run_id"] == "good"
    run = artifacts.read_json(store, "iris/runs/good/run.json")
    assert (run["status"], run["x"], run["promoted"]) == ("succeeded", 1, True)
    assert run["reason"] == "accuracy = 0.95 >= 0.9 (stage train)"
    assert run["promotion"]["metric"] == "accuracy" and run["promotion"]["min"] == 0.9
    assert run["metrics"] == {"train": {"accuracy": 0.95}}

    result = _promote_cli("--pipeline", "iris", "--run-id", "bad", "--metric", "accuracy",
                          "--min", "0.9", "--store", uri)
    assert result.returncode == 3
    assert len(result.stdout.strip().splitlines()) == 1 and "< minimum 0.9" in result.stdout
    assert artifacts.read_latest(store, "iris")["run_id"] == "good"  # unchanged
    bad = artifacts.read_json(store, "iris/runs/bad/run.json")
    assert bad["promoted"] is False and "< minimum" in bad["reason"]

    result = _promote_cli("--pipeline", "iris", "--run-id", "ghost", "--store", uri)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: promote iris/ghost: run 'ghost' of pipeline 'iris' not found in {uri}"]

    result = _promote_cli("--pipeline", "iris", "--run-id", "bad", "--store", uri)  # no gate
    assert result.returncode == 0
    assert artifacts.read_latest(store, "iris")["run_id"] == "bad"


def test_promote_cli_uses_env_store(tmp_path) -> None:
    store = FileStore(tmp_path / "s")
    _run_with_metrics(store, "r1", train={"accuracy": 0.95})
    env = {**os.environ, "NB2PROD_STORE": store.uri}
    result = _promote_cli("--pipeline", "iris", "--run-id", "r1", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert artifacts.read_latest(store, "iris")["run_id"] == "r1"


# -- isolation: stdlib-only import, works as a copied standalone file -----------------
def test_import_pulls_in_no_heavy_libraries() -> None:
    code = textwrap.dedent(f"""
        import sys
        import nb2prod.artifacts as a
        a.open_store("s3://bucket/prefix")  # boto3 only once S3 is really talked to
        print([m for m in {HEAVY!r} if m in sys.modules])
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_copied_runtime_runs_standalone(tmp_path) -> None:
    """As nb2prod_runtime/ in a pipeline dir, without the nb2prod package importable."""
    pipe = tmp_path / "pipe"
    train = _write_stage_dir(pipe, "train")
    serve = _write_stage_dir(pipe, "serve")
    ship_runtime(pipe)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYTHONPATH"] = str(pipe)  # what the runner and app.py put on a stage's path
    code = textwrap.dedent(f"""
        import sys
        import nb2prod_runtime as rt
        rt.save({{"params": {{"C": 1.0}}, "names": ["a", "b"]}})
        rt.record_metrics({{"accuracy": 0.97}})
        assert rt.load("params", producer="train") == {{"C": 1.0}}
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        assert not heavy, heavy
        assert "nb2prod" not in sys.modules, "the runtime must not import nb2prod"
        print(rt.context().store)
        """)
    result = subprocess.run([sys.executable, "-c", code], cwd=train, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (pipe / ".nb2prod/artifacts").as_uri()
    store = pipe / ".nb2prod/artifacts/iris/runs/manual/train"
    assert sorted(p.name for p in store.iterdir()) == [
        "manifest.json", "metrics.json", "names.json", "params.json"]

    promote = subprocess.run(
        [sys.executable, "-m", "nb2prod_runtime", "promote", "--pipeline", "iris", "--run-id",
         "manual", "--metric", "accuracy", "--min", "0.9"],
        cwd=train, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert promote.returncode == 0, promote.stderr
    # The service stage (no env at all) now loads from the promoted run via latest.json.
    code = "import nb2prod_runtime as rt; print(rt.current_input_run_id(), " \
           "rt.load('names', producer='train'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=serve, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "manual ['a', 'b']"


# -- JSON exactness property -----------------------------------------------------------
_json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
    | st.tuples(st.integers()),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3),
    max_leaves=10,
)


def _same_types(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same_types, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_types(a[k], b[k]) for k in a)
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json_like)
def test_json_format_is_chosen_only_when_exact(value: object) -> None:
    exact = serializers._is_exact_json(value)
    if exact:
        back = json.loads(json.dumps(value))
        assert back == value and _same_types(value, back)
    else:
        try:  # strict JSON: no NaN/Infinity
            back = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            return
        assert not (back == value and _same_types(value, back))


def test_cyclic_list_is_not_json() -> None:
    cycle: list = []
    cycle.append(cycle)
    assert not serializers._is_exact_json(cycle)


# -- the same through s3:// over real HTTP (moto server) ---------------------------------
def test_s3_round_trip_manifest_latest(s3_stage: SimpleNamespace) -> None:
    values = {
        "params": {"C": 1.0, "kernel": "rbf"},
        "X": np.arange(6, dtype=np.float64).reshape(2, 3),
        "df": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        "shape": (2, 3),
    }
    manifest = artifacts.save(values)
    assert {k: e["format"] for k, e in manifest["artifacts"].items()} == {
        "params": "json", "X": "npy", "df": "parquet", "shape": "joblib"}
    for name, value in values.items():
        _assert_same(value, artifacts.load(name, producer="train"))
    artifacts.record_metrics({"accuracy": 0.96, "label": "x"})

    # The objects are really in the bucket, under the prefix, as seen by another client.
    client = s3_stage.server.client()
    listed = client.list_objects_v2(Bucket=s3_stage.bucket, Prefix="team/artifacts/")
    keys = sorted(o["Key"] for o in listed["Contents"])
    base = "team/artifacts/iris/runs/r1/train/"
    assert keys == sorted(base + f for f in (
        "params.json", "X.npy", "df.parquet", "shape.joblib", "manifest.json", "metrics.json"))
    stored = json.loads(client.get_object(Bucket=s3_stage.bucket,
                                          Key=base + "manifest.json")["Body"].read())
    assert stored == manifest
    assert json.loads(client.get_object(Bucket=s3_stage.bucket,
                                        Key=base + "metrics.json")["Body"].read()) == {
        "accuracy": 0.96}

    store = s3_stage.store
    assert artifacts.read_latest(store, "iris") is None
    artifacts.write_latest(store, "iris", "r1", metric="accuracy")
    assert artifacts.read_latest(s3_stage.uri, "iris")["run_id"] == "r1"
    runs = artifacts.list_runs(store, "iris")
    assert runs == [{"run_id": "r1", "stage_dirs": ["train"], "latest": True}]
    assert artifacts.promote(store, "iris", "r1", "accuracy", 0.9)[0] is True
    assert artifacts.read_json(store, "iris/runs/r1/run.json")["promoted"] is True


def test_s3_store_primitives(s3_stage: SimpleNamespace, tmp_path: Path) -> None:
    store = s3_stage.store
    assert not store.exists("a/b") and store.list() == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes("a/b")
    store.write_bytes("a/b", b"1")
    store.write_atomic("a/c", b"2")
    store.write_bytes("ab", b"3")
    assert store.exists("a/b") and store.read_bytes("a/c") == b"2"
    assert store.list("a/") == ["a/b", "a/c"] and store.list("a") == ["a/b", "a/c", "ab"]
    src = tmp_path / "log.txt"
    src.write_text("hello")
    artifacts.upload_file(store, "logs/log.txt", src)
    assert store.read_bytes("logs/log.txt") == b"hello"
    assert store.url("a/b") == f"{s3_stage.uri}/a/b"
    with pytest.raises(ValueError, match="invalid store key"):
        store.read_bytes("../x")


def test_s3_store_list_follows_pagination(s3_stage: SimpleNamespace, monkeypatch) -> None:
    store = s3_stage.store
    for i in range(7):
        store.write_bytes(f"many/{i:02d}", b"")
    monkeypatch.setattr(S3Store, "list_page_size", 2)  # 4 pages over HTTP, not 1000+ PUTs
    assert store.list("many/") == [f"many/{i:02d}" for i in range(7)]


def test_s3_tamper_detection(s3_stage: SimpleNamespace) -> None:
    artifacts.save({"X": np.arange(3)})
    client = s3_stage.server.client()
    client.put_object(Bucket=s3_stage.bucket, Key="team/artifacts/iris/runs/r1/train/X.npy",
                      Body=b"not the same bytes")
    with pytest.raises(ArtifactIntegrityError, match=r"artifact 'X' \(stage 'train', run 'r1'\)"):
        artifacts.load("X", producer="train")


def test_s3_endpoint_passed_explicitly(s3_env, monkeypatch) -> None:  # noqa: F811
    """Older boto3 ignores AWS_ENDPOINT_URL; we must pass it (or the _S3 variant) ourselves."""
    seen = {}
    import boto3

    real = boto3.client

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(boto3, "client", spy)
    bucket = s3_env.make_bucket()
    S3Store(bucket).exists("x")
    assert seen["endpoint_url"] == s3_env.endpoint_url
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint_url + "/")
    S3Store(bucket).exists("x")
    assert seen["endpoint_url"] == s3_env.endpoint_url + "/"


def test_promote_cli_against_s3(s3_server, tmp_path) -> None:  # noqa: F811
    bucket = s3_server.make_bucket()
    uri = f"s3://{bucket}/p"
    store = S3Store(bucket, "p", client=s3_server.client())
    _run_with_metrics(store, "r9", evaluate={"accuracy": 0.99})
    result = _promote_cli("--pipeline", "iris", "--run-id", "r9", "--metric", "accuracy",
                          "--min", "0.9", "--store", uri, env=s3_server.subprocess_env(),
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert artifacts.read_latest(store, "iris")["run_id"] == "r9"


def test_s3_env_does_not_leak(s3_server) -> None:  # noqa: F811
    assert os.environ.get("AWS_ENDPOINT_URL") != s3_server.endpoint_url


def test_version_warning_silent_when_versions_match(stage: SimpleNamespace) -> None:
    artifacts.save({"X": np.zeros(2)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        artifacts.load("X", producer="train")


def test_a_kernel_that_does_not_start_gets_one_more_try(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    import papermill

    calls: list[str] = []

    given: list[bool] = []

    def flaky(source: str, output: str, **kwargs: object) -> None:
        calls.append(source)
        given.append("km" in kwargs)
        if len(calls) == 1:
            raise RuntimeError("Kernel didn't respond in 60 seconds")
        Path(output).write_text(Path(source).read_text())

    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}
    (tmp_path / "s.ipynb").write_text(json.dumps(nb))
    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    result = artifacts.execute_notebook(tmp_path, "s.ipynb", tmp_path / "out", {})
    assert result["status"] == "succeeded" and len(calls) == 2
    assert "the kernel did not start" in capsys.readouterr().err
    # The first try gets the kernel started ahead of papermill; the retry a fresh one.
    assert given == [True, False]

    # Twice in a row, or any other error, is the stage's failure (no endless retries).
    calls.clear()

    def dead(source: str, output: str, **kwargs: object) -> None:
        calls.append(source)
        raise RuntimeError("Kernel didn't respond in 60 seconds")

    monkeypatch.setattr(papermill, "execute_notebook", dead)
    result = artifacts.execute_notebook(tmp_path, "s.ipynb", tmp_path / "out", {})
    assert (result["status"], result["ename"], len(calls)) == ("failed", "RuntimeError", 2)


def test_stage_kernel_is_started_in_the_stage_dir_and_stopped(tmp_path: Path) -> None:
    """The kernel started ahead of papermill runs where papermill's would, and is gone after."""
    stage = tmp_path / "stage dir"
    stage.mkdir()
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "id": "c1", "source": "import os\nprint(os.getcwd())\nprint(os.getpid())"}
    nb = {"nbformat": 4, "nbformat_minor": 5, "cells": [cell], "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    (stage / "s.ipynb").write_text(json.dumps(nb))
    out = tmp_path / "out"
    result = artifacts.execute_notebook(stage, "s.ipynb", out, {}, render_html=False)
    assert result["status"] == "succeeded", result
    executed = json.loads((out / "s.ipynb").read_text())
    cwd, pid = "".join(executed["cells"][-1]["outputs"][0]["text"]).splitlines()
    assert Path(cwd) == stage
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    assert not (out / "s.html").exists()  # left to the caller (nb2prod run's runner)

    renderer = artifacts.HtmlRenderer()
    assert renderer.render(out / "s.ipynb", out / "s.html") is None
    assert str(stage) in (out / "s.html").read_text()
    assert "no such file" in renderer.render(out / "missing.ipynb", out / "m.html").lower()


def test_file_store_writes_replace_the_file_never_rewrite_it_in_place(tmp_path: Path) -> None:
    """run.json is rewritten while the panel and `runs` read it: a write is a new file
    renamed over the old one, so a reader holds either the old or the new content (a
    truncate-and-write let one read an empty file), and a hard link the cache made to
    an earlier run's file keeps that run's content."""
    store = stores.open_store(tmp_path.as_uri())
    artifacts.write_json(store, "p/runs/r1/run.json", {"run_id": "r1", "status": "running"})
    path = tmp_path / "p" / "runs" / "r1" / "run.json"
    linked = tmp_path / "linked.json"
    os.link(path, linked)
    with open(path, "rb") as reader:  # a reader that opened the file before the write
        artifacts.write_json(store, "p/runs/r1/run.json", {"run_id": "r1", "status": "done"})
        assert json.loads(reader.read())["status"] == "running"
    assert json.loads(path.read_text())["status"] == "done"
    assert json.loads(linked.read_text())["status"] == "running"
    store.write_atomic("p/latest.json", b'{"run_id": "r1"}')
    assert artifacts.read_json(store, "p/latest.json") == {"run_id": "r1"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]  # no temp files left
