"""The stage DAG: Bodywork's `a >> b,c >> d` syntax, topological order, cycles.

Kept apart from the analysis because the runners read the DAG back from
`nb2prod.ini` (which a user may edit) without re-analysing the notebook.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

Edge = tuple[str, str]


class CycleError(ValueError):
    """The DAG has a cycle; `cycle` lists it with the first stage repeated at the end."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__("cycle in stage DAG: " + " >> ".join(cycle))
        self.cycle = cycle


def parse_dag(text: str) -> tuple[list[str], list[Edge]]:
    """Parse `a >> b,c >> d` chains, one per line or ';'-separated; return stages and edges."""
    stages: list[str] = []
    edges: list[Edge] = []
    for chain in text.replace(";", "\n").splitlines():
        chain = chain.split("#")[0].strip()
        if not chain:
            continue
        steps = [[s.strip() for s in step.split(",") if s.strip()] for step in chain.split(">>")]
        if any(not step for step in steps):
            raise ValueError(f"empty step in DAG chain '{chain}'")
        for step in steps:
            for stage in step:
                if stage not in stages:
                    stages.append(stage)
        for left, right in itertools.pairwise(steps):
            for a in left:
                for b in right:
                    if (a, b) not in edges:
                        edges.append((a, b))
    return stages, edges


def format_dag(stages: list[str], edges: Iterable[Edge]) -> str:
    """One `a >> b` line per edge (general DAGs), plus lone stages; deterministic."""
    edges = sorted(set(edges), key=lambda e: (stages.index(e[0]), stages.index(e[1])))
    lines = [f"{a} >> {b}" for a, b in edges]
    linked = {s for e in edges for s in e}
    lines += [s for s in stages if s not in linked]
    return "\n".join(lines)


def topological_order(stages: list[str], edges: Iterable[Edge]) -> list[str]:
    """Stages in an order respecting edges, ties broken by the given order; CycleError if none."""
    edges = list(edges)
    preds: dict[str, set[str]] = {s: set() for s in stages}
    for a, b in edges:
        preds.setdefault(b, set()).add(a)
        preds.setdefault(a, set())
    order: list[str] = []
    remaining = list(preds)
    while remaining:
        ready = [s for s in remaining if not preds[s] - set(order)]
        if not ready:
            raise CycleError(find_cycle(remaining, edges))
        order.append(ready[0])
        remaining.remove(ready[0])
    return order


def find_cycle(stages: list[str], edges: list[Edge]) -> list[str]:
    """One cycle among `stages`, each of which has a predecessor among them, e.g. ['a', 'b', 'a']."""
    preds = {s: [a for a, b in edges if b == s and a in stages] for s in stages}
    path = [stages[0]]
    while preds[path[-1]] and path.count(path[-1]) < 2:
        path.append(preds[path[-1]][0])
    cycle = path[path.index(path[-1]):]
    return list(reversed(cycle))


def ancestors(stage: str, edges: Iterable[Edge]) -> set[str]:
    """Every stage `stage` transitively depends on."""
    edges = list(edges)
    found: set[str] = set()
    todo = [stage]
    while todo:
        node = todo.pop()
        for a, b in edges:
            if b == node and a not in found:
                found.add(a)
                todo.append(a)
    return found


def descendants(stage: str, edges: Iterable[Edge]) -> set[str]:
    """Every stage that transitively depends on `stage`."""
    return ancestors(stage, [(b, a) for a, b in edges])
