"""The values a parameters cell gives its names, computed without running the cell.

The stage cache hashes the data a path parameter names (`DATA_DIR =
os.environ.get("DATA_DIR", "data")` with `DATA_DIR=/mnt/data`), so it needs the
parameter's value where the stage runs, before it runs: in a pod, from the pod's
environment; for `deploy`, from the Job's environment as the deploying machine
knows it.  Running the cell would need a kernel and `os.environ` swapped per
stage; but a cacheable stage's parameters are made only of literals,
environment reads by literal name, operators and the pure calls of the tables
below (`nb2prod.analysis.parameters` decides that, from these same tables), so
they can be evaluated here directly, against any environment mapping.  Whatever
is not evaluable (`datetime.now()`, a failing `int("x")`) gives `UNKNOWN`.
"""

from __future__ import annotations

import ast
import operator
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

#: Calls reading one environment variable by name: `os.environ.get("X"[, default])`.
ENV_CALLS = frozenset({"os.environ.get", "os.getenv", "environ.get", "getenv"})
#: Mappings of the environment read by subscript: `os.environ["X"]`.
ENV_MAPPINGS = frozenset({"os.environ", "environ"})
#: Calls whose result depends only on their arguments, by the name a cell calls them.
PURE_CALLS: Mapping[str, Callable[..., Any]] = {
    "os.path.join": os.path.join, "os.path.basename": os.path.basename,
    "os.path.dirname": os.path.dirname, "os.path.splitext": os.path.splitext,
    "os.path.normpath": os.path.normpath, "posixpath.join": os.path.join, "str": str,
    "int": int, "float": float, "bool": bool, "len": len, "min": min, "max": max, "abs": abs,
    "round": round, "tuple": tuple, "list": list, "dict": dict, "set": set,
    "frozenset": frozenset, "sorted": sorted, "Path": pathlib.Path,
    "pathlib.Path": pathlib.Path, "PurePath": pathlib.PurePath,
    "pathlib.PurePath": pathlib.PurePath, "PurePosixPath": pathlib.PurePosixPath,
    "pathlib.PurePosixPath": pathlib.PurePosixPath}
#: Methods that depend only on their receiver and arguments (str, and a Path's name parts).
PURE_METHODS = frozenset({
    "lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit", "replace", "format",
    "startswith", "endswith", "join", "title", "casefold", "removeprefix", "removesuffix",
    "partition", "zfill", "with_suffix", "with_name", "joinpath"})


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


#: The value of a name whose statement cannot be evaluated before the cell runs.
UNKNOWN: Any = _Unknown()

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
    ast.BitOr: operator.or_, ast.BitXor: operator.xor, ast.BitAnd: operator.and_,
    ast.MatMult: operator.matmul}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_,
    ast.Invert: operator.invert}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_,
    ast.IsNot: operator.is_not, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b}
_CONVERSIONS: dict[int, Callable[[Any], str]] = {-1: lambda v: v, 115: str, 114: repr,
                                                 97: ascii}


class _Unevaluable(Exception):
    """This expression's value is known only when the cell runs."""


