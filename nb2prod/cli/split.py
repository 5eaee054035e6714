"""`nb2prod split` and `nb2prod check`: from a notebook to a pipeline directory."""

from __future__ import annotations

from pathlib import Path

import click

from nb2prod.cli.common import PathArg, console, print_split_notes, print_warnings, say_waiting

templates_option = click.option("--templates", type=PathArg,
                                help="Directory of templates overriding the built-in ones.")


def _stage_table(report, title: str) -> None:
    """The stages split found: cells, inputs (names and files), outputs, requirements."""
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
    console().print(table)
    if data["dag"]:
        console().print("DAG: " + "; ".join(f"{a} >> {b}" for a, b in data["dag"]))
    if data["no_stage"]:
        groups: dict[str, list[str]] = {}
        for entry in data["no_stage"]:
            groups.setdefault(entry["why"], []).append(str(entry["cell"] + 1))  # as JupyterLab
        console().print("cells in no stage: " + "; ".join(
            f"{', '.join(cells)} ({why})" for why, cells in groups.items()), markup=False)


@click.command()
@click.argument("notebook", type=PathArg)
@click.option("-o", "--output", type=PathArg, help="Pipeline directory [NOTEBOOK-pipeline].")
@click.option("--force", is_flag=True, help="Update an existing pipeline (config.ini edits kept).")
@click.option("--check", is_flag=True, help="Exit 1 if the pipeline is stale; write nothing.")
@templates_option
def split(notebook: Path, output: Path | None, force: bool, check: bool,
          templates: Path | None) -> None:
    """Split NOTEBOOK (.ipynb, or jupytext .py/.md) into a pipeline directory."""
    from nb2prod.split import split_notebook

    report = split_notebook(notebook, output, force=force, templates=templates, check=check,
                            on_wait=say_waiting)
    print_warnings(report)
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
    print_split_notes(report)


@click.command()
@click.argument("notebook", type=PathArg)
@templates_option
def check(notebook: Path, templates: Path | None) -> None:
    """Lint tags and data flow of NOTEBOOK; write nothing."""
    from nb2prod.split import check_notebook

    report = check_notebook(notebook, templates)
    print_warnings(report)
    _stage_table(report, f"{notebook}: can be split")


COMMANDS = (split, check)
