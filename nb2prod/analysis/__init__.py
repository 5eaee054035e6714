"""From a tagged notebook to stages, their inputs and outputs, and the DAG.

Pure: takes a loaded `Notebook`, returns an `Analysis` or raises `UserError`
listing *every* problem found (a user fixing tags wants them all at once).
The steps, one module each, in the order they run: `layout` (which cell
belongs where), `providers` (who provides a name to a reader), `inputs`
(inputs, outputs, copied imports and definitions), `edges` (file edges, the
DAG), `metrics`, `pruning` (each stage's imports cells), `checks`.  The
rules are DESIGN.md's "Cell tags" and "Data between stages"; each module's
docstring says the part it implements.
"""

from __future__ import annotations

from nb2prod import dag, files
from nb2prod.analysis.checks import check_parameters, check_services, check_stage_names
from nb2prod.analysis.edges import build_dag, resolve_files
from nb2prod.analysis.inputs import resolve_inputs
from nb2prod.analysis.layout import lay_out, unassigned
from nb2prod.analysis.metrics import resolve_metrics
from nb2prod.analysis.model import IMPORTS_ONLY, PRELUDE_ROLES, Analysis, Stage, StageCell
from nb2prod.analysis.providers import Providers
from nb2prod.analysis.pruning import prune_imports
from nb2prod.dataflow import TOO_DEEP
from nb2prod.errors import Problem, UserError
from nb2prod.notebook import Notebook

__all__ = ["IMPORTS_ONLY", "PRELUDE_ROLES", "Analysis", "Stage", "analyze"]


def analyze(notebook: Notebook, entrypoint: str = "predict") -> Analysis:
    """Analyse a notebook; raise `UserError` with every problem if it cannot be split."""
    try:
        return _analyze(notebook, entrypoint)
    except RecursionError:  # a cell's own walk says which cell; this is the backstop
        raise UserError(Problem(TOO_DEEP, file=notebook.path.name)) from None


def _analyze(notebook: Notebook, entrypoint: str) -> Analysis:
    layout = lay_out(notebook)
    paths: dict[int, files.CellPaths] = {}
    parameter_paths: list[StageCell] = []
    edges: list[dag.Edge] = []
    if not layout.problems:
        providers = Providers(layout)
        resolve_inputs(layout, providers, entrypoint)
        paths, parameter_paths = resolve_files(layout)
        resolve_metrics(layout, providers)
        prune_imports(layout)
        check_parameters(layout, providers)
        check_services(layout, entrypoint)
        check_stage_names(layout)
        edges = build_dag(layout)
    if layout.problems:
        raise UserError(layout.problems)
    stages = sorted(layout.stages.values(), key=lambda s: s.position)
    return Analysis(notebook, stages, edges, layout.prelude, layout.flows, layout.warnings,
                    paths, unassigned(layout), parameter_paths)
