"""`nb2prod run` under faults: the runner killed (-9, SIGTERM to it or to its process
group), a stage past MAX_COMPLETION_TIME_SECONDS, a server stopped while it starts or
serves, a taken port, two service stages.  Real processes are killed; afterwards no
process of the run may survive (found by a marker variable in /proc/*/environ, which
every child inherits) and the port must be free.

tests/data/run/faults.ipynb: `train` (epochs x epoch_seconds, optionally with a helper
process the notebook starts) feeds two services, `serve` and `shadow`; milestone files
in FAULT_PROGRESS_DIR say how far a run got; FAULT_SERVE_HANG hangs service start-up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nb2prod import lifeline, worker
from tests.test_run_e2e import (
    RUN_DATA,
    RUN_LINE,
    RUN_TIMEOUT,
    SERVING_LINE,
    Command,
    clean_env,
    file_store,
    http,
    nb2prod,
    port_open,
    run_record,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                                reason="finds the run's processes through /proc")

MARKER = "FAULT_TEST_MARKER"
#: Generous bound for processes to disappear once their runner is gone (conditions are
#: polled; a healthy run takes well under a second).
GONE_TIMEOUT = 60


def marked(marker: str) -> list[int]:
    """Live (not zombie) processes whose environment carries `MARKER=marker`."""
    needle = f"{MARKER}={marker}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text(errors="replace")
        except OSError:
            continue
        if needle in environ and stat[stat.rfind(")") + 2:].split()[0] != "Z":
            found.append(int(entry))
    return found


def kill_marked(marker: str) -> None:
    """Last-resort cleanup, so that a failing test leaves nothing running either."""
    for pid in marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"after {timeout}s still not: {what}"
        time.sleep(0.1)


def free_port_pair() -> int:
    """A port P with P and P + 1 free right now."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65535 and not port_open(port) and not port_open(port + 1):
            try:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two adjacent free ports")


def set_port(stage_dir: Path, port: int) -> None:
    config = stage_dir / "config.ini"
    text = re.sub(r"(?m)^PORT = .*$", f"PORT = {port}", config.read_text())
    assert f"PORT = {port}" in text
    config.write_text(text)


@dataclass
class Faults:
    work: Path
    pipeline_dir: Path
    good_run: str


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Faults:
    """faults.ipynb split and run once (quick training, promoted, nothing served)."""
    work = tmp_path_factory.mktemp("faults")
    shutil.copy(RUN_DATA / "faults.ipynb", work)
    split = nb2prod("split", "faults.ipynb", cwd=work)
    assert split.returncode == 0, split.stderr
    good = nb2prod("run", "faults-pipeline", "--no-serve", cwd=work)
    assert good.returncode == 0, good.stdout + good.stderr
    return Faults(work, work / "faults-pipeline", RUN_LINE.search(good.stdout)["run_id"])


@dataclass
class Faulty:
    """One command of a fault test, its marker and progress directory."""

    command: Command
    marker: str
    progress: Path

    def milestone(self, name: str) -> None:
        wait_until(lambda: (self.progress / name).exists() or self.command.proc.poll() is not None,
                   RUN_TIMEOUT, f"milestone {name}")
        assert (self.progress / name).exists(), self.command.output


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Faulty]]:
    """Start `nb2prod ARGS` with a fresh marker; everything it started dies at the end."""
    started: list[Faulty] = []

    def start(*args: str | Path, session: bool = False, **env: str) -> Faulty:
        marker = uuid.uuid4().hex
        progress = tmp_path / f"progress-{len(started)}"
        progress.mkdir()
        command = Command(*args, cwd=tmp_path, start_new_session=session, env=clean_env(
            **{MARKER: marker, "FAULT_PROGRESS_DIR": str(progress)}, **env))
        started.append(Faulty(command, marker, progress))
        return started[-1]

    yield start
    for faulty in started:
        faulty.command.stop(signal.SIGKILL, timeout=30)
        kill_marked(faulty.marker)


SLOW = ("--param", "epochs=100000", "--param", "epoch_seconds=0.05", "--param",
        "spawn_helper=True")


def runs_status(pipeline_dir: Path, run_id: str) -> str:
    listing = nb2prod("runs", pipeline_dir, cwd=pipeline_dir)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if run_id in line)
    return row.split("│")[2].strip()


