"""Checks of the stages as a whole: a service defines its entrypoint; a stage's
name does not shadow a module its own script would hide; the parameters cell
reads only what exists when it runs."""

from __future__ import annotations

from nb2prod.analysis.inputs import parameter_imports
from nb2prod.analysis.layout import Layout
from nb2prod.analysis.providers import Providers
from nb2prod.dataflow import BUILTIN_NAMES


def check_services(layout: Layout, entrypoint: str) -> None:
    """A service stage must define the function the server calls."""
    prelude, _ = layout.prelude_names()
    for stage in layout.stages.values():
        if stage.type != "service":
            continue
        defined = set(stage.copied) | prelude
        for index in stage.cells:
            defined |= layout.flows[index].writes | layout.flows[index].maybe_writes
        if entrypoint not in defined:
            layout.problem(f"service stage '{stage.name}' must define "
                           f"{entrypoint}(payload)", stage.cells[0])


def check_stage_names(layout: Layout) -> None:
    """A stage's script `<name>.py` sits on its import path, so in `stage:xgboost` an
    `import xgboost` imports the script (standard-library names are a tag error,
    nb2prod.tags): warn on the cell that names the stage.  A path lookup per name,
    no import and no scan of every installed distribution's metadata."""
    from importlib.machinery import PathFinder

    for stage in layout.stages.values():
        name = stage.name
        if name.isidentifier() and PathFinder.find_spec(name) is not None:
            layout.warn(f"stage '{name}': its script {name}.py would be imported instead of "
                        f"Python's '{name}' module inside the stage; rename the stage "
                        f"(e.g. '{name}_stage')", stage.cells[0])


def check_parameters(layout: Layout, providers: Providers) -> None:
    """A stage notebook runs its parameters cell first: a name it reads must be bound by
    an earlier parameters cell or be a module (copied before it), else every stage
    would fail there with a NameError (`DATA_DIR = default_dir()` with `default_dir`
    in the functions cell)."""
    imported = set(parameter_imports(layout, providers, providers.import_names()))
    bound: set[str] = set()
    for index in layout.prelude["parameters"]:
        flow = layout.flows.get(index)
        if flow is None:
            continue
        for name in sorted(flow.reads - bound - imported - BUILTIN_NAMES):
            layout.problem(f"the parameters cell reads '{name}', which is neither a parameter "
                           "nor an import: every stage runs its parameters cell first; move "
                           f"the code that needs '{name}' to a later cell", index)
        bound |= flow.writes | flow.maybe_writes
