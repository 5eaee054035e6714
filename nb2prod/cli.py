"""The `nb2prod` command line.

Only click is imported at start-up: `nb2prod --help` must stay fast, so each
command imports what it needs (rich, nbformat, papermill, kubernetes, boto3...)
inside its body.  User mistakes surface as `UserError`: one line per problem,
exit code 2, no traceback; stage failures are exit code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nb2prod import __version__
from nb2prod.errors import PipelineFailure, UserError

PathArg = click.Path(path_type=Path)


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200  # pipes and logs: don't fold run ids
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _print_warnings(report) -> None:
    if not report.warnings:
        return
    from rich.markup import escape

    err = _console(stderr=True)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(str(warning))}", markup=True, highlight=False)


def _stage_table(report, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("stage", "type", "cells", "inputs", "outputs", "files", "requirements"):
        table.add_column(column, overflow="fold")
    data = report.to_dict()
    for stage in data["stages"]:
        inputs = ", ".join(f"{n} ← {p}" for n, p in
                           {**stage["inputs"], **stage["file_inputs"]}.items()) or "-"
        reqs = ", ".join(r.split("==")[0] for r in stage["requirements"])
        table.add_row(stage["directory"], stage["type"],
                      ",".join(str(c + 1) for c in stage["cells"]), inputs,
                      ", ".join(stage["outputs"]) or "-", ", ".join(stage["files"]) or "-", reqs)
    _console().print(table)
    if data["dag"]:
        _console().print("DAG: " + "; ".join(f"{a} >> {b}" for a, b in data["dag"]))
    if data["no_stage"]:
        groups: dict[str, list[str]] = {}
        for entry in data["no_stage"]:
            groups.setdefault(entry["why"], []).append(str(entry["cell"] + 1))  # as JupyterLab
        _console().print("cells in no stage: " + "; ".join(
            f"{', '.join(cells)} ({why})" for why, cells in groups.items()), markup=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nb2prod")
def cli() -> None:
    """Turn a tagged Jupyter notebook into a production ML pipeline.

    Tag cells (stage:NAME, train, serve, imports, parameters...), then
    `nb2prod split NOTEBOOK` and `nb2prod run`.  See README.md for the tags.
    """


@cli.command()
@click.argument("notebook", type=PathArg)
@click.option("-o", "--output", type=PathArg, help="Pipeline directory [NOTEBOOK-pipeline].")
@click.option("--force", is_flag=True, help="Update an existing pipeline (config.ini edits kept).")
@click.option("--check", is_flag=True, help="Exit 1 if the pipeline is stale; write nothing.")
@click.option("--templates", type=PathArg, help="Directory of templates overriding the built-in ones.")
def split(notebook: Path, output: Path | None, force: bool, check: bool,
          templates: Path | None) -> None:
    """Split NOTEBOOK (.ipynb, or jupytext .py/.md) into a pipeline directory."""
    from nb2prod.split import split_notebook

    report = split_notebook(notebook, output, force=force, templates=templates, check=check,
                            on_wait=_say_waiting)
    _print_warnings(report)
    if check:
        if report.stale:
            click.echo(f"{report.output}: stale against {notebook}; run `nb2prod split "
                       f"{notebook} -o {report.output} --force`:", err=True)
            for rel in report.stale:
                click.echo(f"  {rel}", err=True)
            raise click.exceptions.Exit(1)
        click.echo(f"{report.output}: up to date with {notebook}")
        return
    _stage_table(report, f"pipeline written to {report.output}")
    _print_split_notes(report)


def _say_waiting(message: str) -> None:
    click.echo(f"nb2prod: {message}", err=True)


def _print_split_notes(report) -> None:
    """What split did with the user's work: kept, backed up, carried, recovered."""
    for note in report.recovered:
        click.echo(f"nb2prod: {note}", err=True)
    for new, old in report.renamed.items():
        click.echo(f"stage directory {old} is now {new}: your edits and files moved with it")
    for edit in report.kept_edits:
        click.echo(f"kept your edit: {edit}")
    backup = f"{report.output}/.nb2prod/backup/"
    for rel in report.backed_up:
        if rel.endswith(".ini"):
            click.echo(f"backed up your edited {rel} under {backup} (its values and comments "
                       "are kept)")
        else:
            click.echo(f"replaced your edited {rel} (backup under {backup})")
    for orphan in report.orphans:
        click.echo(f"nb2prod: {orphan}", err=True)


