"""Which stage records each name a `metrics` cell shows.

A metric is recorded by the stage that provides its value (the metrics cell's
own stage, else the earlier stage cell that bound it); parameters (Kale prints
them in its `pipeline-metrics` cell) by the metrics cell's stage.  Which names
a cell shows at all is `nb2prod.metric_names`'s question.
"""

from __future__ import annotations

from nb2prod.analysis.layout import Layout
from nb2prod.analysis.providers import Providers
from nb2prod.dataflow import BUILTIN_NAMES, python_source
from nb2prod.metric_names import metric_names


def resolve_metrics(layout: Layout, providers: Providers) -> None:
    """Fill in `Stage.metrics` from the notebook's metrics cells."""
    flows = layout.flows
    parameters = {n for i in layout.prelude["parameters"] if i in flows
                  for n in flows[i].writes | flows[i].maybe_writes}
    modules = providers.import_names()
    sources = [python_source(c.source) for c in layout.nb.cells if c.cell_type == "code"]
    not_data = {name for flow in flows.values() for name in flow.definitions}
    for index in layout.metrics_cells:
        if index not in flows:
            continue
        source = python_source(layout.nb.cells[index].source)
        for name in metric_names(source, sources, not_data):
            if name in BUILTIN_NAMES or name in modules:
                continue
            owner = layout.cell_stage[index] if name in providers.provides(index) else None
            if owner is None:
                found = providers.provider(name, index, consumer="")
                owner = found[0] if found and found[1] is None else None
            if owner is None and name in parameters:
                owner = layout.cell_stage[index]
            if owner and name not in layout.stages[owner].metrics:
                layout.stages[owner].metrics.append(name)
