"""The `nb2prod` command line: the click group, the command groups, exit codes.

Only click is imported at start-up: `nb2prod --help` must stay fast, so each
command imports what it needs (rich, nbformat, papermill, kubernetes, boto3...)
inside its body.  User mistakes surface as `UserError`: one line per problem,
exit code 2, no traceback; stage failures are exit code 1.

Commands live in one module per group (`split`: split/check, `local`:
run/runs/graph, `cluster`: deploy/render/status/logs/delete, `schedule`:
schedule/unschedule/history), each exposing `COMMANDS`; a new group is a new
module added to `COMMAND_GROUPS`.  What they share is in `common`.
"""

from __future__ import annotations

import click

from nb2prod import __version__
from nb2prod.cli import cluster, local, schedule, split
from nb2prod.errors import PipelineFailure, UserError

COMMAND_GROUPS = (split, local, cluster, schedule)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nb2prod")
def cli() -> None:
    """Turn a tagged Jupyter notebook into a production ML pipeline.

    Tag cells (stage:NAME, train, serve, imports, parameters...), then
    `nb2prod split NOTEBOOK` and `nb2prod run`.  See README.md for the tags.
    """


for _group in COMMAND_GROUPS:
    for _command in _group.COMMANDS:
        cli.add_command(_command)


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