@cli.command()
@click.argument("notebook", type=PathArg)
@click.option("--templates", type=PathArg, help="Directory of templates overriding the built-in ones.")
def check(notebook: Path, templates: Path | None) -> None:
    """Lint tags and data flow of NOTEBOOK; write nothing."""
    from nb2prod.split import check_notebook

    report = check_notebook(notebook, templates)
    _print_warnings(report)
    _stage_table(report, f"{notebook}: can be split")


def _open_pipeline(target: Path, templates: Path | None = None):
    """A pipeline directory as is, or a notebook split on the fly (into NOTEBOOK-pipeline)."""
    from nb2prod.pipeline import load_pipeline

    if target.is_file():
        from nb2prod.split import default_output, split_notebook

        output = default_output(target)
        report = split_notebook(target, output, force=True, templates=templates,
                                on_wait=_say_waiting)
        _print_warnings(report)
        _print_split_notes(report)
        click.echo(f"split {target} into {output}", err=True)
        return load_pipeline(output)
    pipeline = load_pipeline(target)
    _refuse_stale(pipeline, target)
    return pipeline


def _refuse_stale(pipeline, given: Path) -> None:
    """Exit 2 when the notebook changed since `given` was split (run NOTEBOOK re-splits)."""
    import os

    from nb2prod.errors import Problem
    from nb2prod.split import changed_source

    notebook = changed_source(pipeline.root, pipeline.value("project", "NOTEBOOK"),
                              pipeline.value("project", "SOURCE_SHA256"))
    if notebook is None:
        return
    shown = os.path.relpath(notebook)
    raise UserError(Problem(f"stale: {shown} changed since it was split; update with `nb2prod "
                            f"split {shown} -o {given} --force` (your config.ini edits are "
                            f"kept), or run the notebook itself: `nb2prod run {shown}`",
                            file=str(given)))


@cli.command()
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
        click.echo(f"nb2prod: interrupted ({exc}); every stage and server stopped", err=True)
        sys.exit(exc.exit_code)


def _run(target: Path, params: tuple[str, ...], stage: str | None, jobs: int | None,
         store: str | None, no_serve: bool, port: int | None, host: str, smoke: bool,
         no_cache: bool) -> None:
    import os

    from nb2prod.errors import Problem
    from nb2prod.pipeline import run_parameters
    from nb2prod.runners import services as local_services
    from nb2prod.settings import local_store

    pipeline = _open_pipeline(target)
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
    reservation = None if no_serve or not services else local_services.reserve_ports(
        pipeline, services, port, host)
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
        echo=_echo_err, log_run_id=latest["run_id"])
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


def _echo_err(line: str) -> None:
    click.echo(line, err=True)


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


@cli.command()
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

        opts = kube.options_for(pipeline, _namespace(pipeline, namespace), store=uri)
        with kube.api_errors():
            st = claim.snapshot(pipeline, opts, context)
    else:
        st = artifacts.open_store(local_store(uri))
    latest = (artifacts.read_latest(st, pipeline.name) or {}).get("run_id")
    table = Table(title=f"runs of {pipeline.name}", title_justify="left")
    for column in ("run", "status", "started", "seconds", "metrics", "failed stage"):
        table.add_column(column, overflow="fold")
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
        table.add_row(f"{record.get('run_id')}{marker}", local.displayed_status(record), when,
                      seconds, metrics or "-", failed or "-")
    _console().print(table)


@cli.command()
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


# -- Kubernetes ---------------------------------------------------------------------------
def _namespace(pipeline, namespace: str | None) -> str:
    """--namespace, else [kubernetes] NAMESPACE of nb2prod.ini; one of them is required."""
    from nb2prod.errors import Problem

    value = namespace or pipeline.value("kubernetes", "NAMESPACE")
    if not value:
        raise UserError(Problem("--namespace is required (or set [kubernetes] NAMESPACE in "
                                "nb2prod.ini)"))
    return value


