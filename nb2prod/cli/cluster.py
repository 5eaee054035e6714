"""`nb2prod deploy`, `render`, `status`, `logs` and `delete`: the pipeline on Kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from nb2prod import __version__
from nb2prod.cli.common import (
    PathArg,
    check_output_file,
    console,
    context_option,
    echo_or_write,
    namespace_for,
    namespace_option,
    open_pipeline,
    say_uncacheable,
)
from nb2prod.cli.schedule import report_created_services, schedule_settings
from nb2prod.errors import PipelineFailure, UserError

if TYPE_CHECKING:
    from nb2prod.progress import EventLog


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@namespace_option
@context_option
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
@click.option("--events", type=PathArg, hidden=True,
              help="Also append stage events and the outcome to FILE as JSON lines "
              "(what the JupyterLab panel follows).")
def deploy(target: Path, namespace: str | None, context: str | None, image: str | None,
           store: str | None, params: tuple[str, ...], dry_run: bool, no_wait: bool,
           no_cache: bool, events: Path | None) -> None:
    """Run the pipeline in DIR (or NOTEBOOK) on Kubernetes: Jobs in DAG order, then serve."""
    import sys

    from nb2prod.runners import interrupts

    log = None
    if events is not None:
        from nb2prod.progress import EventLog

        log = EventLog(events)
    try:  # SIGTERM as Ctrl-C: the running Jobs are deleted (suspended on a deliberate stop)
        with interrupts.signals_interrupt():
            _deploy(target, namespace, context, image, store, params, dry_run, no_wait,
                    no_cache, log)
    except UserError as exc:
        if log is not None:
            log.write({"error": "; ".join(str(p) for p in exc.problems),
                       "problems": [p.to_dict() for p in exc.problems]})
        raise
    except PipelineFailure as exc:  # the stages' own messages are in their events
        if log is not None:
            log.write({"error": str(exc), "problems": []})
        raise
    except KeyboardInterrupt as exc:
        note = interrupts.stop_note()
        how = interrupts.stopped_text(note) if note else "interrupted"
        if log is not None:
            log.write({"error": how, "problems": [], **({"stopped": note} if note else {})})
        if not isinstance(exc, interrupts.Interrupted):
            raise
        done = ("suspended and kept with the note (`nb2prod delete` removes them)" if note
                else "deleted")  # as BatchJobs.abort_running did
        click.echo(f"nb2prod: {how}; its running Jobs were {done}", err=True)
        sys.exit(exc.exit_code)


def _deploy(target: Path, namespace: str | None, context: str | None, image: str | None,
            store: str | None, params: tuple[str, ...], dry_run: bool, no_wait: bool,
            no_cache: bool, events: EventLog | None = None) -> None:
    """`deploy`; with an EventLog `events`, every stage event and the result go there too."""
    from nb2prod import manifests
    from nb2prod.progress import Progress, tee
    from nb2prod.runners import kubernetes as kube

    pipeline = open_pipeline(target)
    opts = kube.options_for(pipeline, namespace_for(pipeline, namespace), image=image, store=store,
                            params=list(params))
    if no_wait and not dry_run:
        from nb2prod import retrain
        from nb2prod.runners import schedule as incluster

        with kube.api_errors():
            started = incluster.start_run(pipeline, opts, context=context,
                                          use_cache=not no_cache)
        click.echo(f"run {started['run_id']} started in namespace {opts.namespace} (Job "
                   f"{started['run_id']}); it trains, gates and rolls out in the cluster")
        if not no_cache and retrain.cache_setting(pipeline):
            say_uncacheable(pipeline, pipeline.batch, dict(opts.params), "pod")
        report_created_services(started)
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
        deployer = kube.Deployer(client, pipeline, opts,
                                 progress if events is None else tee(progress, events),
                                 click.echo, use_cache=not no_cache)
        deployer.preflight()
        click.echo(f"run {opts.run_id}: {len(pipeline.batch)} batch stage(s), "
                   f"{len(pipeline.services)} service(s), namespace {opts.namespace}, "
                   f"store {opts.store}")
        if not no_cache:
            say_uncacheable(pipeline, pipeline.batch, dict(opts.params), "deploy")
        result = deployer.run()
    if events is not None:
        events.write({"result": result})
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


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@namespace_option
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

    check_output_file(output)
    pipeline = open_pipeline(target)
    if dockerfile:
        text = manifests.dockerfile(pipeline, pipeline.store_uri(store),
                                    manifests.default_boto3_requirement())
        echo_or_write(output, text, f"the Dockerfile of {pipeline.name}")
        return
    cron_expr, time_zone, _ = schedule_settings(pipeline, cron_expr, time_zone, False,
                                                required=False)
    opts = kube.options_for(pipeline, namespace_for(pipeline, namespace), image=image, store=store,
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
    echo_or_write(output, manifests.to_yaml(objects, header), f"{len(objects)} objects")


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@namespace_option
@context_option
def status(target: Path, namespace: str | None, context: str | None) -> None:
    """Show the pipeline in DIR on Kubernetes: runs, Job states, services, served run."""
    from rich.table import Table

    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube

    pipeline = load_pipeline(target, validate=False)
    with kube.api_errors():
        info = kube.status(pipeline, namespace_for(pipeline, namespace), context=context)
    out = console()
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
                      run.get("verdict") or run["promotion"] or "-")
    out.print(table)
    for run in info["runs"][:10]:
        rollout = run.get("rollout") or {}
        if rollout.get("status") == "failed":
            click.echo(f"run {run['run_id']}: promoted, but the roll-out failed: "
                       f"{rollout.get('reason') or '?'}")
        if run.get("stopped"):
            from nb2prod.runners.interrupts import stopped_text

            click.echo(f"run {run['run_id']}: {stopped_text(run['stopped'])}")
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
        out.print(table)


@click.command()
@click.argument("stage")
@click.argument("target", type=PathArg, default=Path("."))
@namespace_option
@context_option
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
    ns = namespace_for(pipeline, namespace)
    with kube.api_errors():
        shown = kube.logs(pipeline.name, ns, stage, run_id=run_id, follow=follow,
                          context=context, echo=click.echo)
    if not shown:
        which = f" of run {run_id}" if run_id else ""
        raise PipelineFailure(f"no pods of stage '{stage}'{which} in namespace {ns} "
                              "(finished Jobs are kept for 7 days)")


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@namespace_option
@context_option
@click.option("--purge-artifacts", is_flag=True,
              help="Also delete the pipeline's runs and latest.json from the artifact store.")
@click.option("--store", help="Artifact store URI for --purge-artifacts [nb2prod.ini].")
def delete(target: Path, namespace: str | None, context: str | None, purge_artifacts: bool,
           store: str | None) -> None:
    """Delete every Kubernetes object of the pipeline in DIR (artifacts are kept)."""
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube

    pipeline = load_pipeline(target, validate=False)
    ns = namespace_for(pipeline, namespace)
    with kube.api_errors():
        counts = kube.delete(pipeline, ns, context=context, purge_artifacts=purge_artifacts,
                             store=store, echo=click.echo)
    objects = {k: v for k, v in counts.items() if k != "artifacts"}
    if not objects:
        click.echo(f"nothing of {pipeline.name} in namespace {ns}")
        return
    click.echo(f"deleted from {ns}: " + ", ".join(f"{n} {k}" for k, n in objects.items()))


COMMANDS = (deploy, render, status, logs, delete)
