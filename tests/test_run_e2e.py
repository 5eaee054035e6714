"""`nb2prod run` end to end, through the real CLI and real HTTP.

Each example notebook is split and run once per module (module-scoped fixtures: every
stage costs a papermill kernel start), served by gunicorn on a free port, and queried
with urllib.  The helpers at the top (`Command`, `nb2prod`, `http`, ...) are shared with
tests/test_run_failures.py and tests/test_run_s3.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.environ import without_nb2prod_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example_notebooks"
RUN_DATA = Path(__file__).resolve().parent / "data" / "run"

#: "serving serve (run 20261122t001835-9b55) at http://127.0.0.1:18123/predict"
SERVING_LINE = re.compile(r"^serving (?P<stage>\S+) \(run (?P<run_id>\S+)\) at "
                          r"(?P<url>http://\S+)$", re.MULTILINE)
#: "run 20261122t001835-9b55: 1 batch stage(s), store file:///..."
RUN_LINE = re.compile(r"^run (?P<run_id>[0-9a-z-]+): \d+ batch stage", re.MULTILINE)

# Generous: a loaded 2-core machine needs ~5-25 s per papermill stage.
RUN_TIMEOUT = 300


# --------------------------------------------------------------------------- helpers


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without variables that would steer a run, plus `extra`.

    COLUMNS keeps rich tables (`nb2prod runs`) on one line per row in a pipe.
    """
    env = {k: v for k, v in without_nb2prod_settings().items()
           if k not in ("MODEL_RUN_ID", "AWS_ENDPOINT_URL")}
    env["COLUMNS"] = "300"
    env.update(extra)
    return env