_namespace_option = click.option("--namespace", "-n", help="Namespace [nb2prod.ini NAMESPACE].")
_context_option = click.option("--context", help="kubeconfig context [current context].")


@cli.command()
@click.argument("target", type=PathArg, default=Path("."))
@_namespace_option
@_context_option
@click.option("--image", help="Image with the stages' requirements preinstalled (no pip at start).")
@click.option("--store", help="Artifact store URI (s3://bucket/prefix or pvc://CLAIM/path).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a notebook parameter (typed like its default); repeatable.")
@click.option("--dry-run", is_flag=True, help="List the objects a deploy would create; change "
              "nothing.")
@click.option("--no-wait", is_flag=True, help="Start one run in the cluster and return at once "
              "(the mechanism `schedule` uses; see `nb2prod history`; no cache).")
@click.option("--no-cache", is_flag=True,
              help="Run every batch stage, even those found unchanged in the store.")
def deploy(target: Path, namespace: str | None, context: str | None, image: str | None,
           store: str | None, params: tuple[str, ...], dry_run: bool, no_wait: bool,
           no_cache: bool) -> None:
    """Run the pipeline in DIR (or NOTEBOOK) on Kubernetes: Jobs in DAG order, then serve."""
    from nb2prod import manifests
    from nb2prod.progress import Progress
    from nb2prod.runners import kubernetes as kube

    pipeline = _open_pipeline(target)
    opts = kube.options_for(pipeline, _namespace(pipeline, namespace), image=image, store=store,
                            params=list(params))
    if no_wait and not dry_run:
        from nb2prod.runners import schedule as incluster

        with kube.api_errors():
            started = incluster.start_run(pipeline, opts, context=context)
        click.echo(f"run {started['run_id']} started in namespace {opts.namespace} (Job "
                   f"{started['run_id']}); it trains, gates and rolls out in the cluster")
        _report_created_services(started)
        click.echo(f"follow with: nb2prod history {pipeline.root} -n {opts.namespace}")
        return
    if dry_run:
        plan = manifests.plan(pipeline, opts)
        click.echo(f"deploy of {pipeline.name} (run {opts.run_id}) to namespace "
                   f"{opts.namespace} would apply:")
        for obj in plan.objects():
            click.echo(f"  {obj['kind']}/{obj['metadata']['name']}")
        click.echo("nothing was changed (`nb2prod render` prints the YAML)")
        return
    client = kube.Kube(context)
    with kube.api_errors(), Progress(f"deploy {pipeline.name} to {opts.namespace}") as progress:
        deployer = kube.Deployer(client, pipeline, opts, progress, click.echo,
                                 use_cache=not no_cache)
        deployer.preflight()
        click.echo(f"run {opts.run_id}: {len(pipeline.batch)} batch stage(s), "
                   f"{len(pipeline.services)} service(s), namespace {opts.namespace}, "
                   f"store {opts.store}")
        result = deployer.run()
    _deploy_summary(result)
    if result["status"] != "succeeded":
        raise PipelineFailure(f"deploy of run {result['run_id']} {result['status']}"
                              .replace("not_promoted", "not promoted")
                              + (f": {result['reason']}" if result["reason"] else ""))


def _deploy_summary(result: dict) -> None:
    verdict = {True: "promoted", False: "not promoted", None: ""}[result.get("promoted")]
    cached = {n: s["cached_from"] for n, s in result.get("stages", {}).items()
              if s.get("cached_from")}
    click.echo(f"run {result['run_id']} {result['status'].replace('_', ' ')}"
               + (f"; {verdict}" if verdict and result["status"] != "not_promoted" else "")
               + (f"; cached, no Job run: {', '.join(f'{n} (run {r})' for n, r in cached.items())}"
                  if cached else ""))
    for name, svc in result.get("services", {}).items():
        if svc["status"] != "serving":
            continue
        click.echo(f"serving {name} (run {svc['model_run_id']}) at {svc['url']}")
        click.echo(f"  from outside the cluster: {svc['port_forward']}, then "
                   f"curl http://127.0.0.1:8080{svc['url'].split('.svc.cluster.local', 1)[1]}")
        click.echo(f"  or through the API server's service proxy (kubeconfig credentials): "
                   f"{svc['proxy_url']}")