# --------------------------------------------------------------------------- batch stages


def in_worker(stage: str) -> list[int]:
    """The stage worker's process running `stage` and its kernel (not marked: they
    started, warm, before the run and got its environment when handed the stage)."""
    try:
        status = worker.ask("status")
    except worker.WorkerUnavailable:
        return []
    return [pid for w in status["processes"] if w["stage"] == stage
            for pid in (w["pid"], w["kernel"]) if pid]


def alive(pid: int) -> bool:
    fields = lifeline.stat_fields(pid)
    return fields is not None and fields[0] != "Z"


@pytest.mark.parametrize("use_worker", ["1", "0"], ids=["stage-worker", "own-process"])
def test_kill_9_of_the_runner_takes_stage_kernel_and_notebook_helper_along(
        faults: Faults, launch: Callable[..., Faulty], use_worker: str) -> None:
    faulty = launch("run", faults.pipeline_dir, "--no-serve", *SLOW, NB2PROD_WORKER=use_worker)
    run_id = faulty.command.wait_for(RUN_LINE)["run_id"]
    faulty.milestone("train-started")
    # runner, stage process, its kernel and the helper the notebook started
    pids = marked(faulty.marker) + in_worker("train")
    assert len(set(pids)) >= 4, faulty.command.output
    faulty.command.proc.kill()
    faulty.command.proc.wait()
    wait_until(lambda: not marked(faulty.marker) and not any(map(alive, pids)), GONE_TIMEOUT,
               "every process of the killed run gone")
    assert run_record(faults.pipeline_dir, "faults", run_id)["status"] == "running"
    assert runs_status(faults.pipeline_dir, run_id) == "interrupted"
    assert runs_status(faults.pipeline_dir, faults.good_run).startswith("succeeded")


def test_sigterm_to_the_process_group_stops_the_run_and_records_it(
        faults: Faults, launch: Callable[..., Faulty]) -> None:
    faulty = launch("run", faults.pipeline_dir, "--no-serve", *SLOW, session=True)
    run_id = faulty.command.wait_for(RUN_LINE)["run_id"]
    faulty.milestone("train-started")
    os.killpg(faulty.command.proc.pid, signal.SIGTERM)  # what `timeout` and CI runners send
    assert faulty.command.proc.wait(GONE_TIMEOUT) == 128 + signal.SIGTERM, \
        faulty.command.output
    wait_until(lambda: not marked(faulty.marker), GONE_TIMEOUT, "every process gone")
    record = run_record(faults.pipeline_dir, "faults", run_id)
    assert record["status"] == "interrupted", record
    assert record["stages"]["train"]["status"] == "failed"
    assert record["stages"]["train"]["message"] == "interrupted"
    assert runs_status(faults.pipeline_dir, run_id) == "interrupted"
    assert "interrupted (SIGTERM)" in faulty.command.output


def test_stage_past_max_completion_time_is_stopped_with_its_kernel(
        faults: Faults, launch: Callable[..., Faulty], tmp_path: Path) -> None:
    copy = tmp_path / "limited"
    shutil.copytree(faults.pipeline_dir, copy)
    config = copy / "stage-1-train" / "config.ini"
    text = re.sub(r"(?m)^MAX_COMPLETION_TIME_SECONDS = .*$",
                  "MAX_COMPLETION_TIME_SECONDS = 4", config.read_text())
    config.write_text(text)
    faulty = launch("run", copy, "--no-serve", *SLOW)
    run_id = faulty.command.wait_for(RUN_LINE)["run_id"]
    assert faulty.command.proc.wait(RUN_TIMEOUT) == 1, faulty.command.output
    assert "exceeded MAX_COMPLETION_TIME_SECONDS (4s)" in faulty.command.output
    wait_until(lambda: not marked(faulty.marker), GONE_TIMEOUT, "every process gone")
    record = run_record(copy, "faults", run_id)
    assert record["status"] == "failed"
    assert "MAX_COMPLETION_TIME_SECONDS" in record["stages"]["train"]["message"]


# --------------------------------------------------------------------------- serving


