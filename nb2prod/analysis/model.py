"""What the analysis produces: `Stage` and `Analysis` (the renderer's input).

Kept apart from the code that computes them so the renderer, the split
record, the graph and the JupyterLab panel depend on these types only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nb2prod import dag, files
from nb2prod.dataflow import CellFlow, Definition
from nb2prod.errors import Problem
from nb2prod.notebook import Notebook

PRELUDE_ROLES = ("parameters", "imports", "functions")

#: (stage, cell index, the cell's path literals): what `files.plan` reads
StageCell = tuple[str, int, files.CellPaths]
#: Why an untagged cell before the first stage that only imports is in no stage.
IMPORTS_ONLY = "imports only: each stage gets the ones it uses"


@dataclass
class Stage:
    """One stage: its cells, data in and out, DAG edges and runtime hints."""

    name: str
    type: str  # "batch" | "service"
    cells: list[int] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # name -> providing stage
    outputs: list[str] = field(default_factory=list)
    copied: dict[str, Definition] = field(default_factory=dict)  # imports/defs from other stages
    #: the copied imports the parameters/imports/functions cells need (a decorator, a
    #: default value): they run before those cells
    before_prelude: set[str] = field(default_factory=set)
    #: the copied imports the parameters cell reads (`os` for `os.environ.get(...)`):
    #: they run before it, since a stage notebook starts with its parameters cell
    before_parameters: set[str] = field(default_factory=set)
    pruned: dict[int, str] = field(default_factory=dict)  # imports cell -> source minus unused
    file_inputs: dict[str, str] = field(default_factory=dict)  # path literal -> writing stage
    metrics: list[str] = field(default_factory=list)
    hints: dict[str, str] = field(default_factory=dict)
    secrets: list[tuple[str, str, str]] = field(default_factory=list)
    position: int = 0  # 1-based, in topological order

    @property
    def directory(self) -> str:
        return f"stage-{self.position}-{self.name}"


@dataclass
class Analysis:
    """Everything split needs to render a pipeline."""

    notebook: Notebook
    stages: list[Stage]
    edges: list[dag.Edge]
    prelude: dict[str, list[int]]  # role -> cell indices
    flows: dict[int, CellFlow]
    warnings: list[Problem]
    paths: dict[int, files.CellPaths] = field(default_factory=dict)  # stage cell -> literals
    unassigned: dict[int, str] = field(default_factory=dict)  # cell -> why it runs in no stage
    #: the parameters cell's path literals, per stage reading the parameter
    parameter_paths: list[StageCell] = field(default_factory=list)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def file_cells(self) -> list[StageCell]:
        owner = {i: s.name for s in self.stages for i in s.cells}
        return file_cells(owner, self.paths, self.parameter_paths)


def file_cells(owner: dict[int, str], paths: dict[int, files.CellPaths],
               parameters: list[StageCell]) -> list[StageCell]:
    """(stage, cell, literals) in notebook order, what `files.plan` reads: the stage
    cells', and the parameters cell's for the stages that read the parameter."""
    cells = [(owner[i], i, found) for i, found in paths.items() if i in owner]
    return sorted(cells + parameters, key=lambda cell: cell[1])