@cli.command()
@click.argument("target", type=PathArg, default=Path("."))
@_namespace_option
@click.option("--image", help="Image with the stages' requirements preinstalled.")
@click.option("--store", help="Artifact store URI (s3://bucket/prefix or pvc://CLAIM/path).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a notebook parameter; repeatable.")
@click.option("--cron", "cron_expr", metavar="EXPR", help="Render the scheduled form instead: "
              "a CronJob that retrains, gates and rolls [nb2prod.ini [schedule] CRON].")
@click.option("--time-zone", help="IANA time zone of --cron [nb2prod.ini [schedule] TIME_ZONE].")
@click.option("--dockerfile", is_flag=True, help="Print a Dockerfile instead: an image with "
              "every stage's requirements preinstalled, for --image.")
@click.option("-o", "--output", type=PathArg, help="Write the YAML here [stdout].")
def render(target: Path, namespace: str | None, image: str | None, store: str | None,
           params: tuple[str, ...], cron_expr: str | None, time_zone: str | None,
           dockerfile: bool, output: Path | None) -> None:
    """Print every Kubernetes object of a deploy of DIR as YAML (for kubectl / GitOps).

    With --cron (or [schedule] CRON in nb2prod.ini): the objects of `nb2prod
    schedule` instead, which a plain `kubectl apply` can run on its own.  With
    --dockerfile: the Dockerfile of an image for `deploy --image`.
    """
    from nb2prod import manifests
    from nb2prod.runners import kubernetes as kube

    _check_output_file(output)
    pipeline = _open_pipeline(target)
    if dockerfile:
        text = manifests.dockerfile(pipeline, pipeline.store_uri(store),
                                    manifests.default_boto3_requirement())
        if output is None:
            click.echo(text, nl=False)
        else:
            _write_file(output, text)
            click.echo(f"wrote the Dockerfile of {pipeline.name} to {output}", err=True)
        return
    cron_expr, time_zone, _ = _schedule_settings(pipeline, cron_expr, time_zone, False,
                                                 required=False)
    opts = kube.options_for(pipeline, _namespace(pipeline, namespace), image=image, store=store,
                            params=list(params))
    try:  # the rendered pods fetch their input files from the store, as deployed ones do
        kube.upload_input_files(pipeline, opts)
    except UserError as exc:
        click.echo(f"warning: {exc}; the rendered pods will not find them", err=True)
    if cron_expr:
        from nb2prod.runners import schedule as incluster

        splan, cronjob = incluster.scheduled_objects(pipeline, opts, cron_expr, time_zone,
                                                     False, serving="latest")
        objects = [splan.namespace, *splan.setup, cronjob,
                   *(o for objs in splan.services.values() for o in objs)]
        zone = f" ({time_zone})" if time_zone else " (UTC)"
        header = (f"# nb2prod {__version__}: pipeline {pipeline.name}, namespace "
                  f"{opts.namespace}, retrained on '{cron_expr}'{zone}.\n# Each run is one Job "
                  "(stages in DAG order, then the promotion gate and the roll-out);\n# start "
                  f"one now with: kubectl -n {opts.namespace} create job --from=cronjob/"
                  f"{cronjob['metadata']['name']} NAME\n")
    else:
        plan = manifests.plan(pipeline, opts)
        objects = plan.objects()
        order = " then ".join(pipeline.batch) or "none"
        header = (f"# nb2prod {__version__}: pipeline {pipeline.name}, run {opts.run_id}, "
                  f"namespace {opts.namespace}.\n# The Jobs must run in DAG order ({order}, "
                  "then the promote Job) before the\n# Deployments roll out; `kubectl apply` "
                  "does not wait: `nb2prod deploy` does\n# (or render with --cron for "
                  "objects that run on their own).\n")
    text = manifests.to_yaml(objects, header)
    if output is None:
        click.echo(text, nl=False)
    else:
        _write_file(output, text)
        click.echo(f"wrote {len(objects)} objects to {output}", err=True)


