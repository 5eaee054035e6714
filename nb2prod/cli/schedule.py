"""`nb2prod schedule`, `unschedule` and `history`: retraining in the cluster on a cron schedule."""

from __future__ import annotations

from pathlib import Path

import click

from nb2prod.cli.common import (
    PathArg,
    console,
    context_option,
    namespace_for,
    namespace_option,
    open_pipeline,
    say_uncacheable,
)
from nb2prod.errors import UserError


def report_created_services(info: dict) -> None:
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


def schedule_settings(pipeline, cron_expr: str | None, time_zone: str | None, suspend: bool,
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
    if not cron_expr:
        if required:
            raise UserError(Problem("--cron is required (or set [schedule] CRON in nb2prod.ini)"))
        return None, time_zone, suspend
    cron.checked(cron_expr, time_zone, where)
    return cron_expr, time_zone, suspend


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@namespace_option
@context_option
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
    from nb2prod import retrain
    from nb2prod.runners import kubernetes as kube
    from nb2prod.runners import schedule as incluster

    pipeline = open_pipeline(target)
    cron_expr, time_zone, suspend = schedule_settings(pipeline, cron_expr, time_zone, suspend,
                                                       required=True)
    opts = kube.options_for(pipeline, namespace_for(pipeline, namespace), image=image, store=store,
                            params=list(params))
    with kube.api_errors():
        info = incluster.schedule(pipeline, opts, cron_expr, time_zone, suspend, context=context)
    zone = info["time_zone"] or "UTC"
    click.echo(f"{info['action']} CronJob {info['cronjob']} in {info['namespace']}: "
               f"'{info['schedule']}' ({zone})" + (", suspended" if suspend else ""))
    if info["next_run"]:
        click.echo(f"next run: {info['next_run']}")
    if retrain.cache_setting(pipeline):
        say_uncacheable(pipeline, pipeline.batch, dict(opts.params), "pod")
    report_created_services(info)
    click.echo(f"run it now: kubectl -n {info['namespace']} create job "
               f"--from=cronjob/{info['cronjob']} {info['cronjob']}-manual; "
               f"see runs: nb2prod history {pipeline.root} -n {info['namespace']}")


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@namespace_option
@context_option
def unschedule(target: Path, namespace: str | None, context: str | None) -> None:
    """Stop retraining DIR on a schedule (a run in progress finishes; history is kept)."""
    from nb2prod.pipeline import load_pipeline
    from nb2prod.runners import kubernetes as kube
    from nb2prod.runners import schedule as incluster

    pipeline = load_pipeline(target, validate=False)
    ns = namespace_for(pipeline, namespace)
    with kube.api_errors():
        removed = incluster.unschedule(pipeline, ns, context=context)
    click.echo(f"removed the schedule of {pipeline.name} from {ns}" if removed
               else f"{pipeline.name} is not scheduled in {ns}")


@click.command()
@click.argument("target", type=PathArg, default=Path("."))
@namespace_option
@context_option
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
    ns = namespace_for(pipeline, namespace)
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
    for column in ("trigger", "start", "end", "status", "cached", "metrics", "failed stage",
                   "reason"):
        table.add_column(column, overflow="fold")
    for run in runs:
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in run["metrics"].items())
        table.add_row(run["run_id"], run["trigger"], incluster.format_time(run["start"]),
                      incluster.format_time(run["end"]), run["status"].replace("_", " "),
                      ", ".join(run.get("cached") or {}) or "-", metrics or "-", run["failed_stage"] or "-", run["reason"] or "-")
    console().print(table)
    store = (scheduled or {}).get("store") or next((r["store"] for r in runs if r.get("store")),
                                                   None)
    where = f" -n {ns}" if store and store.startswith("pvc://") else ""
    click.echo("The cluster keeps the newest runs only ([schedule] SUCCESSFUL_RUNS_KEPT, "
               f"FAILED_RUNS_KEPT); every run, from the store: nb2prod runs {pipeline.root} "
               f"--store {store or 'URI'}{where}")


COMMANDS = (schedule, unschedule, history)
