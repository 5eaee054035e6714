"""What each cell reads, writes and mutates: pure functions over cell sources.

The splitter needs, per cell, the module-level names it reads before binding
them (its *inputs*), the names it binds (*writes*), the names it changes in
place (*mutates*: ``x[k] = v``, ``x.a = v``, ``x.fit(...)``, ``x += 1``), the
modules it imports (for requirements) and the functions/classes it defines
(whose free names are read where they are *used*, not where defined).

The rule throughout is the one in DESIGN.md: when unsure, report a name as
read rather than miss it; a spurious input costs a save/load, a missed one
breaks the pipeline.  Reads that happen only after a *conditional* binding
(inside ``if``/``for``/``try``, in a lambda, in an annotation) are reported as
``maybe_reads``: they become inputs only when an earlier stage provides them.

One module per concern: `source` (a cell as plain Python), `flow` (the
results), `walker` (the module-level walk), `scope` (function bodies),
`names` (AST name helpers), `declarative` (the block rule), `imports`
(import statements as copyable sources, per-stage pruning).
"""

from __future__ import annotations

from nb2prod.dataflow.declarative import is_optional_import
from nb2prod.dataflow.flow import BUILTIN_NAMES, Call, CellFlow, Definition, names_used
from nb2prod.dataflow.imports import without_imports
from nb2prod.dataflow.source import PYTHON_CELL_MAGICS, TOO_DEEP, CellSyntaxError, python_source
from nb2prod.dataflow.walker import analyze_cell

__all__ = [
    "BUILTIN_NAMES", "PYTHON_CELL_MAGICS", "TOO_DEEP", "Call", "CellFlow", "CellSyntaxError",
    "Definition", "analyze_cell", "is_optional_import", "names_used", "python_source",
    "without_imports",
]