def _check_output_file(output: Path | None) -> None:
    """-o FILE must be a file in an existing directory: refused before any work (exit 2)."""
    from nb2prod.errors import Problem

    if output is None:
        return
    if output.is_dir():
        raise UserError(Problem("is a directory; give a file name for -o", file=str(output)))
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(Problem(f"no such directory {parent}; create it first or choose "
                                "another -o", file=str(output)))


def _write_file(output: Path, text: str) -> None:
    """Write through a temp file and a rename: never a half-written file."""
    import os
    import tempfile

    from nb2prod.writer import os_errors

    with os_errors(output):
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, output)
        except BaseException:
            os.unlink(tmp)
            raise


def _report_created_services(info: dict) -> None:
    """Say what a service Deployment created for in-cluster runs serves meanwhile."""
    for name, state in info["services"].items():
        if state != "created":
            continue
        if info.get("serving"):
            click.echo(f"service {name}: created serving run {info['serving']} (latest.json "
                       "in the store) until a run passes")
        else:
            click.echo(f"service {name}: created with 0 replicas; the first passing run "
                       "rolls it out")


def _schedule_settings(pipeline, cron_expr: str | None, time_zone: str | None, suspend: bool,
                       *, required: bool) -> tuple[str | None, str | None, bool]:
    """--cron/--time-zone/--suspend, else `[schedule]` of nb2prod.ini; checked (exit 2)."""
    from nb2prod import cron
    from nb2prod.errors import Problem

    ini = str(pipeline.root / "nb2prod.ini")
    where = "--cron"
    if not cron_expr:
        cron_expr = pipeline.value("schedule", "CRON") or None
        where = f"{ini}: [schedule] CRON"
    if not time_zone:
        time_zone = pipeline.value("schedule", "TIME_ZONE") or None
    suspend = suspend or pipeline.value("schedule", "SUSPEND").lower() in ("1", "true", "yes")
    if pipeline.value("schedule", "CACHE").lower() in ("1", "true", "yes", "on"):
        click.echo(f"nb2prod: warning: {ini}: [schedule] CACHE = true is not supported yet; "
                   "scheduled runs run every stage", err=True)
    if not cron_expr:
        if required:
            raise UserError(Problem("--cron is required (or set [schedule] CRON in nb2prod.ini)"))
        return None, time_zone, suspend
    cron.checked(cron_expr, time_zone, where)
    return cron_expr, time_zone, suspend


@cli.command()
@click.argument("target", type=PathArg, default=Path("."))
@_namespace_option
@_context_option
@click.option("--cron", "cron_expr", metavar="EXPR",
              help='When to retrain, e.g. "0 3 * * *" [nb2prod.ini [schedule] CRON].')
@click.option("--time-zone", help="IANA time zone of the schedule, e.g. Europe/Berlin [UTC].")
@click.option("--suspend", is_flag=True, help="Create or update the schedule but do not run it.")
@click.option("--image", help="Image with the stages' requirements preinstalled.")
@click.option("--store", help="Artifact store URI (s3://bucket/prefix or pvc://CLAIM/path).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a notebook parameter for every scheduled run; repeatable.")
def schedule(target: Path, namespace: str | None, context: str | None, cron_expr: str | None,
             time_zone: str | None, suspend: bool, image: str | None, store: str | None,
             params: tuple[str, ...]) -> None:
    """Retrain DIR on a cron schedule in the cluster; promote and roll out only passing runs."""
    from nb2prod.runners import kubernetes as kube
    from nb2prod.runners import schedule as incluster

    pipeline = _open_pipeline(target)
    cron_expr, time_zone, suspend = _schedule_settings(pipeline, cron_expr, time_zone, suspend,
                                                       required=True)
    opts = kube.options_for(pipeline, _namespace(pipeline, namespace), image=image, store=store,
                            params=list(params))
    with kube.api_errors():
        info = incluster.schedule(pipeline, opts, cron_expr, time_zone, suspend, context=context)
    zone = info["time_zone"] or "UTC"
    click.echo(f"{info['action']} CronJob {info['cronjob']} in {info['namespace']}: "
               f"'{info['schedule']}' ({zone})" + (", suspended" if suspend else ""))
    if info["next_run"]:
        click.echo(f"next run: {info['next_run']}")
    _report_created_services(info)
    click.echo(f"run it now: kubectl -n {info['namespace']} create job "
               f"--from=cronjob/{info['cronjob']} {info['cronjob']}-manual; "
               f"see runs: nb2prod history {pipeline.root} -n {info['namespace']}")


