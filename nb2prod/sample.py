"""A request the service can answer, for `nb2prod run`'s curl hint and `--smoke`.

Two sources, in this order:

1. a literal call of the entrypoint in the notebook, `predict({"instances": [[...]]})`:
   the user's own example, copied into config.ini as `[service] SAMPLE_REQUEST`;
2. the first rows of the data the model was fitted on: split finds `model.fit(X, ...)`
   (the first argument of a `fit` call, preferring a model `predict` uses) and how
   `predict` reads its payload (`payload["instances"]`, `payload.get("rows")`, or the
   payload itself; records when it builds a DataFrame).  The fitting stage then records
   `sample_request.json` with its run (`nb2prod_runtime.record_sample`), so the sample
   has the real shape and types, and the runner reads it from the run it serves.

Pure: the analysis in, a description out; nothing here runs the notebook.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass

from nb2prod.analysis import Analysis

#: Methods whose first argument is the data a model learns from.
FIT_METHODS = frozenset({"fit", "partial_fit", "fit_transform", "fit_predict"})


@dataclass(frozen=True)
class FittedSample:
    """Where the sample comes from: `variable` of batch stage `stage`, shaped for predict."""

    stage: str
    variable: str
    key: str | None  # payload[key] holds the rows; None: the payload is the rows
    records: bool  # rows as {column: value} dicts (predict builds a DataFrame)


def _parse(source: str) -> ast.Module | None:
    from nb2prod.dataflow.source import python_source

    try:
        return ast.parse(python_source(source))
    except SyntaxError:
        return None


def literal_request(analysis: Analysis, entrypoint: str) -> str:
    """JSON of a literal payload the notebook passes to the entrypoint, or ''."""
    for cell in analysis.notebook.cells:
        if cell.cell_type != "code" or entrypoint not in cell.source:
            continue
        tree = _parse(cell.source)
        for node in ast.walk(tree) if tree else ():
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == entrypoint and len(node.args) == 1):
                try:
                    return json.dumps(ast.literal_eval(node.args[0]))
                except (ValueError, TypeError, SyntaxError, RecursionError):
                    continue
    return ""


def _entrypoint(analysis: Analysis, entrypoint: str) -> ast.FunctionDef | None:
    for stage in analysis.stages:
        if stage.type != "service":
            continue
        for index in stage.cells:
            tree = _parse(analysis.notebook.cells[index].source)
            for node in tree.body if tree else ():
                if isinstance(node, ast.FunctionDef) and node.name == entrypoint:
                    return node
    return None


def payload_shape(function: ast.FunctionDef) -> tuple[str | None, bool]:
    """(key, records): how `function` reads its payload argument."""
    args = function.args.posonlyargs + function.args.args
    if not args:
        return None, False
    payload = args[0].arg
    key = None
    for node in ast.walk(function):
        target = None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id == payload:
            target = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "get" and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == payload and node.args:
            target = node.args[0]
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            key = target.value
            break
    records = any(isinstance(n, (ast.Name, ast.Attribute)) and
                  (getattr(n, "id", None) or getattr(n, "attr", None)) == "DataFrame"
                  for n in ast.walk(function))
    return key, records


def fitted_sample(analysis: Analysis, entrypoint: str) -> FittedSample | None:
    """The data a model was fitted on, as `predict` wants it; None when nothing fits."""
    function = _entrypoint(analysis, entrypoint)
    if function is None:
        return None
    used = {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
    candidates: list[tuple[bool, str, str]] = []  # (model used by predict, stage, variable)
    for stage in analysis.stages:
        if stage.type != "batch":
            continue
        for index in stage.cells:
            tree = _parse(analysis.notebook.cells[index].source)
            for node in ast.walk(tree) if tree else ():
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in FIT_METHODS and node.args \
                        and isinstance(node.args[0], ast.Name):
                    receiver = node.func.value
                    direct = isinstance(receiver, ast.Name) and receiver.id in used
                    candidates.append((direct, stage.name, node.args[0].id))
    if not candidates:
        return None
    _, stage, variable = next((c for c in candidates if c[0]), candidates[0])
    key, records = payload_shape(function)
    return FittedSample(stage, variable, key, records)