def test_sigterm_while_gunicorn_starts_stops_it_and_frees_the_port(
        faults: Faults, launch: Callable[..., Faulty]) -> None:
    port = free_port_pair()
    faulty = launch("run", faults.pipeline_dir, "--stage", "serve", "--port", str(port),
                    FAULT_SERVE_HANG="1")
    faulty.milestone("serve-started")  # a worker is inside the start-up cells
    assert port_open(port)
    faulty.command.proc.send_signal(signal.SIGTERM)  # the runner only, as scripts do
    assert faulty.command.proc.wait(GONE_TIMEOUT) == 128 + signal.SIGTERM, \
        faulty.command.output
    wait_until(lambda: not marked(faulty.marker), GONE_TIMEOUT, "gunicorn gone")
    assert not port_open(port)


def test_kill_9_while_serving_stops_gunicorn_and_frees_the_port(
        faults: Faults, launch: Callable[..., Faulty]) -> None:
    port = free_port_pair()
    faulty = launch("run", faults.pipeline_dir, "--stage", "serve", "--port", str(port))
    url = faulty.command.wait_for(SERVING_LINE)["url"]
    status, _, body = http(url, {"x": 1})
    assert status == 200 and body["model"] == "main", body
    faulty.command.proc.kill()
    faulty.command.proc.wait()
    wait_until(lambda: not marked(faulty.marker), GONE_TIMEOUT, "gunicorn gone")
    assert not port_open(port)


def test_two_services_get_their_own_ports_and_logs(faults: Faults,
                                                   launch: Callable[..., Faulty],
                                                   tmp_path: Path) -> None:
    copy = tmp_path / "two"
    shutil.copytree(faults.pipeline_dir, copy)
    port = free_port_pair()
    for stage in ("stage-2-serve", "stage-3-shadow"):
        set_port(copy / stage, port)  # both say the same port
    faulty = launch("run", copy)
    run_id = faulty.command.wait_for(RUN_LINE)["run_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while len(SERVING_LINE.findall(faulty.command.output)) < 2:
        assert faulty.command.proc.poll() is None, faulty.command.output
        assert time.monotonic() < deadline, faulty.command.output
        time.sleep(0.1)
    urls = {m["stage"]: m["url"] for m in SERVING_LINE.finditer(faulty.command.output)}
    assert urls == {"serve": f"http://127.0.0.1:{port}/predict",
                    "shadow": f"http://127.0.0.1:{port + 1}/predict"}
    for stage, model in (("serve", "main"), ("shadow", "shadow")):
        status, _, body = http(urls[stage], {"x": 2})
        assert status == 200 and body == {"model": model, "weights": [0.0, 0.5, 1.0], "x": 2}
    status, _, body = http(urls["serve"], [1, 2])  # predict raises: list has no .get
    assert status == 500 and "Traceback" not in json.dumps(body)
    assert faulty.command.stop(signal.SIGTERM) == 0, faulty.command.output
    assert not port_open(port) and not port_open(port + 1)
    # The services' own logs, streamed with their stage as prefix and kept in the run.
    lines = faulty.command.output.splitlines()
    assert any(line.startswith("[serve] ") and "AttributeError" in line for line in lines)
    assert any(line.startswith("[shadow] ") and "ready after" in line for line in lines)
    kept = file_store(copy) / "faults" / "runs" / run_id / "serve" / "service-log.txt"
    assert "AttributeError: 'list' object has no attribute 'get'" in kept.read_text()


@pytest.mark.parametrize("via_option", [True, False], ids=["--port", "config PORT"])
def test_taken_port_fails_before_any_stage_with_one_line(faults: Faults, tmp_path: Path,
                                                         via_option: bool) -> None:
    copy = tmp_path / "taken"
    shutil.copytree(faults.pipeline_dir, copy)
    before = set((file_store(copy) / "faults" / "runs").iterdir())
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        args: tuple[str, ...] = ("--port", str(port)) if via_option else ()
        if not via_option:
            set_port(copy / "stage-2-serve", port)
        result = nb2prod("run", copy, *args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port} on 127.0.0.1 is already in use (service stage 'serve'" in lines[0]
    assert "--port" in lines[0]
    assert ("from --port" if via_option else "from config.ini [service] PORT") in lines[0]
    assert "Traceback" not in result.stderr and "gunicorn" not in result.stderr
    assert set((file_store(copy) / "faults" / "runs").iterdir()) == before  # nothing ran
