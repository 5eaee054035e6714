"""What each parameter's default value depends on, for the stage cache (pure).

A stage's cache key holds the parameter values it sees.  A literal default is
its own value; `os.environ.get("DATA_DIR", "data")` is decided by the
environment of the run, so the key holds that variable's value there; anything
else (`datetime.now()`, `random.random()`, a file read) is known only once the
parameters cell runs, so a stage reading it cannot be cached at all (it always
runs).  Expressions built from literals, earlier parameters and environment
reads by literal name with operators, f-strings, the calls of `PURE_CALLS` and
the string methods of `PURE_METHODS` stay keyable: `int(os.getenv("N", "5"))`,
`os.environ.get("LOG", "0") == "1"`, `os.path.join(DATA_DIR, "train.csv")`.
When unsure, a default is not keyable: a stage run for nothing costs time, a
wrong cache hit costs correctness.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from nb2prod.runtime.param_values import (  # one table: the stage cache evaluates with it
    ENV_CALLS,
    ENV_MAPPINGS,
    PURE_CALLS,
    PURE_METHODS,
)

#: Nodes whose value is made from their children's values only.
_COMBINING = (ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.JoinedStr,
              ast.FormattedValue, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
              ast.Slice, ast.Starred, ast.keyword, ast.operator, ast.cmpop, ast.boolop,
              ast.unaryop, ast.expr_context)
_REASON_CHARS = 60


@dataclass(frozen=True)
class Default:
    """How a parameter's default is made: from the environment variables `env`, or,
    when `unkeyable` is set (the statement, shortened), only known when the cell runs."""

    env: frozenset[str] = frozenset()
    unkeyable: str | None = None

    def __or__(self, other: Default) -> Default:
        return Default(self.env | other.env, self.unkeyable or other.unkeyable)


def parameter_defaults(source: str) -> dict[str, Default]:
    """{name: Default} for every name the parameters cell `source` binds (see the module doc).

    Assignments, also under an `if` (its test is part of what the names it binds
    are made of); a name bound or changed by anything else (`for`, `with`, a
    mutating call) is unkeyable, whatever its first value.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    known: dict[str, Default] = {}
    _statements(tree.body, known, source, None)
    return known


_ASSIGNMENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign)


def _statements(body: list[ast.stmt], known: dict[str, Default], source: str,
                condition: Default | None) -> None:
    """Walk `body` in order; `condition`: what decides whether it runs (None: it does)."""
    for node in body:
        shown = _shown(source, node)
        if isinstance(node, _ASSIGNMENTS):
            if node.value is None:  # `x: int`, an annotation only
                continue
            made = _expression(node.value, known)
            if made.unkeyable:
                made = Default(made.env, shown)
            made = made | (condition or Default())
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:  # maybe not run: the earlier value may stay
                _bind(target, made, known, augmented=isinstance(node, ast.AugAssign)
                      or condition is not None)
        elif isinstance(node, ast.If) and _assigns_only(node):
            test = _expression(node.test, known) | (condition or Default())
            if test.unkeyable:
                test = Default(test.env, shown)
            _statements(node.body, known, source, test)
            _statements(node.orelse, known, source, test)
        elif isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue
        else:  # anything else may bind or change any name it mentions
            for name in {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}:
                if name in known or _stored(node, name):
                    known[name] = known.get(name, Default()) | Default(unkeyable=shown)


def _assigns_only(node: ast.If) -> bool:
    return all(isinstance(n, (*_ASSIGNMENTS, ast.Pass)) or (
        isinstance(n, ast.If) and _assigns_only(n)) for n in [*node.body, *node.orelse])


def _shown(source: str, node: ast.stmt) -> str:
    text = " ".join((ast.get_source_segment(source, node) or "").split())
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."


def _stored(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)
               for n in ast.walk(node))


def _bind(target: ast.expr, made: Default, known: dict[str, Default], augmented: bool) -> None:
    """`made` for each name `target` binds; a subscript/attribute target or `+=` adds to it."""
    if isinstance(target, ast.Name):
        known[target.id] = (known.get(target.id, Default()) | made) if augmented else made
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            _bind(element, made, known, augmented)
    elif isinstance(target, ast.Starred):
        _bind(target.value, made, known, augmented)
    elif isinstance(target, (ast.Subscript, ast.Attribute)):
        root = target
        while isinstance(root, (ast.Subscript, ast.Attribute)):
            made = made | _expression(root.slice, known) if isinstance(root, ast.Subscript) \
                else made
            root = root.value
        if isinstance(root, ast.Name):
            _bind(root, made, known, augmented=True)


def _dotted(node: ast.expr) -> str | None:
    """`os.environ.get` for that attribute chain on a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _expression(node: ast.AST, known: dict[str, Default]) -> Default:
    """What the value of expression `node` depends on, given the parameters bound before."""
    if isinstance(node, ast.Name):
        return known.get(node.id, Default(unkeyable=node.id))
    if isinstance(node, ast.Call):
        return _call(node, known)
    if isinstance(node, ast.Subscript):
        name = _literal_name(node.slice)
        if _dotted(node.value) in ENV_MAPPINGS and name is not None:
            return Default(frozenset({name}))
        return _expression(node.value, known) | _expression(node.slice, known)
    if isinstance(node, _COMBINING):
        made = Default()
        for child in ast.iter_child_nodes(node):
            made = made | _expression(child, known)
        return made
    return Default(unkeyable=type(node).__name__)  # attributes, lambdas, comprehensions...


def _call(node: ast.Call, known: dict[str, Default]) -> Default:
    called = _dotted(node.func)
    arguments = Default()
    for argument in [*node.args, *node.keywords]:
        arguments = arguments | _expression(argument, known)
    if called in ENV_CALLS:
        name = _literal_name(node.args[0]) if node.args else None
        if name is None:
            return Default(unkeyable=called)
        return Default(frozenset({name})) | arguments
    if called in PURE_CALLS:
        return arguments
    if isinstance(node.func, ast.Attribute) and node.func.attr in PURE_METHODS and (
            called is None or called.split(".", 1)[0] in known):
        return _expression(node.func.value, known) | arguments
    return Default(unkeyable=called or "call")


def _literal_name(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
