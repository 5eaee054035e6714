"""What every command group shares: argument types, output, opening a pipeline.

Like the commands, these helpers import only click at module level; rich,
nbformat and the rest are imported inside, when a command needs them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nb2prod.errors import UserError

PathArg = click.Path(path_type=Path)

namespace_option = click.option("--namespace", "-n", help="Namespace [nb2prod.ini NAMESPACE].")
context_option = click.option("--context", help="kubeconfig context [current context].")


def console(stderr: bool = False):
    """A rich console that does not fold long lines (run ids) when writing to a pipe."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200  # pipes and logs: don't fold run ids
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def echo_err(line: str) -> None:
    click.echo(line, err=True)


def say_uncacheable(pipeline, stages: list[str], params: dict, where: str = "here"
                    ) -> None:
    """One line per reason some of `stages` cannot be cached (they always run), once a run;
    `where` they run (`cache.WHERE`)."""
    from nb2prod import cache

    for line in cache.uncacheable(pipeline, stages, params, where):
        click.echo(f"nb2prod: {line}")


def say_waiting(message: str) -> None:
    """Called while split waits for another split of the same directory (the lock)."""
    click.echo(f"nb2prod: {message}", err=True)


def print_warnings(report) -> None:
    if not report.warnings:
        return
    from rich.markup import escape

    err = console(stderr=True)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(str(warning))}", markup=True, highlight=False)


def print_split_notes(report) -> None:
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


def open_pipeline(target: Path, templates: Path | None = None):
    """A pipeline directory as is, or a notebook split on the fly (into NOTEBOOK-pipeline)."""
    from nb2prod.pipeline import load_pipeline

    if target.is_file():
        from nb2prod import fresh_split

        output = fresh_split.default_output(target)
        seen = fresh_split.fingerprint(target, output) if templates is None else None
        if fresh_split.is_fresh(output, seen):
            click.echo(f"{output} is up to date with {target}", err=True)
            return load_pipeline(output)
        from nb2prod.split import split_notebook

        report = split_notebook(target, output, force=True, templates=templates,
                                on_wait=say_waiting)
        fresh_split.remember(output, seen)
        print_warnings(report)
        print_split_notes(report)
        click.echo(f"split {target} into {output}", err=True)
        return load_pipeline(output)
    pipeline = load_pipeline(target)
    _refuse_stale(pipeline, target)
    return pipeline


def _refuse_stale(pipeline, given: Path) -> None:
    """Exit 2 when the notebook changed since `given` was split (run NOTEBOOK re-splits)."""
    import os

    from nb2prod.errors import Problem
    from nb2prod.pipeline import source_changed_bytes

    recorded = pipeline.value("project", "SOURCE_SHA256")
    changed = source_changed_bytes(pipeline.root, pipeline.value("project", "NOTEBOOK"),
                                   recorded)
    if changed is None:
        return  # the same bytes: fresh, without importing split (fast `run DIR`)
    from nb2prod.split import split_would_change

    notebook = split_would_change(changed, pipeline.root, recorded)
    if notebook is None:
        return
    shown = os.path.relpath(notebook)
    raise UserError(Problem(f"stale: {shown} changed since it was split; update with `nb2prod "
                            f"split {shown} -o {given} --force` (your config.ini edits are "
                            f"kept), or run the notebook itself: `nb2prod run {shown}`",
                            file=str(given)))


def namespace_for(pipeline, given: str | None) -> str:
    """--namespace, else [kubernetes] NAMESPACE of nb2prod.ini; one of them is required."""
    from nb2prod.errors import Problem

    value = given or pipeline.value("kubernetes", "NAMESPACE")
    if not value:
        raise UserError(Problem("--namespace is required (or set [kubernetes] NAMESPACE in "
                                "nb2prod.ini)"))
    return value


def check_output_file(output: Path | None) -> None:
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


def write_file(output: Path, text: str) -> None:
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


def echo_or_write(output: Path | None, text: str, wrote: str) -> None:
    """Print `text`, or write it to -o FILE and say `wrote ... to FILE` on stderr."""
    if output is None:
        click.echo(text, nl=False)
        return
    write_file(output, text)
    click.echo(f"wrote {wrote} to {output}", err=True)
