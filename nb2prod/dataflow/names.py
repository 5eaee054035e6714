"""Small questions about names in an AST: which object a mutation reaches, what a
statement binds or loads, what a `def`/`class` statement itself evaluates.

Shared by the module-level walk (`walker`) and the function-body walk
(`scope`), which must answer them the same way.
"""

from __future__ import annotations

import ast

from nb2prod.dataflow.flow import BUILTIN_NAMES
from nb2prod.readonly import PURE_METHODS, READ_ONLY_ACCESSORS

#: Methods that hand out elements of their object by reference (`d.values()`).
ELEMENT_METHODS = frozenset({"values", "items", "get", "setdefault"})
#: Builtins whose result holds their arguments' elements (`zip(xs, ys)`).
ELEMENT_BUILTINS = frozenset({"zip", "enumerate", "reversed", "list", "tuple", "iter"})


def root_name(node: ast.expr) -> str | None:
    """`a` for `a`, `a.b.c`, `a[0].b`, `a.b()`: the object a mutation reaches."""
    while True:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node = node.func.value
        else:
            return None


def alias_origins(source: ast.expr | None,
                  aliases: dict[str, frozenset[str]]) -> frozenset[str]:
    """Names whose objects `source` may hand out by reference: `m = models["lr"]`,
    `step = pipe.steps[0]`, `for m in models.values()`, `for a, b in zip(xs, ys)`.
    Calls count only when they hand out elements (`d.values()`, `zip(...)`): most
    methods return new objects (`X2 = X.copy()` must not make `X` change with `X2`,
    or two stages evaluating the same test set would stop running in parallel)."""
    if source is None:
        return frozenset()
    if isinstance(source, (ast.Tuple, ast.List)):
        return frozenset().union(*(alias_origins(e, aliases) for e in source.elts))
    if isinstance(source, ast.Call) and isinstance(source.func, ast.Name) and \
            source.func.id in ELEMENT_BUILTINS:
        return frozenset().union(*(alias_origins(a, aliases) for a in source.args))
    if isinstance(source, ast.Call) and not (isinstance(source.func, ast.Attribute)
                                             and source.func.attr in ELEMENT_METHODS):
        return frozenset()
    root = root_name(source)
    if root is None:
        return frozenset()
    return frozenset({root}) | aliases.get(root, frozenset())


def read_only_call(call: ast.Call) -> bool:
    """`x.m(...)` that leaves `x` alone: `m` is in the read-only table (or is reached
    through an accessor such as `df.plot.bar()`), without `inplace=True` or `out=`."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if any(kw.arg == "out" or (kw.arg == "inplace" and not (
            isinstance(kw.value, ast.Constant) and not kw.value.value)) for kw in call.keywords):
        return False
    if func.attr in PURE_METHODS:
        return True
    node = func.value
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Attribute) and node.attr in READ_ONLY_ACCESSORS:
            return True
        node = node.value
    return False


def all_args(args: ast.arguments) -> list[ast.arg]:
    """Every parameter of a signature, `*args` and `**kwargs` included."""
    found = args.posonlyargs + args.args + args.kwonlyargs
    if args.vararg:
        found.append(args.vararg)
    if args.kwarg:
        found.append(args.kwarg)
    return found


def stored_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def target_names(target: ast.expr) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def loaded_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def binds(stmt: ast.AST, name: str) -> bool:
    """Whether `stmt` assigns `name` or defines a def/class of that name anywhere inside."""
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
    return False


def pattern_names(pattern: ast.pattern) -> list[str]:
    """The names a `case` pattern captures."""
    names = []
    for node in ast.walk(pattern):
        if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.append(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.append(node.rest)
    return names


def module_names(imports: list[tuple[str, int]] | tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    """The modules of (module, line) import sites, each once, in order."""
    return tuple(dict.fromkeys(module for module, _ in imports))


def definition_reads(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> frozenset[str]:
    """Names a `def`/`class` statement itself evaluates: decorators, defaults, annotations, bases."""
    parts: list[ast.AST] = list(node.decorator_list)
    if isinstance(node, ast.ClassDef):
        parts += node.bases + [kw.value for kw in node.keywords]
    else:
        parts += node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
        parts += [a.annotation for a in all_args(node.args) if a.annotation is not None]
        if node.returns is not None:
            parts.append(node.returns)
    return frozenset(name for part in parts for name in loaded_names(part)) - BUILTIN_NAMES
