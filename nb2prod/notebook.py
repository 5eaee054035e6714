"""Load a notebook from `.ipynb` (nbformat) or a jupytext text file (`.py`, `.md`).

Everything downstream works on plain `Cell` records, so the analysis stays
independent of nbformat and is trivially testable.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from nb2prod.errors import Problem, UserError

TEXT_SUFFIXES = (".py", ".md", ".r", ".jl")


@dataclass(frozen=True)
class Cell:
    """A notebook cell as the splitter sees it."""

    index: int
    cell_type: str
    source: str
    tags: tuple[str, ...] = ()
    cell_id: str | None = None
    metadata: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Notebook:
    """A loaded notebook: cells plus what generated notebooks need to inherit."""

    path: Path
    cells: tuple[Cell, ...]
    metadata: dict
    sha256: str

    def label(self, index: int) -> str:
        """`cell 5 ("first line")`: the cell as a JupyterLab user finds it."""
        from nb2prod.artifacts import cell_label

        return cell_label(index, self.first_line(index))

    def first_line(self, index: int) -> str | None:
        from nb2prod.artifacts import first_line

        return first_line(self.cells[index].source) if 0 <= index < len(self.cells) else None

    def locate(self, problems: list[Problem]) -> list[Problem]:
        """`problems` with the first line of each one's cell filled in."""
        return [replace(p, cell_line=self.first_line(p.cell))
                if p.cell is not None and p.cell_line is None else p for p in problems]


def import_nbformat():
    """Import nbformat without `rfc3987_syntax`, which jsonschema loads when present.

    That optional package compiles a grammar at import (over 2 s here) for an
    IRI format check nbformat's schema never uses; hiding it keeps `split`
    fast without changing what is validated.
    """
    if "nbformat" not in sys.modules and "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]
        try:
            import nbformat
        finally:
            del sys.modules["rfc3987_syntax"]
    import nbformat

    return nbformat


def load_notebook(path: Path) -> Notebook:
    """Read and validate a notebook; every failure is a one-line `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(Problem("no such notebook file", file=str(path)))
    return parse_notebook(path, path.read_bytes())


def parse_notebook(path: Path, data: bytes, *, as_json: bool = False) -> Notebook:
    """The notebook in `data`, as if read from `path` (which names it in messages and
    sets its directory and format); `as_json`: `.ipynb` JSON whatever the suffix (what
    JupyterLab holds in memory for any notebook, a jupytext `.py` one included)."""
    path = Path(path)
    sha = hashlib.sha256(data).hexdigest()
    nbformat = import_nbformat()
    text = path.suffix.lower() in TEXT_SUFFIXES and not as_json

    try:
        if text:
            import jupytext

            nb = jupytext.reads(data.decode("utf-8"), fmt=path.suffix.lstrip(".").lower())
        else:
            try:
                raw = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UserError(Problem(f"not a notebook: invalid JSON ({exc})", file=str(path))) from None
            if not isinstance(raw, dict) or "cells" not in raw and "worksheets" not in raw:
                raise UserError(Problem("not a notebook: no 'cells' in the JSON", file=str(path)))
            captured: dict = {}
            nb = nbformat.reads(data.decode("utf-8"), as_version=4,
                                capture_validation_error=captured)
            if "ValidationError" in captured:  # reads validated already: don't do it twice
                raise captured["ValidationError"]
        if text:
            nbformat.validate(nb)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - nbformat/jupytext raise many types for one cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(Problem(f"not a valid notebook: {first}", file=str(path))) from None
    cells = tuple(
        Cell(
            index=i,
            cell_type=c.cell_type,
            source=c.source if isinstance(c.source, str) else "".join(c.source),
            tags=tuple(c.get("metadata", {}).get("tags", [])),
            cell_id=None if text else c.get("id"),  # jupytext ids are random
            metadata=dict(c.get("metadata", {})),
        )
        for i, c in enumerate(nb.cells)
    )
    return Notebook(path=path, cells=cells, metadata=dict(nb.metadata), sha256=sha)
