"""Per-stage pruning of `imports` cells (DESIGN.md): a stage leaves out the imports
whose names it never uses, so its requirements and start-up hold only what it needs.

A name no cell uses at all was imported for its side effects (a plugin that
registers itself): kept everywhere; so is a name the prelude itself uses, and
an optional import (the user wrote a fallback for it).
"""

from __future__ import annotations

from nb2prod.analysis.layout import Layout
from nb2prod.analysis.model import PRELUDE_ROLES
from nb2prod.dataflow import names_used, without_imports


def prune_imports(layout: Layout) -> None:
    """Fill in `Stage.pruned`: imports cell -> its source minus the stage's unused imports."""
    flows = layout.flows
    cells = [i for i in layout.prelude["imports"] if i in flows]
    bound = {n for i in cells for n, d in flows[i].definitions.items()
             if d.kind == "import" and not d.optional}
    if not bound:
        return
    used = {i: names_used(flow) for i, flow in flows.items()}
    everywhere = set().union(*(used[i] for role in PRELUDE_ROLES for i in layout.prelude[role]
                               if i in used))
    anywhere = set().union(*used.values())
    candidates = (bound & anywhere) - everywhere
    sources = {c.index: c.source for c in layout.nb.cells}
    for stage in layout.stages.values():
        mine = set().union(*(used[i] for i in stage.cells))
        for definition in stage.copied.values():
            mine |= definition.free_reads | definition.method_reads
        unused = candidates - mine
        for index in cells if unused else ():
            pruned = without_imports(sources[index], unused)
            if pruned is not None:
                stage.pruned[index] = pruned
