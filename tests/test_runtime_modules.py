"""The stage runtime as modules (nb2prod/runtime/): each imports on its own, stays small,
needs nothing but the standard library (Flask for `web`), and the service pieces work
without gunicorn.  End-to-end behaviour is in test_artifacts.py and test_serve.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nb2prod import runtime
from nb2prod.runtime import serving, web
from tests.shipping import ship_runtime

MODULES = sorted(p.stem for p in Path(runtime.__file__).parent.glob("*.py")
                 if p.stem not in ("__init__", "__main__"))
HEAVY = ("boto3", "joblib", "numpy", "pandas", "pyarrow", "papermill", "nbconvert", "flask")


def test_no_runtime_module_is_over_600_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines())
             for p in Path(runtime.__file__).parent.glob("*.py")}
    assert max(sizes.values()) <= 600, sizes


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_from_the_shipped_copy(module: str, tmp_path: Path) -> None:
    """As `<pipeline>/nb2prod_runtime/`: no nb2prod, nothing heavy (Flask only in web)."""
    ship_runtime(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        import nb2prod_runtime.{module}
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        print("nb2prod" in sys.modules)
        """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    heavy, nb2prod_loaded = out.stdout.splitlines()
    assert heavy == ("['flask']" if module == "web" else "[]")
    assert nb2prod_loaded == "False"


def test_runtime_cli_runs_as_a_package(tmp_path: Path) -> None:
    ship_runtime(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "nb2prod_runtime", "--help"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "usage: python -m nb2prod_runtime" in out.stdout
    assert "run-stage" in out.stdout and "promote" in out.stdout


@pytest.fixture
def stage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("NB2PROD_API_TOKEN", "NB2PROD_PIPELINE", "NB2PROD_STAGE", "NB2PROD_WORKERS",
                "NB2PROD_READY_WAIT_SECONDS", "NB2PROD_INSTANCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NB2PROD_STAGE_DIR", "")  # configure() sets it; restored after
    (tmp_path / "config.ini").write_text(
        "[default]\nNAME = serve\n[service]\nROUTE = v2/score/\nMAX_REQUEST_BYTES = 2048\n")
    return tmp_path


def test_configure_layers_defaults_config_and_environment(
        stage_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NB2PROD_PIPELINE", "from-env")
    settings = serving.configure(str(stage_dir), {
        "pipeline": "iris", "stage": "s", "executable": "serve.ipynb", "route": "/predict",
        "entrypoint": "predict", "nb2prod_version": "1.2.3"})
    assert settings["pipeline"] == "from-env"  # environment > config.ini > app.py
    assert settings["stage"] == "serve"        # config.ini > app.py
    assert settings["route"] == "/v2/score"    # normalised
    assert settings["max_request_bytes"] == 2048
    assert settings["token_bytes"] is None
    assert serving.VERSIONS["nb2prod"] == "1.2.3"
    assert os.environ["NB2PROD_STAGE_DIR"] == str(stage_dir)


def test_configure_refuses_a_reserved_route(stage_dir: Path) -> None:
    (stage_dir / "config.ini").write_text("[service]\nROUTE = /healthz\n")
    with pytest.raises(serving.ConfigError, match="ROUTE '/healthz' is reserved"):
        serving.configure(str(stage_dir), {"pipeline": "p", "stage": "s",
                                           "executable": "s.ipynb", "route": "/p",
                                           "entrypoint": "predict"})


def test_create_app_answers_probes_before_start_up(stage_dir: Path) -> None:
    """The Flask app without gunicorn and without running any cell: alive, not ready."""
    serving.configure(str(stage_dir), {"pipeline": "iris", "stage": "serve",
                                       "executable": "serve.ipynb", "route": "/predict",
                                       "entrypoint": "predict"})
    serving.STATE = serving.State()
    client = web.create_app().test_client()
    assert client.get("/healthz").get_json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["status"] == "starting"
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert "POST /v2/score to predict" in json.loads(missing.data)["error"]
