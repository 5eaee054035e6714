"""Errors that the CLI turns into exit codes.

User mistakes (a bad tag, a name never provided, a missing file) must reach the
user as one line naming the file, cell or key, with exit code 2 and no
traceback; a stage that fails at run time is exit code 1.  Keeping both as
exception types lets library code (split, the JupyterLab handlers) raise them
and each front end decide how to show them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One user-facing problem, located as precisely as we can.

    `cell` is the 0-based index (for tools, e.g. the JupyterLab extension's "Go to cell");
    `cell_line` the first line of that cell's source; `str()` shows both as `cell_label`.
    """

    message: str
    cell: int | None = None
    file: str | None = None
    cell_line: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.cell is not None:
            from nb2prod.artifacts import cell_label  # the stage runtime names cells too

            where.append(cell_label(self.cell, self.cell_line))
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def to_dict(self) -> dict[str, object]:
        return {"message": self.message, "cell": self.cell, "file": self.file, "text": str(self)}


class UserError(Exception):
    """Bad input: exit code 2, every problem on its own line."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PipelineFailure(Exception):
    """A stage failed while running: exit code 1."""

    exit_code = 1
