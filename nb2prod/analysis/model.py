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

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)
