"""Which names a `metrics` cell records: the ones it shows, not the ones it computes with.

A metrics cell such as ``accuracy = model.score(X_test, y_test)`` mentions four names, but
only ``accuracy`` is a metric: ``model``, ``X_test`` and ``y_test`` are only passed to a
call.  So a name is a candidate when the cell assigns it, prints it (also inside an
f-string) or leaves it bare as an expression, and it is dropped when every assignment of it
in the notebook is plainly not a number (a string, a container, an object built by a class,
the element of a dict with string keys...).  Types are only known at run time, where the
stage records just the values that are numbers; this keeps config.ini's METRICS honest.
Pure: sources in, names out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

#: Calls whose result is never a number.
NON_NUMERIC_CALLS = frozenset({"str", "repr", "list", "dict", "set", "tuple", "sorted",
                               "frozenset", "bytes", "format"})
#: Expression types whose value is never a number.
NON_NUMERIC_NODES = (ast.JoinedStr, ast.List, ast.Dict, ast.Set, ast.Tuple, ast.ListComp,
                     ast.DictComp, ast.SetComp, ast.GeneratorExp, ast.Lambda)


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def shown_names(source: str) -> list[str]:
    """Names the cell assigns at top level, prints or leaves bare, in order of appearance."""
    tree = _parse(source)
    if tree is None:
        return []
    found: list[str] = []

    def add(node: ast.expr) -> None:
        if isinstance(node, ast.Name) and node.id not in found:
            found.append(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                add(element)
        elif isinstance(node, ast.JoinedStr):
            for value in node.values:
                if isinstance(value, ast.FormattedValue):
                    add(value.value)

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                add(target)
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            add(stmt.target)
        elif isinstance(stmt, ast.Expr):
            value = stmt.value
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) \
                    and value.func.id in ("print", "display"):
                for arg in value.args:
                    add(arg)
            else:
                add(value)
    return found


def _assignments(sources: Iterable[str]) -> dict[str, list[ast.expr]]:
    """Every simple `name = value` in the notebook, by name (tuple unpacking is skipped)."""
    values: dict[str, list[ast.expr]] = {}
    for source in sources:
        tree = _parse(source)
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                values.setdefault(node.targets[0].id, []).append(node.value)
    return values


def _not_a_number(value: ast.expr, assigned: dict[str, list[ast.expr]], depth: int = 0) -> bool:
    """True when `value` can be seen to be something other than a number."""
    if depth > 5:
        return False
    if isinstance(value, ast.Constant):
        return isinstance(value.value, (str, bytes)) or value.value is None
    if isinstance(value, NON_NUMERIC_NODES):
        return True
    if isinstance(value, ast.IfExp):
        return _not_a_number(value.body, assigned, depth + 1) and \
            _not_a_number(value.orelse, assigned, depth + 1)
    if isinstance(value, ast.Name):
        return _never_a_number(value.id, assigned, depth + 1)
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
        func = value.func.id
        if func in NON_NUMERIC_CALLS or func[:1].isupper():  # a class builds an object
            return True
        if func in ("max", "min") and len(value.args) == 1:
            # max(d, key=...) over a dict with string keys: a key, i.e. a string.
            return _string_keyed(value.args[0], assigned, depth + 1)
    return False


def _string_keyed(value: ast.expr, assigned: dict[str, list[ast.expr]], depth: int) -> bool:
    if isinstance(value, ast.Name):
        return bool(assigned.get(value.id)) and all(
            _string_keyed(v, assigned, depth + 1) for v in assigned[value.id])
    return isinstance(value, ast.Dict) and bool(value.keys) and all(
        isinstance(k, ast.Constant) and isinstance(k.value, str) for k in value.keys)


def _never_a_number(name: str, assigned: dict[str, list[ast.expr]], depth: int = 0) -> bool:
    values = assigned.get(name)
    return bool(values) and all(_not_a_number(v, assigned, depth) for v in values)


def metric_names(cell_source: str, notebook_sources: Iterable[str],
                 not_data: Iterable[str] = ()) -> list[str]:
    """The names of one metrics cell that may hold numbers (see the module docstring).

    `not_data`: names bound by imports, `def` or `class`, never metrics.
    """
    assigned = _assignments(notebook_sources)
    excluded = set(not_data)
    return [name for name in shown_names(cell_source)
            if name not in excluded and not _never_a_number(name, assigned)]
