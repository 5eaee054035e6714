"""The stage worker (`nb2prod.worker`): `nb2prod run` hands stages to warm processes of a
per-user daemon.  Asserted through the daemon's state and the pids the notebooks see,
never through timings: stages run there and reuse the daemon across runs, each stage
gets a fresh kernel, a warm kernel looks like a fresh one to the notebook, a dead stage
process fails its stage in one line, a dead daemon is replaced, idle exit, the runtime
directory's permissions, two runs at once, and switching it off.

Each test has a daemon of its own (`own_worker`: its runtime dir, stopped at the end
with everything it started).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from nb2prod import artifacts, lifeline, worker
from tests.test_run_e2e import RUN_LINE, RUN_TIMEOUT, Command, clean_env, nb2prod
from tests.test_run_faults import wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="follows processes through /proc")

PARENT = ("import os\n"
          "def parent_of(pid):\n"
          "    stat = open(f'/proc/{pid}/stat').read()\n"
          "    return int(stat[stat.rfind(')') + 2:].split()[1])\n")
CELLS = [
    (["parameters"], "seconds = 0.0\nprobe = ''\nhold = ''"),
    (["imports"], "import json\nimport os\nimport sys\nimport time"),
    (["stage:first"], PARENT + "first_kernel = os.getpid()\n"
                      "first_daemon = parent_of(os.getppid())\ntime.sleep(seconds)\n"
                      "while hold and os.path.exists(hold):\n    time.sleep(0.05)"),
    (["stage:second"],
     ("second_kernel = os.getpid() + 0 * first_kernel\n"
     "if probe:\n"
     "    json.dump({'cwd': os.getcwd(), 'path': sys.path, 'env': dict(os.environ),\n"
     "               'names': sorted(n for n in globals() if not n.startswith('_')),\n"
     "               'count': get_ipython().execution_count,\n"
     "               'modules': sorted(sys.modules)}, open(probe, 'w'))")),
    (["metrics"], "k1 = first_kernel\nk2 = second_kernel\nd1 = first_daemon"),
]


@pytest.fixture()
def pipeline(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for tags, src in CELLS]
    nbformat.write(nb, tmp_path / "pids.ipynb")
    split = nb2prod("split", "pids.ipynb", cwd=tmp_path)
    assert split.returncode == 0, split.stderr
    return tmp_path / "pids-pipeline"


@pytest.fixture()
def own_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime dir (so a daemon) for this test only; everything in it stopped at the end."""
    runtime = Path(tempfile.mkdtemp(prefix="nb2w-"))
    monkeypatch.setenv("NB2PROD_RUNTIME_DIR", str(runtime / "rt"))
    try:
        yield runtime / "rt"
    finally:
        worker.stop_all()
        for left in runtime.rglob("*"):
            if left.is_dir():
                left.chmod(0o700)
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)


def env(**extra: str) -> dict[str, str]:
    return clean_env(NB2PROD_RUNTIME_DIR=os.environ["NB2PROD_RUNTIME_DIR"], **extra)


def run(pipeline: Path, *args: str, **extra: str) -> tuple[str, dict]:
    """`nb2prod run PIPELINE --no-serve ARGS`; (run id, metrics of the second stage)."""
    done = nb2prod("run", pipeline, "--no-serve", *args, cwd=pipeline.parent, env=env(**extra))
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = RUN_LINE.search(done.stdout)["run_id"]
    metrics = artifacts.read_run_metrics(artifacts.open_store(f"file://{store(pipeline)}"),
                                         "pids", run_id)
    return run_id, metrics["second"]


def store(pipeline: Path) -> Path:
    return pipeline / ".nb2prod" / "artifacts"


def alive(pid: int) -> bool:
    fields = lifeline.stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def busy(stage: str) -> dict | None:
    status = worker.ask("status")
    return next((w for w in status["processes"] if w["stage"] == stage and w["running"]), None)


@contextlib.contextmanager
def first_stage_running(pipeline: Path, seconds: float) -> Iterator[tuple[Command, dict]]:
    """`nb2prod run` whose stage 'first' (sleeping `seconds`) a worker's process runs."""
    command = Command("run", pipeline, "--no-serve", "--param", f"seconds={seconds}",
                      cwd=pipeline.parent, env=env())
    try:
        command.wait_for(RUN_LINE)
        wait_until(lambda: worker.paths()["sock"].exists() and busy("first"), RUN_TIMEOUT,
                   "stage 'first' running in the worker")
        yield command, busy("first")
    finally:
        command.stop(signal.SIGKILL)


