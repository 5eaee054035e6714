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

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _print_warnings(report) -> None:
    if not report.analysis.warnings:
        return
    err = _console(stderr=True)
    for warning in report.analysis.warnings:
        err.print(f"[yellow]warning:[/] {warning}", markup=True)


def _stage_table(report, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("stage", "type", "cells", "inputs", "outputs", "requirements"):
        table.add_column(column, overflow="fold")
    data = report.to_dict()
    for stage in data["stages"]:
        inputs = ", ".join(f"{n} ← {p}" for n, p in stage["inputs"].items()) or "-"
        reqs = ", ".join(r.split("==")[0] for r in stage["requirements"])
        table.add_row(stage["directory"], stage["type"],
                      ",".join(str(c) for c in stage["cells"]), inputs,
                      ", ".join(stage["outputs"]) or "-", reqs)
    _console().print(table)
    if data["dag"]:
        _console().print("DAG: " + "; ".join(f"{a} >> {b}" for a, b in data["dag"]))


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

    report = split_notebook(notebook, output, force=force, templates=templates, check=check)
    _print_warnings(report)
    if check:
        if report.stale:
            click.echo(f"{report.output}: stale against {notebook}; run `nb2prod split "
                       f"{notebook} -o {report.output} --force`:", err=True)
            for rel in report.stale:
                click.echo(f"  {rel}", err=True)
            sys.exit(1)
        click.echo(f"{report.output}: up to date with {notebook}")
        return
    _stage_table(report, f"pipeline written to {report.output}")
    for edit in report.kept_edits:
        click.echo(f"kept your edit: {edit}")
    for rel in report.backed_up:
        click.echo(f"replaced your edited {rel} (backup under {report.output}/.nb2prod/backup/)")


@cli.command()
@click.argument("notebook", type=PathArg)
@click.option("--templates", type=PathArg, help="Directory of templates overriding the built-in ones.")
def check(notebook: Path, templates: Path | None) -> None:
    """Lint tags and data flow of NOTEBOOK; write nothing."""
    from nb2prod.split import check_notebook

    report = check_notebook(notebook, templates)
    _print_warnings(report)
    _stage_table(report, f"{notebook}: can be split")


def main(argv: list[str] | None = None) -> int:
    """Entry point: map our exceptions to exit codes and one-line messages."""
    try:
        cli.main(args=argv, prog_name="nb2prod", standalone_mode=False)
    except UserError as exc:
        for problem in exc.problems:
            click.echo(f"nb2prod: error: {problem}", err=True)
        return 2
    except PipelineFailure as exc:
        click.echo(f"nb2prod: {exc}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("nb2prod: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
