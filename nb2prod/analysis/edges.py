"""The DAG: edges from data (loaded names), files (a path one stage writes and a
later one reads) and `after:` tags, then the stages' topological positions; and
which stage each path literal belongs to (a stage cell's, or the parameters
cell's for the stages reading the parameter)."""

from __future__ import annotations

import ast

from nb2prod import dag, files
from nb2prod.analysis.layout import Layout
from nb2prod.analysis.model import Stage, StageCell, file_cells
from nb2prod.dataflow import Definition, names_used, python_source
from nb2prod.dataflow.names import stored_names


def resolve_files(layout: Layout) -> tuple[dict[int, files.CellPaths], list[StageCell]]:
    """Path literals per stage cell, and those of the parameters cell per stage reading
    them; a file edge becomes the consumer's `file_inputs`."""
    by_index = {c.index: c for c in layout.nb.cells}
    paths = {i: files.cell_paths(by_index[i].source) for i in sorted(layout.cell_stage)}
    parameters = parameter_paths(layout)
    services = {s.name for s in layout.stages.values() if s.type == "service"}
    cells = file_cells(layout.cell_stage, paths, parameters)
    for producer, consumer, path in files.plan(cells, services=services).edges:
        layout.stages[consumer].file_inputs.setdefault(path, producer)
    return paths, parameters


def parameter_paths(layout: Layout) -> list[StageCell]:
    """`DATA_DIR = os.environ.get("DATA_DIR", "data")` or `TRAIN_CSV = "data/train.csv"`:
    a path literal of the parameters cell is an input of the stages that read the name
    it is assigned to (their cells, or the prelude functions they call).  Every stage
    runs the parameters cell, but only those open the file."""
    found: list[StageCell] = []
    functions = {n: d for i in layout.prelude_cells() if i in layout.flows
                 for n, d in layout.flows[i].definitions.items() if d.kind != "import"}
    readers = {stage.name: _names_read(layout, stage, functions)
               for stage in layout.stages.values()}
    for index in layout.prelude["parameters"]:
        try:
            code = python_source(layout.nb.cells[index].source)
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for stmt in tree.body:
            paths = files.cell_paths(ast.get_source_segment(code, stmt) or "")
            assigned = stored_names(stmt)
            if not paths.literals or not assigned:
                continue
            found += [(name, index, paths) for name, names in readers.items()
                      if names & assigned]
    return found


def _names_read(layout: Layout, stage: Stage, functions: dict[str, Definition]) -> set[str]:
    names = set().union(*(names_used(layout.flows[i]) for i in stage.cells))
    for definition in [*stage.copied.values(), *(functions[n] for n in names & set(functions))]:
        names |= definition.free_reads | definition.method_reads
    return names


def build_dag(layout: Layout) -> list[dag.Edge]:
    """The edges between stages; sets `Stage.position` (problems: unknown `after:`
    stages, a batch stage after a service, a cycle)."""
    stages = layout.stages
    edges: list[dag.Edge] = []

    def edge(a: str, b: str) -> None:
        if a != b and (a, b) not in edges:
            edges.append((a, b))

    for stage in stages.values():
        for producer in [*stage.inputs.values(), *stage.file_inputs.values()]:
            edge(producer, stage.name)
        for before in stage.after:
            if before not in stages:
                layout.problem(f"after:{before}: no stage named '{before}'",
                               _tag_cell(layout, stage, before))
                continue
            edge(before, stage.name)
    for a, b in edges:
        if stages[a].type == "service" and stages[b].type == "batch":
            layout.problem(f"batch stage '{b}' cannot run after service stage '{a}'",
                           stages[b].cells[0])
    try:
        order = dag.topological_order(list(stages), edges)
    except dag.CycleError as exc:
        layout.problem(str(exc), stages[exc.cycle[0]].cells[0])
        return edges
    for position, name in enumerate(order, start=1):
        stages[name].position = position
    return edges


def _tag_cell(layout: Layout, stage: Stage, after: str) -> int:
    """The cell whose `after:` tag names `after` (for the problem's location)."""
    for index in stage.cells:
        if after in layout.tags[index].after:
            return index
    return stage.cells[0]