def parameter_values(source: str, environ: Mapping[str, str | None]) -> dict[str, Any]:
    """{name: value} of every name the parameters cell `source` binds, with the
    environment `environ`; `UNKNOWN` for a value known only when the cell runs."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    values: dict[str, Any] = {}
    _run(tree.body, values, environ)
    return values


def _run(body: list[ast.stmt], values: dict[str, Any], environ: Mapping[str, str | None]
         ) -> None:
    for node in body:
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            if node.value is None:  # `x: int`, an annotation only
                continue
            value = _value(node.value, values, environ)
            if isinstance(node, ast.AugAssign):
                value = _value(ast.BinOp(node.target, node.op, node.value), values, environ) \
                    if isinstance(node.target, ast.Name) else UNKNOWN
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                _assign(target, value, values, environ)
        elif isinstance(node, ast.If):
            test = _value(node.test, values, environ)
            if test is UNKNOWN:
                _forget(node, values)
            else:
                _run(node.body if test else node.orelse, values, environ)
        elif isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue
        else:  # may bind or change any name it mentions
            _forget(node, values)


def _forget(node: ast.AST, values: dict[str, Any]) -> None:
    for name in {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}:
        if name in values or any(isinstance(n, ast.Name) and n.id == name
                                 and isinstance(n.ctx, ast.Store) for n in ast.walk(node)):
            values[name] = UNKNOWN


def _assign(target: ast.expr, value: Any, values: dict[str, Any],
            environ: Mapping[str, str | None]) -> None:
    if isinstance(target, ast.Name):
        values[target.id] = value
        return
    if isinstance(target, (ast.Tuple, ast.List)):
        try:
            items = list(value) if value is not UNKNOWN else None
        except TypeError:
            items = None
        starred = [i for i, t in enumerate(target.elts) if isinstance(t, ast.Starred)]
        if items is not None and not starred and len(items) != len(target.elts):
            items = None
        for i, element in enumerate(target.elts):
            if items is None or starred:  # `a, *rest = ...`: rare in a parameters cell
                _assign(element.value if isinstance(element, ast.Starred) else element,
                        UNKNOWN, values, environ)
            else:
                _assign(element, items[i], values, environ)
        return
    root = target
    while isinstance(root, (ast.Subscript, ast.Attribute, ast.Starred)):
        root = root.value
    if not isinstance(root, ast.Name):
        return
    if isinstance(target, ast.Subscript) and value is not UNKNOWN:  # `CFG["k"] = v`
        try:
            _eval(target.value, values, environ)[_eval(target.slice, values, environ)] = value
            return
        except Exception:  # noqa: BLE001, S110 - then the whole value is unknown
            pass
    values[root.id] = UNKNOWN


def _value(node: ast.expr, values: dict[str, Any], environ: Mapping[str, str | None]) -> Any:
    try:
        return _eval(node, values, environ)
    except Exception:  # noqa: BLE001 - _Unevaluable, or what the cell itself would raise
        return UNKNOWN


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _eval(node: ast.AST, values: dict[str, Any], environ: Mapping[str, str | None]) -> Any:
    def ev(child: ast.AST) -> Any:
        return _eval(child, values, environ)

    def items(nodes: list[ast.expr]) -> list[Any]:
        out: list[Any] = []
        for n in nodes:
            out.extend(ev(n.value) if isinstance(n, ast.Starred) else [ev(n)])
        return out

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        value = values.get(node.id, UNKNOWN)
        if value is UNKNOWN:
            raise _Unevaluable(node.id)
        return value
    if isinstance(node, ast.Call):
        return _call(node, ev, items, environ)
    if isinstance(node, ast.Subscript):
        if _dotted(node.value) in ENV_MAPPINGS:
            return _variable(environ, ev(node.slice), required=True)
        return ev(node.value)[ev(node.slice)]
    if isinstance(node, ast.Slice):
        return slice(*(None if n is None else ev(n) for n in (node.lower, node.upper, node.step)))
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        kind = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)]
        return kind(items(node.elts))
    if isinstance(node, ast.Dict):
        out: dict[Any, Any] = {}
        for key, val in zip(node.keys, node.values):
            out.update(ev(val) if key is None else {ev(key): ev(val)})
        return out
    if isinstance(node, ast.JoinedStr):
        return "".join(str(ev(part)) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        shown = _CONVERSIONS[node.conversion](ev(node.value))
        return format(shown, ev(node.format_spec) if node.format_spec else "")
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](ev(node.left), ev(node.right))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](ev(node.operand))
    if isinstance(node, ast.BoolOp):
        result: Any = None
        for operand in node.values:
            result = ev(operand)
            if bool(result) == isinstance(node.op, ast.Or):
                break
        return result
    if isinstance(node, ast.Compare):
        left = ev(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = ev(right_node)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return ev(node.body) if ev(node.test) else ev(node.orelse)
    raise _Unevaluable(type(node).__name__)


def _variable(environ: Mapping[str, str | None], name: Any, required: bool,
              default: Any = None) -> Any:
    if not isinstance(name, str):
        raise _Unevaluable("variable")
    if name in environ and environ[name] is None:  # set, to a value not known here
        raise _Unevaluable(name)
    if name not in environ and required:
        raise _Unevaluable(name)  # KeyError when the cell runs
    return environ.get(name, default)


def _call(node: ast.Call, ev: Callable[[ast.AST], Any],
          items: Callable[[list[ast.expr]], list[Any]],
          environ: Mapping[str, str | None]) -> Any:
    called = _dotted(node.func)
    args = items(node.args)
    kwargs: dict[str, Any] = {}
    for keyword in node.keywords:
        kwargs.update(ev(keyword.value) if keyword.arg is None else {keyword.arg: ev(keyword.value)})
    if called in ENV_CALLS:
        name = args[0] if args else kwargs.get("key")
        default = args[1] if len(args) > 1 else kwargs.get("default")
        return _variable(environ, name, required=False, default=default)
    if called in PURE_CALLS:
        return PURE_CALLS[called](*args, **kwargs)
    if isinstance(node.func, ast.Attribute) and node.func.attr in PURE_METHODS:
        return getattr(ev(node.func.value), node.func.attr)(*args, **kwargs)
    raise _Unevaluable(called or "call")
