"""`nb2prod run`'s service stages: ports reserved up front, gunicorn started and stopped.

Ports are bound before any batch stage runs (`reserve_ports`), so a busy port
fails in one line at once rather than after training.  Each service runs from
a temporary working directory holding its input files, is served by gunicorn
(`nb2prod.serve`) with the runner's lifeline, and its log is echoed with a
``[stage]`` prefix and kept in the store when it stops.  `sample_request`,
`sample_curl` and `smoke_request` make the "try:" hint and `--smoke`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nb2prod import artifacts, lifeline, workdir
from nb2prod.errors import PipelineFailure, Problem, UserError
from nb2prod.pipeline import Pipeline, StageSpec
from nb2prod.runners.interrupts import shielded, signals_interrupt


@dataclass
class Service:
    """A running service stage; its log goes to `log` and, at stop, to `log_key` in the store."""

    stage: StageSpec
    url: str
    process: subprocess.Popen
    workdir: Path | None = None  # its working directory (removed when it stops)
    log_key: str | None = None  # where its log is kept in the store
    store_uri: str | None = None

    @property
    def log(self) -> Path | None:
        return None if self.workdir is None else self.workdir / "service-log.txt"



def _service_workdir(pipeline: Pipeline, name: str) -> tuple[Path, dict[str, str]]:
    """A temp working directory with the service's input files, and the env naming it."""
    files = workdir.stage_files(pipeline, name)
    work = Path(tempfile.mkdtemp(prefix=f"nb2prod-serve-{name}-"))
    try:
        workdir.copy_into(files, work / "cwd")
        (work / "cwd").mkdir(exist_ok=True)
        (work / workdir.FILES_PLAN).write_bytes(workdir.files_plan(pipeline, name))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work, {"NB2PROD_WORKDIR": str(work / "cwd"),
                  "NB2PROD_FILES_PLAN": str(work / workdir.FILES_PLAN)}