def nb2prod(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run `python -m nb2prod ARGS` to completion; stdout and stderr captured separately."""
    return subprocess.run(
        [sys.executable, "-m", "nb2prod", *map(str, args)], check=False, cwd=cwd,
        env=env if env is not None else clean_env(), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _default_sigint() -> None:
    """In the child, before exec: Ctrl-C's default, whatever this process inherited.

    Under `nohup`, `cmd &` in a script or some CI runners SIGINT arrives ignored; a Python
    started with it ignored never raises KeyboardInterrupt, so a test sending SIGINT would
    test the inherited disposition instead of nb2prod.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live process (zombies left out), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process below `pid` (gunicorn masters and workers...)."""
    table = _process_table()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started) in table.items():
            if ppid == parent and child not in found:
                found[child] = started
                frontier.append(child)
    return found


class Command:
    """A long-running `python -m nb2prod ...` whose merged output is read by a thread.

    `stop()` also ends whatever the command started and left behind (its gunicorn servers
    lead sessions of their own), so a failing test leaks no listening server; `leaked`
    lists what had to be killed that way, for tests asserting nb2prod cleans up itself.
    """

    def __init__(self, *args: str | Path, cwd: Path, env: dict[str, str] | None = None,
                 start_new_session: bool = False) -> None:
        self.leaked: list[int] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nb2prod", *map(str, args)], cwd=cwd,
            env=env if env is not None else clean_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
            preexec_fn=_default_sigint,  # noqa: PLW1509 - only a signal call, no locks
            start_new_session=start_new_session,
        )
        self._chunks: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._chunks.append(line)

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._chunks)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = RUN_TIMEOUT) -> re.Match[str]:
        """The first match of `pattern` in the output; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.output)
            if match:
                return match
            if self.proc.poll() is not None:
                self._reader.join(5)
                match = pattern.search(self.output)
                if match:
                    return match
                raise AssertionError(f"nb2prod exited with {self.proc.returncode} before "
                                     f"printing {pattern.pattern!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern.pattern!r} after {timeout}s:\n{self.output}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the runner (it stops its gunicorn servers) and wait; kill as a last resort."""
        children = descendants(self.proc.pid) if self.proc.poll() is None else {}
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_leftovers(children)
        self._reader.join(5)
        return self.proc.returncode

    def _kill_leftovers(self, children: dict[int, str]) -> None:
        alive = _process_table()
        for pid, started in children.items():
            if alive.get(pid, (0, ""))[1] != started:
                continue  # gone (or the pid was reused)
            self.leaked.append(pid)
            try:
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(
                    pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def eventually_ready(base: str, timeout: float = 60) -> Any:
    """/readyz answers 200 without credentials, once every worker finished start-up.

    Readiness is per gunicorn worker: the first 200 (what `nb2prod run` waits
    for) can come from one worker while its sibling is still loading, so a
    single later probe may land on the sibling and see 503.
    """
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = http(base + "/readyz")
        assert status in (200, 503), status
        if status == 200:
            return body
        assert time.monotonic() < deadline, "/readyz never answered 200"
        time.sleep(0.2)


def http(url: str, payload: Any = None, *, data: bytes | None = None,
         headers: dict[str, str] | None = None, method: str | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str], Any]:
    """One request; returns (status, headers, JSON body or text). HTTP errors are returned."""
    hdrs = dict(headers or {})
    if payload is not None:
        data = json.dumps(payload).encode()
        hdrs.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, head, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, body = exc.code, dict(exc.headers), exc.read()
        exc.close()
    text = body.decode("utf-8", "replace")
    try:
        return status, head, json.loads(text)
    except ValueError:
        return status, head, text


def file_store(pipeline_dir: Path) -> Path:
    """The default file store of a split pipeline."""
    return pipeline_dir / ".nb2prod" / "artifacts"


def run_record(pipeline_dir: Path, name: str, run_id: str) -> dict:
    return json.loads((file_store(pipeline_dir) / name / "runs" / run_id / "run.json").read_text())


def latest_bytes(pipeline_dir: Path, name: str) -> bytes:
    return (file_store(pipeline_dir) / name / "latest.json").read_bytes()


class Served:
    """A `nb2prod run ... --port P` that trained (or not) and is now serving."""

    def __init__(self, command: Command, pipeline_dir: Path, port: int,
                 run_id: str | None) -> None:
        self.command = command
        self.pipeline_dir = pipeline_dir
        self.port = port
        match = command.wait_for(SERVING_LINE)
        self.served_run_id = match["run_id"]
        self.predict_url = match["url"]
        self.base = self.predict_url.rsplit("/", 1)[0]
        self.run_id = run_id  # the run this command trained (None for --stage serve)

    def predict(self, payload: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        return http(self.predict_url, payload, **kwargs)


class Launch:
    """A `nb2prod run ... --port P` started in the background; `served()` waits for it."""

    def __init__(self, *args: str | Path, cwd: Path, pipeline_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.args = args
        self.pipeline_dir = pipeline_dir
        self.command = Command(*args, "--port", str(self.port), cwd=cwd, env=env)
        self._served: Served | None = None

    def served(self) -> Served:
        if self._served is None:
            run_id = None
            if "--stage" not in self.args:
                run_id = self.command.wait_for(RUN_LINE)["run_id"]
            self._served = Served(self.command, self.pipeline_dir, self.port, run_id)
        return self._served


def start_serving(*args: str | Path, cwd: Path, pipeline_dir: Path,
                  env: dict[str, str] | None = None) -> Served:
    """Start `nb2prod run ARGS --port P` and wait for its "serving ... at URL" line."""
    launch = Launch(*args, cwd=cwd, pipeline_dir=pipeline_dir, env=env)
    try:
        return launch.served()
    except BaseException:
        launch.command.stop()
        raise


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Launch]]:
    """Split the examples and start all three runs at once.

    A run is mostly one busy process at a time (a kernel, then gunicorn start-up), so
    running the three side by side uses both cores and roughly halves this module's time.
    """
    work = {name: tmp_path_factory.mktemp(name) for name in ("iris", "wine", "diabetes")}
    shutil.copy(EXAMPLES / "iris.ipynb", work["iris"])
    shutil.copy(EXAMPLES / "wine_parallel.ipynb", work["wine"])
    shutil.copy(EXAMPLES / "diabetes.py", work["diabetes"])
    for args, cwd in ((("iris.ipynb",), work["iris"]),
                      (("wine_parallel.ipynb", "-o", "wine"), work["wine"])):
        split = nb2prod("split", *args, cwd=cwd)
        assert split.returncode == 0, split.stderr
    launches: dict[str, Launch] = {}
    try:
        launches["iris"] = Launch("run", "iris-pipeline", cwd=work["iris"],
                                  pipeline_dir=work["iris"] / "iris-pipeline")
        # --jobs 2: the two training branches may run side by side (see the overlap test).
        launches["wine"] = Launch("run", "wine", "--jobs", "2", cwd=work["wine"],
                                  pipeline_dir=work["wine"] / "wine")
        # A jupytext .py given straight to `run`: split on the fly into diabetes-pipeline/.
        launches["diabetes"] = Launch("run", "diabetes.py", cwd=work["diabetes"],
                                      pipeline_dir=work["diabetes"] / "diabetes-pipeline")
        yield launches
    finally:
        for launch in launches.values():
            launch.command.stop()


@pytest.fixture(scope="module")
def iris(launched: dict[str, Launch]) -> Served:
    return launched["iris"].served()


@pytest.fixture(scope="module")
def wine(launched: dict[str, Launch]) -> Served:
    return launched["wine"].served()


@pytest.fixture(scope="module")
def diabetes(launched: dict[str, Launch]) -> Served:
    return launched["diabetes"].served()


def assert_ready_and_info(served: Served, pipeline: str) -> dict:
    ready = eventually_ready(served.base)
    assert ready["status"] == "ready" and len(ready["instance"]) == 16, ready
    status, _, info = http(served.base + "/info")
    assert status == 200
    assert info["pipeline"] == pipeline
    assert info["run_id"] == served.run_id == served.served_run_id
    assert info["status"] == "ready"
    return info


def assert_listed_as_latest(served: Served, pipeline: str, metrics: dict[str, float]) -> None:
    """`nb2prod runs` shows the run as latest, succeeded, with every metric."""
    listing = nb2prod("runs", served.pipeline_dir, cwd=served.pipeline_dir.parent)
    assert listing.returncode == 0, listing.stderr
    rows = [line for line in listing.stdout.splitlines() if served.run_id in line]
    assert len(rows) == 1, listing.stdout
    row = rows[0]
    assert f"{served.run_id} (latest)" in row
    assert "succeeded" in row
    for name, value in metrics.items():
        assert f"{name}={value:g}" in row, row
    record = run_record(served.pipeline_dir, pipeline, served.run_id)
    assert record["status"] == "succeeded" and record["promoted"] is True
    latest = json.loads(latest_bytes(served.pipeline_dir, pipeline))
    assert latest["run_id"] == served.run_id


# --------------------------------------------------------------------------- iris


def test_iris_predicts_species_over_http(iris: Served) -> None:
    status, head, body = iris.predict(
        {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]})
    assert status == 200, body
    assert head["Content-Type"].startswith("application/json")
    assert body == {"predictions": ["setosa", "virginica", "versicolor"]}
    assert iris.predict_url == f"http://127.0.0.1:{iris.port}/predict"