def test_stages_run_in_the_daemon_each_in_a_fresh_kernel_and_runs_reuse_it(
        pipeline: Path, own_worker: Path) -> None:
    _, first = run(pipeline)
    daemon = worker.ask("status")
    _, second = run(pipeline, "--no-cache")
    assert first["d1"] == second["d1"] == daemon["pid"]  # both runs: stage processes of it
    kernels = [first["k1"], first["k2"], second["k1"], second["k2"]]
    assert len(set(kernels)) == 4  # never a kernel that ran a stage before
    status = worker.ask("status")
    assert status["pid"] == daemon["pid"] and status["handed"] == 4
    wait_until(lambda: not any(w["stage"] for w in worker.ask("status")["processes"]),
               RUN_TIMEOUT, "the stage processes exited")
    assert all(not alive(k) for k in kernels)
    assert stat.S_IMODE(own_worker.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(status["socket"]).stat().st_mode) == 0o600
    shown = nb2prod("worker", cwd=pipeline.parent, env=env())
    assert shown.stdout.startswith(f"worker {daemon['pid']} on {status['socket']}: 4 stage(s)")
    assert ": warm" in shown.stdout or ": booting" in shown.stdout, shown.stdout
    stopped = nb2prod("worker", "stop", cwd=pipeline.parent, env=env())
    assert stopped.stdout == f"worker {daemon['pid']} stopped\n" and not alive(daemon["pid"])
    assert nb2prod("worker", cwd=pipeline.parent, env=env()).stdout == "no worker running\n"


def test_a_warm_kernel_looks_like_a_fresh_one(pipeline: Path, own_worker: Path,
                                              tmp_path: Path) -> None:
    seen = {}
    for use in ("0", "1"):
        probe = tmp_path / f"probe-{use}.json"
        run(pipeline, "--no-cache", "--param", f"probe={probe}", NB2PROD_WORKER=use)
        seen[use] = json.loads(probe.read_text())
    assert worker.ask("status")["handed"] == 2  # the second run only
    fresh, warm = seen["0"], seen["1"]
    for name in ("count", "names", "modules"):
        assert warm[name] == fresh[name], name
    # a working directory of its own per stage run, the rest of sys.path identical
    assert Path(warm["cwd"]).name == Path(fresh["cwd"]).name == "cwd"
    assert warm["path"] == fresh["path"]
    per_run = {"NB2PROD_RUN_ID", "NB2PROD_INPUT_RUN_ID", "NB2PROD_WORKDIR",
               "NB2PROD_FILES_PLAN", "JPY_PARENT_PID", "PWD", "NB2PROD_WORKER"}
    # the own process's lifeline descriptor number; a worker's kernel has none to name
    assert warm["env"].keys() - per_run == fresh["env"].keys() - per_run - {lifeline.ENV}
    assert {k: v for k, v in warm["env"].items() if k not in per_run} == {
        k: v for k, v in fresh["env"].items() if k not in per_run | {lifeline.ENV}}


def test_a_stage_process_killed_mid_stage_fails_the_stage_in_one_line(
        pipeline: Path, own_worker: Path) -> None:
    with first_stage_running(pipeline, 600) as (command, taken):
        os.kill(taken["pid"], signal.SIGKILL)
        assert command.proc.wait(RUN_TIMEOUT) == 1, command.output
    assert (f"stage 'first' failed: WorkerError: the stage worker's process (pid "
            f"{taken['pid']}) ended before the stage did") in command.output, command.output
    assert "Traceback" not in command.output
    wait_until(lambda: not alive(taken["kernel"]), RUN_TIMEOUT, "its kernel killed")


def test_a_daemon_killed_mid_stage_lets_the_stage_finish_and_is_replaced(
        pipeline: Path, own_worker: Path) -> None:
    with first_stage_running(pipeline, 20) as (command, _):
        daemon = worker.ask("status")["pid"]
        os.kill(daemon, signal.SIGKILL)
        assert command.proc.wait(RUN_TIMEOUT) == 0, command.output
    assert "succeeded" in command.output
    _, metrics = run(pipeline, "--no-cache")
    assert metrics["d1"] == worker.ask("status")["pid"] != daemon  # a new daemon took over


