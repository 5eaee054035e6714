"""Which cell belongs where: tags and data flow per cell, cells -> stages.

Rules (DESIGN.md "Cell tags"): untagged code cells join the stage of the
nearest tagged cell above; after an imports/functions/parameters cell, only
while they do no work (`CellFlow.declarative`: imports, def/class, literal
constants), so each cell's data flow is computed first; exploration above the
first stage runs in no stage.  `Layout` is the state every later step reads,
and collects the problems (all of them: a user fixing tags wants them at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nb2prod.analysis.model import IMPORTS_ONLY, PRELUDE_ROLES, Stage
from nb2prod.dataflow import CellFlow, CellSyntaxError, Definition, analyze_cell
from nb2prod.errors import Problem
from nb2prod.notebook import Notebook
from nb2prod.tags import NO_CACHE_TAG, CellTags, parse_tags


@dataclass
class Layout:
    """The notebook's cells sorted into stages, the prelude and no stage."""

    nb: Notebook
    tags: dict[int, CellTags] = field(default_factory=dict)
    flows: dict[int, CellFlow] = field(default_factory=dict)
    syntax_errors: dict[int, CellSyntaxError] = field(default_factory=dict)
    stages: dict[str, Stage] = field(default_factory=dict)
    cell_stage: dict[int, str] = field(default_factory=dict)
    prelude: dict[str, list[int]] = field(
        default_factory=lambda: {role: [] for role in PRELUDE_ROLES})  # role -> cells
    orphans: list[int] = field(default_factory=list)  # code cells before the first stage tag
    skipped: list[int] = field(default_factory=list)
    metrics_cells: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def file(self) -> str:
        return self.nb.path.name

    def problem(self, message: str, cell: int | None = None) -> None:
        self.problems.append(self._located(message, cell))

    def warn(self, message: str, cell: int) -> None:
        self.warnings.append(self._located(message, cell))

    def _located(self, message: str, cell: int | None) -> Problem:
        return Problem(message, cell=cell, file=self.file,
                       cell_line=None if cell is None else self.nb.first_line(cell))

    def prelude_cells(self) -> set[int]:
        return {i for cells in self.prelude.values() for i in cells}

    def prelude_names(self) -> tuple[set[str], dict[str, Definition]]:
        """Names the prelude cells bind, and the defs/classes among them."""
        names: set[str] = set()
        functions: dict[str, Definition] = {}
        for role in PRELUDE_ROLES:
            for index in self.prelude[role]:
                flow = self.flows.get(index)
                if flow:
                    names |= flow.writes | flow.maybe_writes
                    functions.update({k: d for k, d in flow.definitions.items() if d.kind != "import"})
        return names, functions


def lay_out(nb: Notebook) -> Layout:
    """Per-cell tags and data flow, then every code cell's place, then the checks that
    matter only for cells that run in a stage."""
    layout = Layout(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        layout.tags[cell.index] = parse_tags(list(cell.tags))
        try:
            layout.flows[cell.index] = analyze_cell(cell.source)
        except CellSyntaxError as exc:
            layout.syntax_errors[cell.index] = exc
    _assign_cells(layout)
    _check_flows(layout)
    return layout


def _assign_cells(layout: Layout) -> None:
    code = [c for c in layout.nb.cells if c.cell_type == "code"]
    if not code:
        layout.problem("the notebook has no code cells")
        return
    current: str | None = None
    block: str | None = None  # untagged cells after a prelude cell join it while idle
    typos = False
    for cell in code:
        tags = layout.tags[cell.index]
        for message in tags.errors:
            layout.problem(message, cell.index)
        if current is None and tags.stage_typos and not tags.stage:
            typos = True  # the typo is why there is no stage here: say so on this cell
            for message in tags.stage_typos:
                layout.problem(message, cell.index)
        for message in tags.warnings:
            if current is not None or message not in tags.stage_typos or tags.stage:
                layout.warn(message, cell.index)
        if tags.role and tags.stage:
            layout.problem(f"a '{tags.role}' cell cannot also start stage '{tags.stage}'",
                           cell.index)
            continue
        if tags.role == "skip":
            layout.skipped.append(cell.index)
            continue
        if tags.role in PRELUDE_ROLES:
            layout.prelude[tags.role].append(cell.index)
            block = tags.role
            continue
        if tags.stage or tags.after or tags.hints or tags.secrets or tags.metrics:
            block = None
        elif block is not None:
            flow = layout.flows.get(cell.index)
            if flow is not None and flow.declarative:
                layout.prelude[block].append(cell.index)
                continue
            block = None  # the first cell doing real work ends the block
        if tags.stage:
            current = tags.stage
            existing = layout.stages.get(current)
            if existing is None:
                layout.stages[current] = Stage(current, tags.stage_type or "batch")
            elif existing.type != tags.stage_type:
                layout.problem(f"stage '{current}' is tagged both batch and service", cell.index)
        if current is None:
            if tags.after or tags.hints or tags.secrets or tags.metrics:
                layout.problem("this cell has stage tags but belongs to no stage; "
                               "tag it (or a cell above) with stage:NAME", cell.index)
            layout.orphans.append(cell.index)
            continue
        stage = layout.stages[current]
        stage.cells.append(cell.index)
        layout.cell_stage[cell.index] = current
        stage.after += [a for a in tags.after if a not in stage.after]
        stage.hints.update(tags.hints)
        if stage.type == "service" and "CACHE" in tags.hints:
            layout.warn(f"tag '{NO_CACHE_TAG}' has no effect on service stage '{current}': "
                        "only batch stages are cached (a service always starts from its run)",
                        cell.index)
        stage.secrets += tags.secrets
        if tags.metrics:
            layout.metrics_cells.append(cell.index)
    if not layout.stages and not typos:
        layout.problem("no stage tags: tag the first cell of each stage with "
                       "'stage:NAME', 'train' or 'serve'")


def _check_flows(layout: Layout) -> None:
    """Syntax errors and star imports matter only in cells that run in a stage."""
    for index in sorted(set(layout.cell_stage) | layout.prelude_cells()):
        if index in layout.syntax_errors:
            layout.problem(str(layout.syntax_errors[index]), index)
        flow = layout.flows.get(index)
        if flow is not None and flow.star_import is not None:
            layout.problem(f"star import (line {flow.star_import}) hides which names are "
                           "used; import the names explicitly", index)


def unassigned(layout: Layout) -> dict[int, str]:
    """The cells that run in no stage (with a source), and why: for the user and the panel."""
    sources = {c.index: c.source for c in layout.nb.cells}
    found = {i: IMPORTS_ONLY if _imports_only(layout.flows.get(i)) else "before the first stage tag"
             for i in layout.orphans}
    found.update({i: "tagged skip" for i in layout.skipped})
    return {i: why for i, why in sorted(found.items()) if sources[i].strip()}


def _imports_only(flow: CellFlow | None) -> bool:
    return bool(flow and flow.declarative and flow.definitions
                and all(d.kind == "import" for d in flow.definitions.values())
                and flow.writes | flow.maybe_writes <= set(flow.definitions))
