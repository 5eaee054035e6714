"""Where a name a stage reads comes from: the providing cell, or the import binding it.

Rules (DESIGN.md "Data between stages"): a name a stage reads before binding
it is provided by the last earlier stage cell (notebook order) that binds or
mutates it, also through a call (`add_features(train)` with `def
add_features(df): df["r"] = ...` in another cell); a `del` in between makes
the read fail in the notebook too.  Import-bound names are never data: the
reader gets the import (`import_for`).
"""

from __future__ import annotations

import bisect

from nb2prod.analysis.layout import Layout
from nb2prod.dataflow import Definition


def argument_mutations(layout: Layout) -> dict[int, frozenset[str]]:
    """Stage cell -> the names it changes through the arguments of calls of functions
    defined in other cells: the calling cell is their provider from then on."""
    defs: dict[str, list[tuple[int, Definition]]] = {}
    for index in sorted(layout.flows):
        for name, d in layout.flows[index].definitions.items():
            if d.kind == "def" and d.mutated_params:
                defs.setdefault(name, []).append((index, d))
    found_by_cell: dict[int, frozenset[str]] = {}
    if not defs:
        return found_by_cell
    prelude = layout.prelude_cells()
    for index in layout.cell_stage:
        flow = layout.flows[index]
        found: set[str] = set()
        for call in flow.calls:
            if call.func in flow.definitions or call.func not in defs:
                continue
            seen = [d for i, d in defs[call.func] if i < index or i in prelude]
            if seen:
                found |= seen[-1].mutated_by(call)
        if found - flow.mutates:
            found_by_cell[index] = frozenset(found)
    return found_by_cell


def _cells_by_name(cells: dict[int, frozenset[str]]) -> dict[str, list[int]]:
    """name -> the cells (in order) whose set holds it."""
    found: dict[str, list[int]] = {}
    for index in sorted(cells):
        for name in cells[index]:
            found.setdefault(name, []).append(index)
    return found


class Providers:
    """The index of who binds, mutates, deletes and imports each name, by cell."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        flows, cell_stage = layout.flows, layout.cell_stage
        self.mutated_by_calls = argument_mutations(layout)
        #: name -> the stage cells (in order) that bind or mutate it
        self.providers = _cells_by_name({i: self.provides(i) for i in cell_stage if i in flows})
        #: name -> the stage cells (in order) that delete it
        self.deleters = _cells_by_name({i: flows[i].deletes for i in cell_stage if i in flows})
        #: name -> the cells (any, in order) whose import binds it
        self.imports = _cells_by_name({i: frozenset(n for n, d in flows[i].definitions.items()
                                                    if d.kind == "import") for i in flows})

    def provides(self, index: int) -> frozenset[str]:
        return self.layout.flows[index].provides | self.mutated_by_calls.get(index, frozenset())

    def import_names(self) -> set[str]:
        """Names bound by an import anywhere: modules are never data."""
        return set(self.imports)

    def import_for(self, name: str, before: int) -> int | None:
        """The cell whose import binds `name` for a reader at cell `before`.

        The last import before it, wherever it is (another stage, a cell in no
        stage); None if a later plain assignment rebinds the name (then it is data).
        Without one before, the first import after: `every stage that uses a
        module gets its import`, also when the notebook imports it further down.
        """
        cells = self.imports.get(name, [])
        earlier = cells[: bisect.bisect_left(cells, before)]
        if not earlier:
            return cells[0] if cells else None
        last = earlier[-1]
        for index in self.providers.get(name, []):
            flow = self.layout.flows[index]
            if last < index < before and name in flow.writes | flow.maybe_writes \
                    and name not in flow.definitions:
                return None
        return last

    def provider(self, name: str, before: int, consumer: str) -> tuple[str, Definition | None] | None:
        """The stage cell that last bound or mutated `name` before cell `before`."""
        cells = self.providers.get(name, [])
        for index in reversed(cells[: bisect.bisect_left(cells, before)]):
            stage = self.layout.cell_stage[index]
            if stage != consumer:
                return stage, self.layout.flows[index].definitions.get(name)
        return None

    def deleted_after_provider(self, name: str, before: int, consumer: str) -> int | None:
        """A cell of another stage that `del`s `name` after its last provider, before `before`."""
        deleters = self.deleters.get(name)
        if not deleters:
            return None
        cell_stage = self.layout.cell_stage
        providers = self.providers.get(name, [])
        last_provider = next((i for i in reversed(providers[: bisect.bisect_left(providers, before)])
                              if cell_stage[i] != consumer), -1)
        found = [i for i in deleters[: bisect.bisect_left(deleters, before)]
                 if i > last_provider and cell_stage[i] != consumer]
        return found[-1] if found else None