def test_iris_ready_info_and_runs_listing(iris: Served) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    assert_ready_and_info(iris, "iris")
    data = load_iris()
    X_train, X_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.2, random_state=42, stratify=data.target)
    accuracy = LogisticRegression(max_iter=200).fit(X_train, y_train).score(X_test, y_test)
    record = run_record(iris.pipeline_dir, "iris", iris.run_id)
    assert record["metrics"] == {"train": {"accuracy": pytest.approx(accuracy)}}
    stage = record["stages"]["train"]
    assert stage["status"] == "done"
    assert record["started"] <= stage["started"] < stage["finished"] <= record["finished"]
    assert_listed_as_latest(iris, "iris", {"accuracy": accuracy})
    # The run directory holds what DESIGN.md promises per stage.
    run_dir = file_store(iris.pipeline_dir) / "iris" / "runs" / iris.run_id / "train"
    for name in ("manifest.json", "metrics.json", "train.ipynb", "train.html", "log.txt",
                 "model.joblib"):
        assert (run_dir / name).is_file(), sorted(p.name for p in run_dir.iterdir())
    # Plain progress lines when stdout is not a terminal, and a ready-to-paste curl.
    assert re.search(r"stage train: done \(\d+\.\ds\)", iris.command.output), iris.command.output
    assert f"curl -s -X POST {iris.predict_url}" in iris.command.output


def test_iris_service_errors_through_run_server(iris: Served) -> None:
    status, _, body = iris.predict(None, data=b'{"instances": [1,', headers={
        "Content-Type": "application/json"})
    assert status == 400 and "malformed JSON" in body["error"]
    status, _, body = iris.predict(None, data=b"x" * (1024 * 1024 + 1), headers={
        "Content-Type": "application/json"})
    assert status == 413 and "larger than 1048576 bytes" in body["error"]
    status, _, body = iris.predict({"instances": "not a matrix"})  # the caller's mistake
    assert status == 422
    assert body["error"] == ("invalid input: ValueError: could not convert string to float: "
                             "'not a matrix'") and "request_id" in body
    status, _, body = iris.predict({"instances": [[5.1, 3.5]]})  # scikit-learn's own check
    assert status == 422
    assert "X has 2 features, but LogisticRegression is expecting 4 features" in body["error"]
    status, _, body = iris.predict([1, 2])  # a list where predict expects an object
    assert (status, body["error"]) == (422, ("invalid input: TypeError: list indices must be "
                                            "integers or slices, not str")), body
    assert "Traceback" not in json.dumps(body)  # a real failure's 500: tests/test_serve.py
    status, _, body = http(iris.base + "/nope")
    assert status == 404 and "not found" in body["error"]
    status, head, text = http(iris.base + "/metrics")
    assert status == 200 and head["Content-Type"].startswith("text/plain")
    assert f'run_id="{iris.run_id}"' in text


