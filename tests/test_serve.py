"""The generated service app under real gunicorn, probed over real HTTP.

Each scenario renders `stage_templates/app.py.j2` into a temporary stage directory next
to a notebook written here, starts it with `nb2prod.serve.start_service` on a free port
and talks to it with urllib: the same path `nb2prod run` and the containers take, so
what passes here is what users get.  One server per scenario group keeps the file fast.
"""

from __future__ import annotations

import http.client
import json
import pickle
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest

from nb2prod import serve
from nb2prod.errors import UserError
from tests.shipping import ship_runtime

pytest.importorskip("flask")
pytest.importorskip("gunicorn")

TEMPLATES = Path(__file__).resolve().parents[1] / "stage_templates"
TOKEN = "s3cr3t-token-for-tests"
BODY_MARKER = "body-marker-never-logged"
STARTUP_TIMEOUT = 90.0

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- helpers


def render_app(stage_dir: Path, route: str = "/predict", entrypoint: str = "predict") -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,  # the settings nb2prod.templates uses
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    source = env.get_template("app.py.j2").render(
        pipeline="iris-test", stage="serve", executable="serve.ipynb", route=route,
        entrypoint=entrypoint, nb2prod_version="9.9.9",
    )
    (stage_dir / "app.py").write_text(source, encoding="utf-8")
    ship_runtime(stage_dir)  # beside app.py, as in a pod
    return source


def write_notebook(path: Path, cells: list[str | tuple[str, str]]) -> None:
    """nbformat 4 JSON by hand: a tuple is (cell_type, source) for non-code cells."""
    nb_cells = []
    for cell in cells:
        kind, source = cell if isinstance(cell, tuple) else ("code", cell)
        entry: dict = {"cell_type": kind, "metadata": {}, "source": source.splitlines(True)}
        if kind == "code":
            entry.update(outputs=[], execution_count=None)
        nb_cells.append(entry)
    nb = {"nbformat": 4, "nbformat_minor": 5, "cells": nb_cells,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}}}
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


def write_config(stage_dir: Path, service: dict[str, str] | None = None) -> None:
    lines = ["[default]", "NAME = serve", "PIPELINE = iris-test", "STAGE_TYPE = service",
             "EXECUTABLE = serve.ipynb  ; the stage notebook", "[service]", "PORT = 8080"]
    lines += [f"{k} = {v}" for k, v in (service or {}).items()]
    (stage_dir / "config.ini").write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def call(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=timeout) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, dict(exc.headers), exc.read())


def post_json(url: str, payload: object, token: str | None = None, **kw: object) -> Reply:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return call(url, "POST", json.dumps(payload).encode(), headers, **kw)  # type: ignore[arg-type]


@dataclass
class Server:
    url: str
    proc: serve.ServiceProcess
    stage_dir: Path


def reserved_port() -> tuple[int, socket.socket]:
    """A port bound for gunicorn (``listener=``) until it listens: no other process can
    take it in between, as one could a port that is only free when it was picked."""
    listener = serve.reserve_port("127.0.0.1", 0)
    return listener.getsockname()[1], listener


def start(stage_dir: Path, env: dict[str, str] | None = None, wait: bool = True,
          threads: int = 1) -> Server:
    port, listener = reserved_port()
    proc = serve.start_service(stage_dir, port, env or {}, workers=1, threads=threads,
                               listener=listener)
    server = Server(f"http://127.0.0.1:{port}", proc, stage_dir)
    if wait:
        try:
            serve.wait_ready(server.url, STARTUP_TIMEOUT, proc)
        except BaseException:
            serve.stop_service(proc, 10)
            raise
    return server


