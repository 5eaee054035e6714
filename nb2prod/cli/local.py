"""`nb2prod run`, `runs`, `graph` and `worker`: the pipeline on this machine, its
history, and the stage worker `run` starts on demand."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nb2prod.cli.common import (
    PathArg,
    console,
    echo_err,
    namespace_for,
    open_pipeline,
    say_uncacheable,
)
from nb2prod.errors import PipelineFailure, UserError


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a notebook parameter (typed like its default); repeatable.")
@click.option("--stage", help="Run only this stage (inputs from the latest successful run).")
@click.option("--jobs", type=click.IntRange(min=1), help="Stages run at once [cores].")
@click.option("--store", help="Artifact store URI (file://PATH, s3://bucket/prefix).")
@click.option("--no-serve", is_flag=True, help="Stop after the batch stages.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port of the (first) service stage.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--smoke", is_flag=True,
              help="Send each service a sample request (see README), print the answer, stop.")
@click.option("--no-cache", is_flag=True,
              help="Run every batch stage, even those an earlier run already ran unchanged.")
def run(target: Path, params: tuple[str, ...], stage: str | None, jobs: int | None,
        store: str | None, no_serve: bool, port: int | None, host: str, smoke: bool,
        no_cache: bool) -> None:
    """Run the pipeline in DIR (or split NOTEBOOK first), then serve its service stages."""
    from nb2prod.runners import interrupts

    try:
        with interrupts.signals_interrupt():
            _run(target, params, stage, jobs, store, no_serve, port, host, smoke, no_cache)
    except interrupts.Interrupted as exc:
        note = interrupts.stop_note()
        how = interrupts.stopped_text(note) if note else f"interrupted ({exc})"
        click.echo(f"nb2prod: {how}; every stage and server stopped", err=True)
        sys.exit(exc.exit_code)


def _run(target: Path, params: tuple[str, ...], stage: str | None, jobs: int | None,
         store: str | None, no_serve: bool, port: int | None, host: str, smoke: bool,
         no_cache: bool) -> None:
    import os

    from nb2prod.errors import Problem
    from nb2prod.pipeline import run_parameters
    from nb2prod.settings import local_store

    pipeline = open_pipeline(target)
    if stage is not None and stage not in pipeline.stages:
        raise UserError(Problem(f"--stage {stage}: no such stage (have: "
                                f"{', '.join(pipeline.order)})"))
    store_uri = local_store(pipeline.store_uri(store))
    values = run_parameters(pipeline, list(params))
    batch = [stage] if stage and pipeline.stages[stage].type == "batch" else (
        [] if stage else pipeline.batch)
    services = [stage] if stage and pipeline.stages[stage].type == "service" else (
        [] if stage else pipeline.services)
    # Ports are taken before any stage runs: a busy port fails now, not after training.
    reservation = None
    if services and not no_serve:  # runners.services loads only when there is one to start
        from nb2prod.runners import services as local_services

        reservation = local_services.reserve_ports(pipeline, services, port, host)
    try:
        result = None
        if batch:
            result = _run_batch(pipeline, store_uri, values, stage, jobs or os.cpu_count() or 1,
                                no_cache)
        not_promoted = result is not None and not result.promoted and stage is None
        if reservation is not None:
            _serve(pipeline, store_uri, services, reservation, smoke, result, not_promoted)
        if not_promoted:
            raise PipelineFailure(f"run {result.run_id} not promoted: {result.reason}")
    finally:
        if reservation is not None:
            reservation.release()


def _run_batch(pipeline, store_uri: str, values: dict, stage: str | None, jobs: int,
               no_cache: bool):
    from nb2prod.progress import Progress
    from nb2prod.runners import local

    with Progress(f"pipeline {pipeline.name}", failure_details=False) as progress:
        runner = local.LocalRunner(pipeline, store_uri, values, jobs, progress,
                                   use_cache=not no_cache)
        n = 1 if stage else len(pipeline.batch)
        click.echo(f"run {runner.run_id}: {n} batch stage(s), store {store_uri}")
        if not no_cache:
            say_uncacheable(pipeline, [stage] if stage else pipeline.batch, values)
        result = local.run_batch(pipeline, store_uri=store_uri, params=values,
                                 jobs=runner.jobs, only=stage, runner=runner)
    _summarise(result)
    if result.status != "succeeded":
        raise PipelineFailure(f"run {result.run_id} failed")
    return result


def _serve(pipeline, store_uri: str, services: list[str], reservation, smoke: bool,
           result, not_promoted: bool) -> None:
    """Serve the latest promoted run on the reserved ports (until Ctrl-C, or one smoke)."""
    from nb2prod import artifacts
    from nb2prod.runners import services as local_services

    latest = artifacts.read_latest(artifacts.open_store(store_uri), pipeline.name)
    if latest is None:
        raise PipelineFailure("nothing to serve: no run has been promoted yet"
                              + (f" ({result.reason})" if result else ""))
    if not_promoted:
        click.echo(f"run {result.run_id} not promoted ({result.reason}); serving the latest "
                   f"promoted run {latest['run_id']}", err=True)
    running = local_services.start_services(
        pipeline, services, store_uri, None, reservation.host, reservation=reservation,
        echo=echo_err, log_run_id=latest["run_id"])
    try:
        samples = {s.stage.name: local_services.sample_request(
            pipeline, s, store_uri, latest["run_id"]) for s in running}
    except BaseException:
        local_services.stop_services(running)
        raise
    for service in running:
        route = service.stage.value("service", "ROUTE", "/predict")
        click.echo(f"serving {service.stage.name} (run {latest['run_id']}) at "
                   f"{service.url}{route}")
        click.echo(f"  try: {local_services.sample_curl(service, samples[service.stage.name])}")
    if smoke:
        try:
            failures = [s.stage.name for s in running
                        if not local_services.smoke_request(
                            s, samples[s.stage.name], click.echo)]
        finally:
            local_services.stop_services(running)
        if failures:
            raise PipelineFailure(f"smoke request failed for {', '.join(failures)}")
        return  # a run that was not promoted still fails (in _run): the smoke used an older model
    click.echo("Ctrl-C to stop.", err=True)
    local_services.wait_for_shutdown(running)


def _summarise(result) -> None:
    for state in result.stages.values():
        if state.state == "failed":
            click.echo(f"nb2prod: {state.message}", err=True)
    metrics = ", ".join(f"{k}={v:g}" for stage in result.metrics.values()
                        for k, v in stage.items() if isinstance(v, (int, float)))
    # A failed run's reason is the stage messages just printed: not repeated here.
    verdict = "promoted to latest" if result.promoted else (
        "" if result.status == "failed" else result.reason)
    cached = [s for s in result.stages.values() if s.state == "cached"]
    click.echo(f"run {result.run_id} {result.status}"
               + (f"; {len(cached)} of {len(result.stages)} stage(s) cached" if cached else "")
               + (f"; metrics: {metrics}" if metrics else "")
               + (f"; {verdict}" if verdict else ""))


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@click.option("--store", help="Artifact store URI [nb2prod.ini].")
@click.option("--namespace", "-n", help="For a pvc:// store: the claim's namespace "
              "[nb2prod.ini NAMESPACE].")
@click.option("--context", help="For a pvc:// store: kubeconfig context [current context].")
def runs(target: Path, store: str | None, namespace: str | None, context: str | None) -> None:
    """List past runs of the pipeline in DIR: status, metrics, which one is latest.

    A pvc:// store is read by a short-lived pod in the claim's namespace.
    """
    import datetime

    from rich.table import Table

    from nb2prod import artifacts
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import local
    from nb2prod.settings import local_store

    pipeline = load_pipeline(target)
    uri = pipeline.store_uri(store)
    if uri.lower().startswith("pvc://"):
        from nb2prod.runners import claim
        from nb2prod.runners import kubernetes as kube

        opts = kube.options_for(pipeline, namespace_for(pipeline, namespace), store=uri)
        with kube.api_errors():
            st = claim.snapshot(pipeline, opts, context)
    else:
        st = artifacts.open_store(local_store(uri))
    latest = (artifacts.read_latest(st, pipeline.name) or {}).get("run_id")
    table = Table(title=f"runs of {pipeline.name}", title_justify="left")
    table.add_column("run", overflow="fold", min_width=20)  # an id on one line, to copy
    for column in ("status", "started", "seconds", "metrics", "failed stage", "cached"):
        table.add_column(column, overflow="fold")  # the gate's verdict folds in "status"
    for record in artifacts.list_runs(st, pipeline.name):
        started = record.get("started")
        when = datetime.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S") \
            if isinstance(started, (int, float)) else "-"
        seconds = f"{record['finished'] - started:.1f}" if isinstance(
            record.get("finished"), (int, float)) and isinstance(started, (int, float)) else "-"
        metrics = ", ".join(f"{k}={v:g}" for m in (record.get("metrics") or {}).values()
                            for k, v in m.items() if isinstance(v, (int, float)))
        failed = ", ".join(n for n, s in (record.get("stages") or {}).items()
                           if s.get("status") == "failed")
        marker = " (latest)" if record.get("run_id") == latest else ""
        table.add_row(f"{record.get('run_id')}{marker}", local.run_status_line(record), when,
                      seconds, metrics or "-", failed or "-", _cached(record, pipeline.order) or "-")
    console().print(table)


def _cached(record: dict, order: list[str]) -> str:
    """`load, fit from RUN`: the stages the run reused from the cache, by the run that ran them."""
    by_source: dict[str, list[str]] = {}
    stages = record.get("stages") or {}
    for name, stage in sorted(stages.items(), key=lambda item: (
            order.index(item[0]) if item[0] in order else len(order), item[0])):
        if isinstance(stage, dict) and isinstance(stage.get("cached_from"), str):
            by_source.setdefault(stage["cached_from"], []).append(name)
    return "; ".join(f"{', '.join(names)} from {source}" for source, names in by_source.items())


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@click.option("-o", "--output", type=PathArg,
              help="Write the picture here: .svg/.png (Graphviz), .mmd (Mermaid), .dot "
                   "[Mermaid on stdout].")
@click.option("--run", "run_id", help="Show this run's stage states [the newest run].")
@click.option("--store", help="Artifact store URI [nb2prod.ini].")
def graph(target: Path, output: Path | None, run_id: str | None, store: str | None) -> None:
    """Draw the DAG of the pipeline in DIR (or of NOTEBOOK): stages, the names passed along
    each edge and, after a run, each stage's state, duration and metrics."""
    from nb2prod import graph as graphs

    formatter = graphs.format_for(output) if output is not None else graphs.to_mermaid
    picture = formatter(graphs.graph_for(target, run_id, store))
    if output is None:
        click.echo(picture, nl=False)
        return
    from nb2prod.artifacts import FileStore

    data = picture.encode() if isinstance(picture, str) else picture
    output = output.resolve()
    FileStore(output.parent).write_atomic(output.name, data)
    click.echo(f"wrote {output}", err=True)


@click.command("worker")
@click.argument("action", type=click.Choice(["status", "stop"]), default="status")
def worker_command(action: str) -> None:
    """The stage worker `run` starts on demand (warm kernels): show it, or stop it."""
    from nb2prod import worker

    worker.main([action])


COMMANDS = (run, runs, graph, worker_command)