@dataclass
class Reservation:
    """Ports bound (not yet listening) for the service stages, before anything runs."""

    host: str
    ports: dict[str, int]
    sockets: dict[str, socket.socket]

    def take(self, name: str) -> socket.socket:
        return self.sockets.pop(name)

    def release(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


def service_ports(pipeline: Pipeline, names: list[str], port: int | None) -> dict[str, int]:
    """A distinct port per service: --port P gives P, P+1, ...; else each stage's PORT,
    moved up past the ports of earlier services when two stages name the same one."""
    ports: dict[str, int] = {}
    for i, name in enumerate(names):
        wanted = port + i if port is not None else pipeline.stages[name].integer(
            "service", "PORT", 8080)
        while wanted in ports.values():
            wanted += 1
        ports[name] = wanted
    return ports


def reserve_ports(pipeline: Pipeline, names: list[str], port: int | None,
                  host: str = "127.0.0.1", option: str = "--port") -> Reservation:
    """Bind every service's port now: a taken one fails here, in one line, fast.

    `option` is what the user sets the port with, named in that line (`--port`; the
    JupyterLab panel's "Port" field)."""
    from nb2prod import serve

    reservation = Reservation(host, service_ports(pipeline, names, port), {})
    try:
        for name, number in reservation.ports.items():
            if not 0 < number < 65536:
                raise UserError(Problem(f"[service] PORT = {number} is not a TCP port (1-65535)",
                                        file=str(pipeline.stages[name].directory / "config.ini")))
            try:
                reservation.sockets[name] = serve.reserve_port(host, number)
            except OSError as exc:
                source = option if port is not None else "config.ini [service] PORT"
                why = "is already in use" if exc.errno == errno.EADDRINUSE else \
                    f"cannot be bound ({exc.strerror})"
                raise UserError(Problem(
                    f"port {number} on {host} {why} (service stage '{name}', from {source}); "
                    f"stop what uses it or choose another with {option}")) from None
    except BaseException:
        reservation.release()
        raise
    return reservation


def start_services(pipeline: Pipeline, names: list[str], store_uri: str, port: int | None,
                   host: str = "127.0.0.1", model_run_id: str | None = None, *,
                   reservation: Reservation | None = None,
                   echo: Callable[[str], None] | None = None,
                   log_run_id: str | None = None) -> list[Service]:
    """Start gunicorn for each service stage and wait until /readyz answers 200.

    Each server's output is echoed line by line with a ``[stage]`` prefix (`echo`) and
    kept; `stop_services` stores it as ``<log_run_id>/<stage>/service-log.txt``.
    """
    from nb2prod import serve

    reservation = reservation or reserve_ports(pipeline, names, port, host)
    started: list[Service] = []
    try:
        for name in names:
            stage = pipeline.stages[name]
            env = dict(os.environ)
            env.update(NB2PROD_STORE=store_uri, NB2PROD_PIPELINE=pipeline.name,
                       NB2PROD_STAGE=name)
            for var in ("NB2PROD_RUN_ID", "NB2PROD_INPUT_RUN_ID", "MODEL_RUN_ID"):
                env.pop(var, None)
            if model_run_id:
                env["MODEL_RUN_ID"] = model_run_id
            workers = stage.integer("service", "WORKERS", 2)
            work, work_env = _service_workdir(pipeline, name)
            env.update(work_env)
            on_line = (lambda line, prefix=f"[{name}] ": echo(prefix + line)) if echo else None
            try:
                proc = serve.start_service(
                    stage.directory, reservation.ports[name], env, workers, host=host,
                    threads=stage.integer("service", "THREADS", serve.THREADS),
                    listener=reservation.take(name), lifeline=lifeline.runner(),
                    log_file=work / "service-log.txt", on_line=on_line)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
            bracketed = f"[{host}]" if ":" in host else host
            url = f"http://{bracketed}:{reservation.ports[name]}"
            key = None
            if log_run_id:
                key = f"{artifacts.run_prefix(pipeline.name, log_run_id)}/{name}/service-log.txt"
            started.append(Service(stage, url, proc, work, key, store_uri))
            serve.wait_ready(url, stage.number("service", "MAX_STARTUP_TIME_SECONDS", 120), proc)
    except BaseException:
        with shielded():
            reservation.release()
            stop_services(started)
        raise
    return started


def stop_services(services: list[Service]) -> None:
    """Stop every server (draining requests), then keep its log in the store."""
    from nb2prod import serve

    with shielded():
        for service in services:
            serve.stop_service(service.process, 30)
        for service in services:
            keep_service_log(service)
            if service.workdir is not None:
                shutil.rmtree(service.workdir, ignore_errors=True)


def keep_service_log(service: Service) -> None:
    """Append the server's log to the store (several serving sessions of one run add up)."""
    log = service.log
    if log is None or not log.is_file() or not (service.log_key and service.store_uri):
        return
    try:
        store = artifacts.open_store(service.store_uri)
        try:
            before = store.read_bytes(service.log_key)
        except FileNotFoundError:
            before = b""
        store.write_bytes(service.log_key, before + log.read_bytes())
    except Exception as exc:  # noqa: BLE001 - a store hiccup must not mask the real outcome
        print(f"nb2prod: warning: could not keep the log of '{service.stage.name}' in the "
              f"store: {exc}", file=sys.stderr)


def sample_request(pipeline: Pipeline, service: Service, store_uri: str, run_id: str) -> str:
    """The JSON body `--smoke` sends and the curl hint shows (see nb2prod.sample).

    The notebook's own literal `predict({...})` call (`[service] SAMPLE_REQUEST`), else the
    first rows of the data the served run's model was fitted on, recorded by that run's
    fitting stage; `{}` when neither exists.
    """
    literal = service.stage.value("service", "SAMPLE_REQUEST")
    if literal:
        return literal
    recorded = artifacts.read_sample(artifacts.open_store(store_uri), pipeline.name, run_id,
                                     pipeline.batch)
    return json.dumps(recorded) if recorded is not None else "{}"


def sample_curl(service: Service, payload: str) -> str:
    import shlex

    route = service.stage.value("service", "ROUTE", "/predict") or "/predict"
    token = ' -H "Authorization: Bearer $NB2PROD_API_TOKEN"' if os.environ.get(
        "NB2PROD_API_TOKEN") else ""
    return (f"curl -s -X POST {service.url}{route} -H 'Content-Type: application/json'"
            f"{token} -d {shlex.quote(payload)}")


def smoke_request(service: Service, body: str, echo: Callable[[str], None]) -> bool:
    """POST `body` (see `sample_request`) once; print the answer; True on HTTP 200."""
    import urllib.error
    import urllib.request

    route = service.stage.value("service", "ROUTE", "/predict") or "/predict"
    payload = body.encode()
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("NB2PROD_API_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(service.url + route, data=payload, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    echo(f"POST {route} {payload.decode()} -> {status} {body.strip()}")
    return status == 200


def wait_for_shutdown(services: list[Service]) -> int:
    """Block until Ctrl-C / SIGTERM or a service exits; return the exit code to use."""
    try:
        with signals_interrupt():
            while True:
                for service in services:
                    if service.process.poll() is not None:
                        raise PipelineFailure(
                            f"service '{service.stage.name}' exited with code "
                            f"{service.process.returncode}")
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_services(services)
    return 0
