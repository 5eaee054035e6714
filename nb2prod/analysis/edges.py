"""The DAG: edges from data (loaded names), files (a path one stage writes and a
later one reads) and `after:` tags, then the stages' topological positions."""

from __future__ import annotations

from nb2prod import dag, files
from nb2prod.analysis.layout import Layout
from nb2prod.analysis.model import Stage


def resolve_files(layout: Layout) -> dict[int, files.CellPaths]:
    """Path literals per stage cell; a file edge becomes the consumer's `file_inputs`."""
    by_index = {c.index: c for c in layout.nb.cells}
    paths = {i: files.cell_paths(by_index[i].source) for i in sorted(layout.cell_stage)}
    services = {s.name for s in layout.stages.values() if s.type == "service"}
    cells = [(layout.cell_stage[i], i, found) for i, found in paths.items()]
    for producer, consumer, path in files.plan(cells, services=services).edges:
        layout.stages[consumer].file_inputs.setdefault(path, producer)
    return paths


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