# --------------------------------------------------------------------------- wine


def wine_reference() -> tuple[str, Any, list[str], float]:
    """The wine example's models, trained here the same way: (best name, X_test, labels, acc)."""
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    wine = load_wine()
    classes = [str(name) for name in wine.target_names]
    X_train, X_test, y_train, y_test = train_test_split(
        wine.data, wine.target, test_size=0.25, random_state=0, stratify=wine.target)
    forest = RandomForestClassifier(n_estimators=50, random_state=0).fit(X_train, y_train)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        X_train, y_train)
    scores = {"forest": forest.score(X_test, y_test), "logreg": logreg.score(X_test, y_test)}
    best = max(scores, key=scores.get)
    model = forest if best == "forest" else logreg
    return best, X_test, [classes[i] for i in model.predict(X_test)], scores[best]


def test_wine_predictions_match_a_model_trained_the_same_way(wine: Served) -> None:
    from sklearn.datasets import load_wine

    best, X_test, expected, accuracy = wine_reference()
    status, _, body = wine.predict({"instances": X_test.tolist()})
    assert status == 200, body
    assert body["model"] == best
    assert body["predictions"] == expected
    # And on known training rows: class names, and mostly right.
    data = load_wine()
    rows = list(range(0, len(data.target), 6))[:30]
    status, _, body = wine.predict({"instances": data.data[rows].tolist()})
    assert status == 200
    names = [str(n) for n in data.target_names]
    assert set(body["predictions"]) <= set(names)
    hits = sum(p == names[data.target[i]] for p, i in zip(body["predictions"], rows))
    assert hits / len(rows) >= 0.9
    assert_ready_and_info(wine, "wine-parallel")
    record = run_record(wine.pipeline_dir, "wine-parallel", wine.run_id)
    assert record["metrics"]["evaluate"]["accuracy"] == pytest.approx(accuracy)
    assert_listed_as_latest(wine, "wine-parallel", {"accuracy": accuracy})


def test_wine_branches_overlap_in_time(wine: Served) -> None:
    """--jobs 2: train_forest and train_logreg run at the same time, between their neighbours."""
    stages = run_record(wine.pipeline_dir, "wine-parallel", wine.run_id)["stages"]
    assert {n: s["status"] for n, s in stages.items()} == {
        "prepare": "done", "train_forest": "done", "train_logreg": "done", "evaluate": "done"}
    forest, logreg = stages["train_forest"], stages["train_logreg"]
    overlap = min(forest["finished"], logreg["finished"]) - max(forest["started"],
                                                                 logreg["started"])
    # Each branch started before the other ended: they ran at the same time (how much of
    # them overlapped depends on the machine's load, so no fraction is asserted).
    assert overlap > 0, stages
    assert stages["prepare"]["finished"] <= min(forest["started"], logreg["started"])
    assert stages["evaluate"]["started"] >= max(forest["finished"], logreg["finished"])


# --------------------------------------------------------------------------- diabetes


def test_diabetes_predictions_are_floats_of_the_same_ridge(diabetes: Served) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    ridge = Ridge(alpha=1.0).fit(X_train, y_train)
    rows = X_test[:20]
    status, _, body = diabetes.predict({"instances": rows.tolist()})
    assert status == 200, body
    predictions = body["predictions"]
    assert len(predictions) == 20 and all(isinstance(p, float) for p in predictions)
    for got, want in zip(predictions, ridge.predict(rows)):
        assert got == pytest.approx(want, abs=0.011)  # the notebook rounds to 2 decimals
    assert_ready_and_info(diabetes, "diabetes")
    assert (diabetes.pipeline_dir / "nb2prod.ini").is_file()  # split on the fly
    assert_listed_as_latest(diabetes, "diabetes", {"r2": ridge.score(X_test, y_test)})


def test_ctrl_c_stops_runner_and_server(diabetes: Served) -> None:
    # Command starts nb2prod with SIGINT at its default, even when this test inherited it
    # ignored (nohup, `&`): the signal below is a real Ctrl-C.
    assert port_open(diabetes.port)
    code = diabetes.command.stop(signal.SIGINT)
    assert code == 0, diabetes.command.output
    assert diabetes.command.leaked == [], "nb2prod left processes behind after Ctrl-C"
    assert not port_open(diabetes.port), "gunicorn still listening after Ctrl-C"
