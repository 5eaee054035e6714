"""What the name analysis of a cell produces: `CellFlow`, `Definition`, `Call`.

These are the only types the notebook-level analysis (`nb2prod.analysis`) and
the renderer see; the AST walkers that fill them in stay private to this
package, so the walk can change without touching the stage logic.
"""

from __future__ import annotations

import builtins
import functools
from dataclasses import dataclass, field

BUILTIN_NAMES = frozenset(dir(builtins)) | {"get_ipython", "display", "__file__", "In", "Out"}


@dataclass(frozen=True)
class Call:
    """A call of a plain name, `f(a, key=b)`: the root names of its arguments."""

    func: str
    args: tuple[str | None, ...]
    keywords: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class Definition:
    """A top-level ``def``/``class``/import whose source can be copied to another stage."""

    kind: str  # "def" | "class" | "import"
    source: str
    free_reads: frozenset[str] = frozenset()
    free_mutates: frozenset[str] = frozenset()
    global_writes: frozenset[str] = frozenset()
    #: a class's method bodies: their free names are needed when a method runs, which
    #: the analysis cannot see, so they are read only if some earlier stage provides them
    method_reads: frozenset[str] = frozenset()
    #: an import: the top-level modules it imports (for requirements)
    modules: tuple[str, ...] = ()
    #: an import inside ``try: ... except ImportError:``: fine to be missing
    optional: bool = False
    #: what the statement itself evaluates (decorators, defaults, bases, a class body):
    #: a copy runs only after these exist
    definition_reads: frozenset[str] = frozenset()
    #: a def: its positional parameters, and those its body changes in place
    #: (`def add_features(df): df["r"] = ...`): a call mutates what is passed there
    params: tuple[str, ...] = ()
    mutated_params: frozenset[str] = frozenset()

    def mutated_by(self, call: Call) -> set[str]:
        """The names a call of this function changes through its arguments."""
        found = {root for param, root in zip(self.params, call.args)
                 if root and param in self.mutated_params}
        return found | {root for kw, root in call.keywords
                        if root and kw in self.mutated_params}


@dataclass(frozen=True)
class CellFlow:
    """Data flow of one cell at module level."""

    reads: frozenset[str]
    maybe_reads: frozenset[str]
    writes: frozenset[str]
    maybe_writes: frozenset[str]
    mutates: frozenset[str]
    deletes: frozenset[str]
    imports: tuple[tuple[str, int], ...]
    definitions: dict[str, Definition] = field(default_factory=dict)
    uses: frozenset[str] = frozenset()  # every name loaded anywhere (function lookups)
    star_import: int | None = None
    optional_imports: frozenset[str] = frozenset()  # modules imported only optionally
    calls: tuple[Call, ...] = ()  # calls of plain names (functions defined elsewhere)
    #: nothing but imports, def/class, literal constants and setup magics: such an
    #: untagged cell may join the imports/functions/parameters block above it
    declarative: bool = False

    @functools.cached_property
    def provides(self) -> frozenset[str]:
        """Names whose value this cell may change: the producers of data."""
        return self.writes | self.maybe_writes | self.mutates


def names_used(flow: CellFlow) -> frozenset[str]:
    """Every name a cell may load, also inside the bodies of its defs and methods."""
    found = set(flow.uses | flow.reads | flow.maybe_reads)
    for definition in flow.definitions.values():
        found |= definition.free_reads | definition.method_reads
    return frozenset(found)
