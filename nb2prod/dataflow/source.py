"""A cell's source as plain Python: IPython's transformations only where needed.

Split here because every reader of cell code (name analysis, path literals,
metrics, the sample request) must see the same Python, and because IPython is
expensive to import: it is imported only for cells that do not parse as they are.
"""

from __future__ import annotations

import ast

#: Cell magics whose body is Python run in the user namespace.
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})

TOO_DEEP = ("code nested too deeply to analyse (an expression of hundreds of terms?); "
            "split it into smaller statements")


class CellSyntaxError(ValueError):
    """A cell that is not Python even after IPython's transformations."""

    def __init__(self, message: str, lineno: int | None) -> None:
        super().__init__(message)
        self.lineno = lineno


def python_source(source: str) -> str:
    """Return plain Python for a cell, applying IPython's transformations if needed.

    IPython is imported only for cells that are not valid Python already:
    importing it costs far more than parsing a notebook.
    """
    try:
        ast.parse(source)
        return source
    except SyntaxError:
        pass
    lines = source.lstrip().splitlines()
    if lines and lines[0].startswith("%%"):
        magic = lines[0][2:].split()
        name = magic[0] if magic else ""
        if name not in PYTHON_CELL_MAGICS:
            return ""  # %%bash, %%html, %%writefile ...: not Python
        body = "\n".join(lines[1:])
        prefix = ""
        if name == "capture" and len(magic) > 1 and not magic[-1].startswith("-"):
            prefix = f"{magic[-1]} = None\n"  # %%capture out binds `out`
        return prefix + python_source(body)
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def parse_cell(source: str) -> tuple[str, ast.Module]:
    """The Python a cell runs and its tree; most cells parse as they are (parsed once)."""
    try:
        return source, ast.parse(source)
    except SyntaxError:
        code = python_source(source)
    try:
        return code, ast.parse(code)
    except SyntaxError as exc:
        raise CellSyntaxError(f"not valid Python: {exc.msg} (line {exc.lineno})",
                              exc.lineno) from None