def wait_listening(server: Server) -> None:
    """Until /healthz answers: the server is up, whatever its readiness."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.proc.output_tail()
        try:
            if call(server.url + "/healthz", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("server never answered /healthz\n" + server.proc.output_tail())


def scrape(server: Server) -> dict[str, float]:
    reply = call(server.url + "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?) (\S+)$')
    for line in reply.body.decode().splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        match = sample.match(line)
        assert match, f"not Prometheus text: {line!r}"
        samples[match.group(1)] = float(match.group(3))
    return samples


# --------------------------------------------------------------------------- notebooks

IRIS_CELLS: list[str | tuple[str, str]] = [
    ("markdown", "# Serving the iris model\n"),
    (
        "%matplotlib inline\nimport time\nimport numpy as np\n!echo hi\n"
        "from sklearn.datasets import load_iris\n"
        "from sklearn.linear_model import LogisticRegression\n"
    ),
    "%%bash\necho 'a bash cell must not run as Python'\nexit 1\n",
    (
        "iris = load_iris()\n"
        "model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)\n"
        "SPECIES = list(iris.target_names)\n"
    ),
    # Magics inside blocks and as assignments, and Python cell magics whose body must run.
    "listing = !ls\nif True:\n    %time warmed = 1\n    magics_ok = listing is None\n",
    "%%time\ntimed_cell_ran = True\n",
    "%%capture captured\ncaptured_cell_ran = True\n",
    (
        "def predict(payload):\n"
        "    if payload.get('fail'):\n"
        "        raise RuntimeError('internal detail: do not leak')\n"
        "    if payload.get('unfitted'):  # NotFittedError: a ValueError, but the model's fault\n"
        "        LogisticRegression().predict([[1.0, 2.0, 3.0, 4.0]])\n"
        "    X = np.asarray(payload['instances'], dtype=float)\n"
        "    classes = model.predict(X)\n"
        "    return {'predictions': [SPECIES[i] for i in classes], 'classes': classes,\n"
        "            'magics_ok': magics_ok and timed_cell_ran and captured_cell_ran}\n"
    ),
    "predict({'instances': [[5.1, 3.5, 1.4, 0.2]]})\n",
]

@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The iris model behind a token, with config.ini overriding the rendered route."""
    stage = tmp_path_factory.mktemp("iris-serve")
    render_app(stage, route="/predict")
    write_notebook(stage / "serve.ipynb", IRIS_CELLS)
    write_config(stage, {"ROUTE": "/v1/predict", "ENTRYPOINT": "predict",
                         "MAX_REQUEST_BYTES": "65536", "WORKERS": "1"})
    # gthread: request threads really update the metrics concurrently.  One worker, so
    # /metrics sees every request (each worker counts only its own).
    server = start(stage, {"NB2PROD_API_TOKEN": TOKEN + "\n",  # the "\n" is stripped
                           "MODEL_RUN_ID": "run-20240101-abc"}, threads=4)
    yield server
    serve.stop_service(server.proc, 30)


# --------------------------------------------------------------------------- iris: happy path


def test_generated_app_is_plain_python_without_nb2prod(tmp_path: Path) -> None:
    source = render_app(tmp_path)
    compile(source, "app.py", "exec")
    assert not re.search(r"^\s*(import|from) nb2prod\b(?!_)", source, re.MULTILINE)
    assert "from nb2prod_runtime.web import build_app" in source  # the pipeline's runtime
    assert 'pipeline="iris-test"' in source
    hostile = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES))).get_template(
        "app.py.j2").render(pipeline='x"\n__import__("os").system("boom")#', stage="s",
                            executable="s.ipynb", route="/p", entrypoint="predict",
                            nb2prod_version="1")
    compile(hostile, "app.py", "exec")
    assert '\n__import__("os")' not in hostile  # the value stayed inside its string literal