def test_the_daemon_exits_when_idle_with_everything_it_started(
        pipeline: Path, own_worker: Path, tmp_path: Path) -> None:
    """Idle is counted from the end of the last stage, not from its start: a stage that
    ran longer than the idle timeout does not make the daemon exit the moment it ends.
    (Its state is read while the stage is held, so no timing decides what is seen.)"""
    hold = tmp_path / "hold"
    hold.touch()
    command = Command("run", pipeline, "--no-serve", "--stage", "first", "--param",
                      f"hold={hold}", cwd=pipeline.parent, env=env(NB2PROD_WORKER_IDLE="3"))
    try:
        command.wait_for(RUN_LINE)
        wait_until(lambda: worker.paths()["sock"].exists() and busy("first"), RUN_TIMEOUT,
                   "stage 'first' running in the worker")
        status = worker.ask("status")
        assert status["idle_timeout"] == 3
        started = [p for w in status["processes"] for p in (w["pid"], w["kernel"]) if p]
        assert busy("first")["pid"] in started
        time.sleep(4)  # the stage runs on, longer than the idle timeout (no request meanwhile)
        released = time.monotonic()
        hold.unlink()
        assert command.proc.wait(RUN_TIMEOUT) == 0, command.output
    finally:
        command.stop(signal.SIGKILL)
    wait_until(lambda: not alive(status["pid"]), RUN_TIMEOUT, "the idle daemon gone")
    assert time.monotonic() - released >= 3, "the daemon did not wait out its idle time"
    wait_until(lambda: not any(map(alive, started)), RUN_TIMEOUT, "its warm processes gone")
    assert not worker.paths()["sock"].exists()


def test_idle_time_starts_again_when_a_stage_ends() -> None:
    """A stage handed long ago (longer than the idle timeout) that just ended: the daemon
    is idle from now, not since the hand-off (it used to exit the moment such a stage
    ended, and the next `nb2prod run` paid for cold processes)."""
    daemon = worker.Daemon(where={}, idle=5)
    daemon.last -= 600  # the hand-off, the last request
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    ours, theirs = socket.socketpair()
    theirs.close()
    daemon.warm.append(worker.Warm(ended, ours, "key", stage="train", running=True))
    before = time.monotonic()
    daemon.reap()
    assert daemon.warm == [] and daemon.last >= before


def test_runtime_dir_is_private_and_one_not_ours_means_own_processes(
        pipeline: Path, own_worker: Path) -> None:
    own_worker.mkdir(mode=0o755)
    own_worker.chmod(0o755)
    assert stat.S_IMODE(worker.runtime_dir().stat().st_mode) == 0o700  # tightened
    if os.getuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    os.chown(own_worker, 65534, 65534)
    done = nb2prod("run", pipeline, "--no-serve", cwd=pipeline.parent, env=env())
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "stage worker" in line]
    assert notes == [(f"nb2prod: the stage worker is not available ({own_worker} is not a "
                     "directory of this user); running each stage in a process of its own")]
    assert not list(own_worker.iterdir())


def test_two_runs_at_once_each_stage_in_its_own_kernel(pipeline: Path, own_worker: Path,
                                                       tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    import shutil

    shutil.copytree(pipeline, other / pipeline.name)
    commands = [Command("run", p, "--no-serve", "--param", "seconds=1", cwd=p.parent, env=env())
                for p in (pipeline, other / pipeline.name)]
    try:
        for command in commands:
            assert command.proc.wait(RUN_TIMEOUT) == 0, command.output
    finally:
        for command in commands:
            command.stop(signal.SIGKILL)
    kernels, daemons = [], set()
    for command, p in zip(commands, (pipeline, other / pipeline.name), strict=True):
        run_id = RUN_LINE.search(command.output)["run_id"]
        metrics = artifacts.read_run_metrics(artifacts.open_store(f"file://{store(p)}"),
                                             "pids", run_id)["second"]
        kernels += [metrics["k1"], metrics["k2"]]
        daemons.add(metrics["d1"])
    said = "".join(c.output for c in commands) + worker.paths()["log"].read_text()
    assert len(set(kernels)) == 4 and daemons == {worker.ask("status")["pid"]}, said
    assert worker.ask("status")["handed"] == 4, said


def test_switched_off_by_env_or_setting(pipeline: Path, own_worker: Path) -> None:
    _, off = run(pipeline, NB2PROD_WORKER="0")
    assert not worker.paths()["sock"].exists()  # never started
    ini = pipeline / "nb2prod.ini"
    ini.write_text(ini.read_text() + "\n[run]\nWORKER = false\n")
    _, off_too = run(pipeline, "--no-cache")
    assert not worker.paths()["sock"].exists()
    assert off["d1"] != off_too["d1"]  # each run's own runner, no daemon