@cli.command()
@click.argument("target", type=PathArg, default=Path("."))
@_namespace_option
@_context_option
def unschedule(target: Path, namespace: str | None, context: str | None) -> None:
    """Stop retraining DIR on a schedule (a run in progress finishes; history is kept)."""
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube
    from nb2prod.runners import schedule as incluster

    pipeline = load_pipeline(target, validate=False)
    ns = _namespace(pipeline, namespace)
    with kube.api_errors():
        removed = incluster.unschedule(pipeline, ns, context=context)
    click.echo(f"removed the schedule of {pipeline.name} from {ns}" if removed
               else f"{pipeline.name} is not scheduled in {ns}")


@cli.command()
@click.argument("target", type=PathArg, default=Path("."))
@_namespace_option
@_context_option
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Show at most this many runs.")
def history(target: Path, namespace: str | None, context: str | None, as_json: bool,
            limit: int) -> None:
    """In-cluster runs of DIR (scheduled and `deploy --no-wait`), newest first."""
    import json

    from rich.table import Table

    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube
    from nb2prod.runners import schedule as incluster

    pipeline = load_pipeline(target, validate=False)
    ns = _namespace(pipeline, namespace)
    with kube.api_errors():
        runs = incluster.history(pipeline, ns, context=context)[:limit]
        scheduled = incluster.cron_status(pipeline, ns, context=context)
    if as_json:
        click.echo(json.dumps({"schedule": scheduled, "runs": runs}, indent=2, sort_keys=True))
        return
    if scheduled:
        click.echo(f"schedule: '{scheduled['schedule']}' ({scheduled['time_zone'] or 'UTC'})"
                   + (", suspended" if scheduled["suspend"] else "")
                   + f"; last scheduled {incluster.format_time(scheduled['last_schedule'])}")
    else:
        click.echo(f"{pipeline.name} is not scheduled in {ns}")
    if not runs:
        click.echo("no in-cluster runs recorded")
        return
    table = Table(title=f"{pipeline.name} in {ns}: runs", title_justify="left")
    table.add_column("run", no_wrap=True)
    for column in ("trigger", "start", "end", "status", "metrics", "failed stage", "reason"):
        table.add_column(column, overflow="fold")
    for run in runs:
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in run["metrics"].items())
        table.add_row(run["run_id"], run["trigger"], incluster.format_time(run["start"]),
                      incluster.format_time(run["end"]), run["status"].replace("_", " "),
                      metrics or "-", run["failed_stage"] or "-", run["reason"] or "-")
    _console().print(table)
    store = (scheduled or {}).get("store") or next((r["store"] for r in runs if r.get("store")),
                                                   None)
    where = f" -n {ns}" if store and store.startswith("pvc://") else ""
    click.echo("The cluster keeps the newest runs only ([schedule] SUCCESSFUL_RUNS_KEPT, "
               f"FAILED_RUNS_KEPT); every run, from the store: nb2prod runs {pipeline.root} "
               f"--store {store or 'URI'}{where}")