def test_probes_and_info(iris: Server) -> None:
    assert call(iris.url + "/healthz").status == 200
    ready = call(iris.url + "/readyz")
    # The nonce of this start: `wait_ready` checks that the answering server is ours.
    assert iris.proc.instance and len(iris.proc.instance) == 16
    assert ready.status == 200 and ready.json() == {"status": "ready",
                                                    "instance": iris.proc.instance}
    assert call(iris.url + "/info").status == 401  # /info is protected like the route
    info = call(iris.url + "/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert isinstance(info, dict)
    assert info["pipeline"] == "iris-test" and info["stage"] == "serve"
    assert info["run_id"] == "run-20240101-abc"
    assert info["route"] == "/v1/predict"  # config.ini beat the rendered default
    assert info["versions"]["nb2prod"] == "9.9.9"
    assert info["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["versions"]["flask"]
    assert info["startup_seconds"] > 0
    assert info["max_request_bytes"] == 65536
    assert info["instance"] == iris.proc.instance


def test_predictions_over_http(iris: Server) -> None:
    reply = post_json(iris.url + "/v1/predict",
                      {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}, TOKEN)
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert body == {"predictions": ["setosa", "virginica"], "classes": [0, 2],
                    "magics_ok": True}


def test_bad_requests(iris: Server) -> None:
    url = iris.url + "/v1/predict"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    malformed = call(url, "POST", b'{"instances": [[1, 2', {"Content-Type": "application/json",
                                                             **auth})
    assert malformed.status == 400
    assert "malformed JSON" in malformed.json()["error"]
    not_json = call(url, "POST", b"instances=1", {"Content-Type": "text/plain", **auth})
    assert not_json.status == 400 and "application/json" in not_json.json()["error"]
    # config.ini says 65536 bytes: just under passes the size check, just over is 413.
    filler = "x" * 60000
    assert post_json(url, {"instances": [[5.1, 3.5, 1.4, 0.2]], "pad": filler},
                     TOKEN).status == 200
    big = post_json(url, {"instances": [], "pad": "x" * 70000}, TOKEN)
    assert big.status == 413 and "65536" in big.json()["error"]
    # Without Content-Length (chunked), the limit holds too.
    host, port = iris.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b"[" + b"1," * 4000 + b"1]" for _ in range(10))
    conn.request("POST", "/v1/predict", body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json", **auth})
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]
    conn.close()
    missing = call(iris.url + "/nope")
    assert missing.status == 404 and "error" in missing.json()
    assert call(iris.url + "/predict", "POST", b"{}").status == 404  # the route moved
    wrong_method = call(url)
    assert wrong_method.status == 405 and "error" in wrong_method.json()
    assert "POST" in wrong_method.headers["Allow"]


def test_token(iris: Server) -> None:
    url = iris.url + "/v1/predict"
    payload = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        reply = post_json(url, payload, token)
        assert reply.status == 401, token
        assert reply.json() == {"error": "missing or invalid bearer token"}
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    basic = call(url, "POST", b"{}", {"Authorization": f"Basic {TOKEN}",
                                      "Content-Type": "application/json"})
    assert basic.status == 401
    assert post_json(url, payload, TOKEN).status == 200
    for probe in ("/healthz", "/readyz", "/metrics"):  # probes and scrapers need no token
        assert call(iris.url + probe).status == 200


def test_predict_error_is_500_without_traceback_and_metrics_count(iris: Server) -> None:
    before = scrape(iris)
    url = iris.url + "/v1/predict"
    ok = post_json(url, {"instances": [[5.1, 3.5, 1.4, 0.2]], "note": BODY_MARKER}, TOKEN)
    assert ok.status == 200
    failed = post_json(url, {"fail": True, "note": BODY_MARKER}, TOKEN)
    assert failed.status == 500
    body = failed.json()
    assert body["error"] == "prediction failed" and body["request_id"]
    assert failed.headers["X-Request-ID"] == body["request_id"]
    text = failed.body.decode()
    assert "Traceback" not in text and "internal detail" not in text and ".py" not in text
    after = scrape(iris)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    ok_key = 'nb2prod_http_requests_total{route="/v1/predict",method="POST",code="200"}'
    err_key = 'nb2prod_http_requests_total{route="/v1/predict",method="POST",code="500"}'
    assert delta(ok_key) == 1 and delta(err_key) == 1
    assert delta("nb2prod_predict_errors_total") == 1
    assert delta('nb2prod_http_request_duration_seconds_count{route="/v1/predict"}') == 2
    assert after['nb2prod_http_request_duration_seconds_bucket{route="/v1/predict",le="+Inf"}'] \
        == after['nb2prod_http_request_duration_seconds_count{route="/v1/predict"}']
    assert after["nb2prod_ready"] == 1 and after["nb2prod_startup_seconds"] > 0
    # The traceback went to the server log under the request id; token and bodies did not.
    deadline = time.monotonic() + 60  # the worker's log line comes through a pipe: no promise when
    while body["request_id"] not in "\n".join(iris.proc.output()) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = "\n".join(iris.proc.output())
    assert body["request_id"] in log and "Traceback" in log and "internal detail" in log
    assert TOKEN not in log and BODY_MARKER not in log


def test_input_the_model_rejects_is_422_with_the_estimators_message(iris: Server) -> None:
    """Wrong shape, wrong type, missing key: the caller's mistake, told in the library's words."""
    url = iris.url + "/v1/predict"
    before = scrape(iris)
    cases = [
        ({"instances": [[5.1, 3.5]]}, ("invalid input: ValueError: X has 2 features, but "
         "LogisticRegression is expecting 4 features as input.")),
        ({"instances": [["a", "b", "c", "d"]]}, ("invalid input: ValueError: could not convert "
         "string to float: 'a'")),
        ({"rows": [[5.1, 3.5, 1.4, 0.2]]}, "invalid input: KeyError: 'instances'"),
    ]
    for payload, message in cases:
        reply = post_json(url, payload, TOKEN)
        assert reply.status == 422, (payload, reply.body)
        body = reply.json()
        assert body["error"] == message
        assert body["request_id"] == reply.headers["X-Request-ID"]
    # An AttributeError (here `payload.get` on a list) and scikit-learn's NotFittedError
    # (a ValueError *and* an AttributeError) are failures of the code or model: 500.
    for payload in ([[5.1, 3.5, 1.4, 0.2]], {"unfitted": True}):
        reply = post_json(url, payload, TOKEN)
        assert reply.status == 500, (payload, reply.body)
        assert reply.json()["error"] == "prediction failed"
    after = scrape(iris)
    assert after["nb2prod_predict_errors_total"] - before.get(
        "nb2prod_predict_errors_total", 0.0) == 2
    key = 'nb2prod_http_requests_total{route="/v1/predict",method="POST",code="422"}'
    assert after[key] - before.get(key, 0.0) == 3


def test_metrics_counters_are_exact_under_concurrency(iris: Server) -> None:
    key = 'nb2prod_http_requests_total{route="/healthz",method="GET",code="200"}'
    before = scrape(iris).get(key, 0.0)
    threads = [threading.Thread(target=lambda: [call(iris.url + "/healthz") for _ in range(10)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert scrape(iris)[key] - before == 40


# --------------------------------------------------------------------------- slow start-up

SLOW_CELLS: list[str | tuple[str, str]] = [
    (
        "import os\nimport pickle\nimport time\nimport numpy as np\n"
        "try:\n    import pandas as pd\nexcept ImportError:\n    pd = None\n"
    ),
    (
        "class Scaler:\n"
        "    def __init__(self, factor):\n        self.factor = factor\n\n"
        "    def apply(self, values):\n"
        "        return np.asarray(values, dtype=float) * self.factor\n"
    ),
    # The kernel pickled Scaler as __main__.Scaler; under gunicorn __main__ is gunicorn's.
    (
        "with open('scaler.pkl', 'rb') as fh:\n    scaler = pickle.load(fh)\n"
        "deadline = time.time() + 60\n"
        "while not os.path.exists('release') and time.time() < deadline:\n"
        "    time.sleep(0.02)\n"
    ),
    (
        "def predict(payload):\n"
        "    values = scaler.apply(payload['values'])\n"
        "    out = {'scaled': values, 'total': values.sum(), 'f32': np.float32(0.5),\n"
        "           'i64': np.int64(7), 'flag': np.bool_(True), 'nan': float('nan'),\n"
        "           'matrix': [np.eye(2, dtype=np.int32)], 'module': type(scaler).__module__}\n"
        "    if pd is not None:\n"
        "        out['frame'] = pd.DataFrame({'a': [1, 2], 'b': [0.5, np.nan]})\n"
        "        out['series'] = pd.Series([1.5, 2.5])\n"
        "    return out\n"
    ),
]


def main_module_pickle() -> bytes:
    """Pickle an object the way a notebook kernel would: its class lives in `__main__`."""
    namespace: dict = {"__name__": "__main__"}
    exec(SLOW_CELLS[1].replace("np.asarray(values, dtype=float)", "values"), namespace)  # noqa: S102
    cls = namespace["Scaler"]
    main = sys.modules["__main__"]
    main.Scaler = cls  # type: ignore[attr-defined]
    try:
        return pickle.dumps(cls(3.0))
    finally:
        delattr(main, "Scaler")


def test_slow_startup_readiness_numpy_results_and_main_pickles(tmp_path: Path) -> None:
    render_app(tmp_path)
    write_notebook(tmp_path / "serve.ipynb", SLOW_CELLS)
    write_config(tmp_path)  # no MAX_REQUEST_BYTES: the 1 MiB default applies
    (tmp_path / "scaler.pkl").write_bytes(main_module_pickle())
    server = start(tmp_path, {"NB2PROD_READY_WAIT_SECONDS": "1"}, wait=False)
    url = server.url + "/predict"
    try:
        wait_listening(server)
        starting = call(server.url + "/readyz")
        assert starting.status == 503 and starting.json()["status"] == "starting"
        early = post_json(url, {"values": [1]})  # waits 1 s for start-up, then gives up
        assert early.status == 503 and early.json()["status"] == "starting"
        assert scrape(server)["nb2prod_ready"] == 0
        (tmp_path / "release").touch()
        serve.wait_ready(server.url, STARTUP_TIMEOUT, server.proc)
        reply = post_json(url, {"values": [1, 2]})  # no token configured: open
        assert reply.status == 200, reply.body
        body = reply.json()
        assert body["scaled"] == [3.0, 6.0] and body["total"] == 9.0
        assert body["f32"] == 0.5 and body["i64"] == 7 and body["flag"] is True
        assert body["nan"] is None  # strict JSON: NaN becomes null
        assert body["matrix"] == [[[1, 0], [0, 1]]]
        assert body["module"] == "__nb2prod_stage__"
        try:
            import pandas  # noqa: F401
        except ImportError:
            pass
        else:
            assert body["frame"] == [{"a": 1, "b": 0.5}, {"a": 2, "b": None}]
            assert body["series"] == [1.5, 2.5]
        info = call(server.url + "/info").json()
        assert isinstance(info, dict) and info["run_id"] == "manual"  # no run was named
        big = post_json(url, {"values": [], "pad": "x" * (1024 * 1024)})
        assert big.status == 413
    finally:
        serve.stop_service(server.proc, 30)


def test_request_during_startup_is_held_until_ready(tmp_path: Path) -> None:
    """A request that arrives while start-up runs waits for it instead of failing.

    The wait is the maximum (300 s), so how long start-up takes on a busy machine
    after the release cannot matter: only "held, then answered" is asserted.
    """
    render_app(tmp_path)
    write_notebook(tmp_path / "serve.ipynb", SLOW_CELLS)
    write_config(tmp_path)
    (tmp_path / "scaler.pkl").write_bytes(main_module_pickle())
    server = start(tmp_path, {"NB2PROD_READY_WAIT_SECONDS": "300"}, wait=False)
    try:
        wait_listening(server)
        held: list[Reply] = []
        worker = threading.Thread(
            target=lambda: held.append(post_json(server.url + "/predict", {"values": [1]},
                                           timeout=STARTUP_TIMEOUT)))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not held  # still start-up: the request waits
        (tmp_path / "release").touch()
        worker.join(STARTUP_TIMEOUT)
        assert held and held[0].status == 200, held and held[0].body
        assert held[0].json()["scaled"] == [3.0]
    finally:
        serve.stop_service(server.proc, 30)


# --------------------------------------------------------------------------- failures


def test_missing_entrypoint_is_not_ready_and_named(tmp_path: Path) -> None:
    render_app(tmp_path)
    write_notebook(tmp_path / "serve.ipynb", ["def predict_fn(payload):\n    return 1\n"])
    write_config(tmp_path)
    server = start(tmp_path, wait=False)
    try:
        with pytest.raises(serve.ServiceError, match="'predict'") as caught:
            serve.wait_ready(server.url, STARTUP_TIMEOUT, server.proc)
        assert "ENTRYPOINT" in str(caught.value)
        assert "last server output" in str(caught.value)
        assert call(server.url + "/healthz").status == 200  # alive, just not ready
        ready = call(server.url + "/readyz")
        assert ready.status == 503
        assert ready.json()["status"] == "failed" and "'predict'" in ready.json()["reason"]
        refused = post_json(server.url + "/predict", {"x": 1})
        assert refused.status == 503 and "'predict'" in refused.json()["reason"]
        assert scrape(server)["nb2prod_startup_failed"] == 1
    finally:
        serve.stop_service(server.proc, 30)


def test_failing_start_up_cell_is_named_as_in_the_users_notebook(tmp_path: Path) -> None:
    """Stage cell 3 is the user's cell 7 (split records the mapping): the reason says cell 8."""
    render_app(tmp_path)
    write_notebook(tmp_path / "serve.ipynb", ["x = 1\n", "y = 2\n",
                                              "model = load('m.joblib')  # gone\n"])
    nb = json.loads((tmp_path / "serve.ipynb").read_text())
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"c{i}"
    nb["metadata"]["nb2prod"] = {"source_cells_by_id": {"c0": 1, "c2": 7}}
    (tmp_path / "serve.ipynb").write_text(json.dumps(nb))
    write_config(tmp_path)
    server = start(tmp_path, wait=False)
    try:
        with pytest.raises(serve.ServiceError) as info:
            serve.wait_ready(server.url, STARTUP_TIMEOUT, server.proc)
        assert ('failed to start: cell 8 ("model = load(\'m.joblib\')  # gone") raised '
                "NameError: name 'load' is not defined") in str(info.value)
    finally:
        serve.stop_service(server.proc, 30)


def test_failing_cell_reason_is_private_when_token_set(tmp_path: Path) -> None:
    render_app(tmp_path)
    write_notebook(tmp_path / "serve.ipynb",
                   ["x = 1\n", "raise ValueError('bucket creds-xyz unreachable')\n"])
    write_config(tmp_path)
    server = start(tmp_path, {"NB2PROD_API_TOKEN": TOKEN}, wait=False)
    try:
        # The runner (the operator's console) gets the whole reason, from the log ...
        with pytest.raises(serve.ServiceError, match=r"serve\.ipynb cell 2 \(.*\) raised "
                                                     r"ValueError: bucket creds-xyz"):
            serve.wait_ready(server.url, STARTUP_TIMEOUT, server.proc)
        # ... clients only the cell and the exception type.
        reason = call(server.url + "/readyz").json()["reason"]
        assert "ValueError" in reason and "creds-xyz" not in reason
        assert "creds-xyz" in "\n".join(server.proc.output())  # full detail in the log only
    finally:
        serve.stop_service(server.proc, 30)


def test_bad_config_fails_fast_with_the_key(tmp_path: Path) -> None:
    render_app(tmp_path)
    write_notebook(tmp_path / "serve.ipynb", ["def predict(p):\n    return p\n"])
    write_config(tmp_path, {"MAX_REQUEST_BYTES": "lots"})
    server = start(tmp_path, wait=False)
    try:
        with pytest.raises(serve.ServiceError, match="exited with code") as caught:
            serve.wait_ready(server.url, STARTUP_TIMEOUT, server.proc)
        assert "MAX_REQUEST_BYTES" in str(caught.value)
    finally:
        serve.stop_service(server.proc, 10)


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_drains_in_flight_request(tmp_path: Path) -> None:
    render_app(tmp_path)
    write_notebook(tmp_path / "serve.ipynb", [
        "import pathlib\nimport time\n",
        (
            "def predict(payload):\n"
            "    pathlib.Path('in-flight').touch()\n"
            "    time.sleep(payload['sleep'])\n"
            "    return {'slept': payload['sleep']}\n"
        ),
    ])
    write_config(tmp_path)
    server = start(tmp_path)
    replies: list[Reply] = []
    client = threading.Thread(
        target=lambda: replies.append(post_json(server.url + "/predict", {"sleep": 1.0})))
    try:
        client.start()
        deadline = time.monotonic() + 60
        while not (tmp_path / "in-flight").exists():
            assert time.monotonic() < deadline, server.proc.output_tail()
            time.sleep(0.01)
        rc = serve.stop_service(server.proc, 30)  # SIGTERM while predict sleeps
        client.join(10)
    finally:
        if server.proc.poll() is None:
            serve.stop_service(server.proc, 5)
    assert rc == 0, server.proc.output_tail()
    assert replies and replies[0].status == 200 and replies[0].json() == {"slept": 1.0}


# --------------------------------------------------------------------------- faults


def raw_exchange(url: str, request: bytes, timeout: float = 30) -> bytes:
    """Send `request` as is on a fresh loopback connection; the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_malformed_chunked_body_is_400_not_500(iris: Server) -> None:
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    answer = raw_exchange(iris.url, head + b"zz\r\n{}\r\n0\r\n\r\n")  # "zz": no size
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"].startswith("malformed request body"), body
    assert "unexpected error" not in "\n".join(iris.proc.output())
    # a well-formed chunked body still works on the same server
    good = raw_exchange(iris.url, head + b"2a\r\n" + b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}     '
                        + b"\r\n0\r\n\r\n")
    assert good.split()[1] == b"200", good


def test_startup_failure_shows_clients_a_short_reason_only(tmp_path: Path) -> None:
    render_app(tmp_path)
    secret_path = "/srv/models/acme-prod/credentials.json"
    write_notebook(tmp_path / "serve.ipynb",
                   ["x = 1\n", f"raise FileNotFoundError('no such file: {secret_path}')\n"])
    write_config(tmp_path)
    server = start(tmp_path, {"NB2PROD_READY_WAIT_SECONDS": "0"}, wait=False)  # no token
    try:
        with pytest.raises(serve.ServiceError) as caught:
            serve.wait_ready(server.url, STARTUP_TIMEOUT, server.proc)
        assert secret_path in str(caught.value).splitlines()[0]  # the runner says it all
        ready = call(server.url + "/readyz")
        assert ready.status == 503
        assert ready.json()["reason"] == ("serve.ipynb cell 2 raised FileNotFoundError "
                                          "(details in the server log)")
        predict = post_json(server.url + "/predict", {})
        assert predict.status == 503 and predict.json()["reason"] == ready.json()["reason"]
        for reply in (ready, predict):
            assert secret_path not in reply.body.decode() and "acme" not in reply.body.decode()
        assert secret_path in "\n".join(server.proc.output())  # the log keeps the detail
    finally:
        serve.stop_service(server.proc, 30)


def test_readiness_refuses_an_answer_from_another_server() -> None:
    import http.server

    class Impostor(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ready", "instance": "someone-else"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Impostor) as impostor:
        thread = threading.Thread(target=impostor.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{impostor.server_address[1]}"
            with pytest.raises(serve.ServiceError, match="another server answers there"):
                serve.wait_ready(url, 30, None, instance="ours")
            serve.wait_ready(url, 30, None)  # without a nonce, any ready answer will do
        finally:
            impostor.shutdown()
            thread.join(10)


# A server whose /readyz says "failed" at once, while its log line with the full reason
# comes through the pipe only later (as on a busy machine, where the pump thread lags).
LATE_LOG_LINE = """
import http.server, json, sys, threading, time
class Failed(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "failed", "reason": "cell 2 raised OSError"}).encode()
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Failed)
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep(1.5)
print("x nb2prod: start-up failed after 0.10s: the full reason: /srv/secret.json", flush=True)
time.sleep(120)
"""


def test_a_failure_reads_the_full_reason_even_when_its_log_line_comes_late() -> None:
    """wait_ready's error has the server log's reason, not /readyz's short one, also when
    the log line was still in the pipe when /readyz answered (a race seen under load)."""
    port = serve.free_port()  # (only this test's own server binds it)
    proc = serve.ServiceProcess([sys.executable, "-c", LATE_LOG_LINE, str(port)],
                                stdin=subprocess.DEVNULL)
    try:
        with pytest.raises(serve.ServiceError) as caught:
            serve.wait_ready(f"http://127.0.0.1:{port}", STARTUP_TIMEOUT, proc)
        assert str(caught.value).splitlines()[0].endswith(
            "failed to start: the full reason: /srv/secret.json"), caught.value
    finally:
        proc.kill()
        proc.wait(30)


SLOW_CLIENTS = 3  # more than the workers, fewer than the threads of one worker
TRICKLE_SECONDS = 0.5


def test_slow_clients_do_not_starve_the_others(tmp_path: Path) -> None:
    """Clients that trickle a byte at a time hold a thread each, never the worker.

    With the default settings (`nb2prod run`'s and the pods'), one worker here: under sync
    workers the first slow client would block /healthz until gunicorn's worker timeout.
    """
    render_app(tmp_path)
    write_notebook(tmp_path / "serve.ipynb", ["def predict(payload):\n    return payload\n"])
    write_config(tmp_path)
    port, listener = reserved_port()
    proc = serve.start_service(tmp_path, port, {}, workers=1,  # default threads
                               listener=listener)
    base = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    connected = threading.Semaphore(0)
    errors: list[BaseException] = []

    def trickle() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                connected.release()
                deadline = time.monotonic() + 120  # bounded, even if the test hangs
                while not stop.wait(TRICKLE_SECONDS) and time.monotonic() < deadline:
                    sock.sendall(b"a")
        except OSError as exc:  # the server closing on us is fine; record anything else
            if not stop.is_set():
                errors.append(exc)

    clients = [threading.Thread(target=trickle, daemon=True) for _ in range(SLOW_CLIENTS)]
    try:
        serve.wait_ready(base, STARTUP_TIMEOUT, proc)
        for client in clients:
            client.start()
        for _ in clients:
            assert connected.acquire(timeout=30), "a slow client could not connect"
        time.sleep(TRICKLE_SECONDS * 4)  # let every slow request reach a worker thread
        for _ in range(5):
            assert call(base + "/healthz", timeout=20).status == 200
        reply = post_json(base + "/predict", {"x": 1}, timeout=20)
        assert reply.status == 200 and reply.json() == {"x": 1}
        assert not errors, errors
    finally:
        stop.set()
        for client in clients:
            client.join(10)
        serve.stop_service(proc, 30)


# --------------------------------------------------------------------------- serve.py units


def test_gunicorn_command(tmp_path: Path) -> None:
    cmd = serve.gunicorn_command(tmp_path, 8123, 3)
    assert cmd[:3] == [sys.executable, "-m", "gunicorn"]
    assert cmd[-1] == "app:app"
    assert cmd[cmd.index("--chdir") + 1] == str(tmp_path.resolve())
    assert cmd[cmd.index("--bind") + 1] == "127.0.0.1:8123"
    assert cmd[cmd.index("--workers") + 1] == "3"
    assert int(cmd[cmd.index("--graceful-timeout") + 1]) > 0
    assert "--access-logfile" not in cmd
    assert "--access-logfile" in serve.gunicorn_command(tmp_path, 1, 1, access_log=True)
    v6 = serve.gunicorn_command(tmp_path, 80, 1, host="::1")
    assert v6[v6.index("--bind") + 1] == "[::1]:80"
    threaded = serve.gunicorn_command(tmp_path, 80, 1, threads=4)
    assert threaded[threaded.index("--worker-class") + 1] == "gthread"
    with pytest.raises(ValueError):
        serve.gunicorn_command(tmp_path, 80, 0)


def test_start_service_needs_app_py(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="app.py"):
        serve.start_service(tmp_path, serve.free_port(), {}, 1)


def test_wait_ready_times_out_with_reason() -> None:
    port = serve.free_port()  # nothing listens there
    with pytest.raises(serve.ServiceError, match=r"not ready after 0\.3s"):
        serve.wait_ready(f"http://127.0.0.1:{port}", 0.3, None)


# The first worker to get here goes on at once; any other waits for the file `go`.
FIRST_WORKER_ONLY = [
    ("import os, pathlib, time\n"
    "here = pathlib.Path(os.environ['GATE_DIR'])\n"
    "try:\n"
    "    os.close(os.open(here / 'first', os.O_CREAT | os.O_EXCL))\n"
    "except FileExistsError:\n"
    "    while not (here / 'go').exists():\n"
    "        time.sleep(0.05)\n"),
    "def predict(payload):\n    return os.getpid()\n",
]


def test_ready_only_when_every_worker_finished_startup(tmp_path: Path) -> None:
    render_app(tmp_path)
    write_notebook(tmp_path / "serve.ipynb", FIRST_WORKER_ONLY)
    write_config(tmp_path)
    port, listener = reserved_port()
    proc = serve.start_service(tmp_path, port, {"GATE_DIR": str(tmp_path),
                                                "NB2PROD_READY_WAIT_SECONDS": "0"}, workers=2,
                               listener=listener)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_listening(Server(base, proc, tmp_path))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        served: set[int] = set()
        while not served and time.monotonic() < deadline:  # one worker is ready...
            assert proc.poll() is None, proc.output_tail()
            reply = post_json(base + "/predict", {})
            if reply.status == 200:
                served.add(reply.json())
            time.sleep(0.05)
        assert served
        for _ in range(20):  # ... but the pod is not, whichever worker answers
            ready = call(base + "/readyz")
            assert ready.status == 503, ready.json()
            assert ready.json()["status"] == "starting"
        (tmp_path / "go").touch()
        serve.wait_ready(base, STARTUP_TIMEOUT, proc)
        for _ in range(20):
            assert call(base + "/readyz").json() == {"status": "ready",
                                                     "instance": proc.instance}
        markers = [p for p in Path(tempfile.gettempdir()).iterdir()
                   if p.name.startswith(f"nb2prod-ready-{proc.pid}-")]
        assert len(markers) == 2
    finally:
        serve.stop_service(proc, 10)
    assert not [p for p in Path(tempfile.gettempdir()).iterdir()
                if p.name.startswith(f"nb2prod-ready-{proc.pid}-")]