@cli.command()
@click.argument("target", type=PathArg, default=Path("."))
@_namespace_option
@_context_option
def status(target: Path, namespace: str | None, context: str | None) -> None:
    """Show the pipeline in DIR on Kubernetes: runs, Job states, services, served run."""
    from rich.table import Table

    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube

    pipeline = load_pipeline(target, validate=False)
    with kube.api_errors():
        info = kube.status(pipeline, _namespace(pipeline, namespace), context=context)
    console = _console()
    if not info["runs"] and not any(s["exists"] for s in info["services"].values()):
        click.echo(f"{pipeline.name}: nothing deployed in namespace {info['namespace']}")
        return
    table = Table(title=f"{pipeline.name} in {info['namespace']}: runs", title_justify="left")
    batch = [s for s in info["stages"] if pipeline.stages[s].type == "batch"]
    table.add_column("run", no_wrap=True)
    for column in ("status", *batch, "promotion"):
        table.add_column(column, overflow="fold")
    for run in info["runs"][:10]:
        table.add_row(run["run_id"], run["status"], *(run["stages"].get(s, "-") for s in batch),
                      run["promotion"] or "-")
    console.print(table)
    for run in info["runs"][:10]:
        rollout = run.get("rollout") or {}
        if rollout.get("status") == "failed":
            click.echo(f"run {run['run_id']}: promoted, but the roll-out failed: "
                       f"{rollout.get('reason') or '?'}")
    if info["services"]:
        table = Table(title="services", title_justify="left")
        for column in ("stage", "deployment", "ready", "rollout"):
            table.add_column(column, overflow="fold")
        table.add_column("serving run", no_wrap=True)
        table.add_column("url", overflow="fold")
        for name, svc in info["services"].items():
            if not svc["exists"]:
                table.add_row(name, svc["deployment"], "-", "not deployed", "-", "-")
                continue
            table.add_row(name, svc["deployment"], f"{svc['ready']}/{svc['replicas']}",
                          svc["rollout"], svc["model_run_id"] or "-", svc["url"])
        console.print(table)


@cli.command()
@click.argument("stage")
@click.argument("target", type=PathArg, default=Path("."))
@_namespace_option
@_context_option
@click.option("--run", "run_id", help="Run id [the newest run of the stage].")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the pod ends.")
def logs(stage: str, target: Path, namespace: str | None, context: str | None,
         run_id: str | None, follow: bool) -> None:
    """Print the logs of STAGE of the pipeline in DIR (every attempt, oldest first)."""
    from nb2prod.errors import Problem
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube

    pipeline = load_pipeline(target, validate=False)
    if stage not in pipeline.stages:
        raise UserError(Problem(f"no stage '{stage}' (have: {', '.join(pipeline.order)})"))
    ns = _namespace(pipeline, namespace)
    with kube.api_errors():
        shown = kube.logs(pipeline.name, ns, stage, run_id=run_id, follow=follow,
                          context=context, echo=click.echo)
    if not shown:
        which = f" of run {run_id}" if run_id else ""
        raise PipelineFailure(f"no pods of stage '{stage}'{which} in namespace {ns} "
                              "(finished Jobs are kept for 7 days)")


@cli.command()
@click.argument("target", type=PathArg, default=Path("."))
@_namespace_option
@_context_option
@click.option("--purge-artifacts", is_flag=True,
              help="Also delete the pipeline's runs and latest.json from the artifact store.")
@click.option("--store", help="Artifact store URI for --purge-artifacts [nb2prod.ini].")
def delete(target: Path, namespace: str | None, context: str | None, purge_artifacts: bool,
           store: str | None) -> None:
    """Delete every Kubernetes object of the pipeline in DIR (artifacts are kept)."""
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube

    pipeline = load_pipeline(target, validate=False)
    ns = _namespace(pipeline, namespace)
    with kube.api_errors():
        counts = kube.delete(pipeline, ns, context=context, purge_artifacts=purge_artifacts,
                             store=store, echo=click.echo)
    objects = {k: v for k, v in counts.items() if k != "artifacts"}
    if not objects:
        click.echo(f"nothing of {pipeline.name} in namespace {ns}")
        return
    click.echo(f"deleted from {ns}: " + ", ".join(f"{n} {k}" for k, n in objects.items()))


def main(argv: list[str] | None = None) -> int:
    """Entry point: map our exceptions to exit codes and one-line messages."""
    try:
        code = cli.main(args=argv, prog_name="nb2prod", standalone_mode=False)
        if isinstance(code, int):  # click returns an Exit's code when not standalone
            return code
    except UserError as exc:
        for problem in exc.problems:
            click.echo(f"nb2prod: error: {problem}", err=True)
        return 2
    except PipelineFailure as exc:
        click.echo(f"nb2prod: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("nb2prod: interrupted", err=True)
        return 130
    except click.exceptions.Abort:
        click.echo("nb2prod: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except Exception as exc:
        from nb2prod.artifacts import ArtifactError

        if not isinstance(exc, ArtifactError):
            raise
        # a store file that is not what nb2prod wrote (truncated, edited): bad input
        click.echo(f"nb2prod: error: {str(exc).splitlines()[0]}", err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
