"""The block rule (DESIGN.md "Cell tags"): which statements do no work.

An untagged cell joins the imports/functions/parameters block above it only
while it is *declarative*: imports (plain, optional `try: import` and
conditional `if ...: import`), def/class, literal constants, docstrings and
session setup (`%matplotlib inline`, `np.random.seed(SEED)`,
`plt.rcParams[...] = 120`).  The same judgement decides whether a whole
optional or conditional import statement can be copied into another stage.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

#: Line magics that only configure the session (``%matplotlib inline``): a cell of
#: imports and these still "does no work" (DESIGN.md, the block rule).
SETUP_MAGICS = frozenset({"matplotlib", "load_ext", "reload_ext", "autoreload", "config"})

#: Module-level calls that configure the session, with literal or plain-name arguments
#: (`np.random.seed(SEED)`, `warnings.filterwarnings("ignore")`, `plt.style.use("ggplot")`):
#: no work either, and a seed must reach every stage for its results to match the notebook.
SETUP_CALLS = frozenset({
    "seed", "manual_seed", "set_seed", "set_random_seed", "set_option", "set_options",
    "filterwarnings", "simplefilter", "set_theme", "set_style", "set_context", "set_palette",
    "use", "set_printoptions", "basicConfig", "setLevel", "init_notebook_mode",
})
#: Option objects a literal may be assigned into (`plt.rcParams["figure.dpi"] = 120`,
#: `pd.options.display.max_rows = 100`).
SETUP_OPTIONS = frozenset({"rcParams", "options"})

#: Handlers that catch a failed import (a bare `except:` too): with a `try:` body of
#: nothing but imports and constants, nothing else can have failed.
IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def declarative(stmt: ast.stmt) -> bool:
    """An import, def/class, literal constant, docstring, `pass` or setup magic: no work;
    also a conditional import (`if sys.version_info >= (3, 11): import tomllib ...`)."""
    rule = _RULES.get(type(stmt))
    return rule is not None and rule(stmt)


def is_optional_import(node: ast.Try) -> bool:
    """`try:` of nothing but imports (and constants) with a handler catching ImportError."""
    if node.finalbody or not any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in node.body):
        return False
    if not all(declarative(stmt) for stmt in node.body + node.orelse):
        return False
    for handler in node.handlers:
        kind = handler.type
        if kind is None:
            return True
        names = kind.elts if isinstance(kind, ast.Tuple) else [kind]
        if any(isinstance(n, ast.Name) and n.id in IMPORT_ERRORS for n in names):
            return True
    return False


def is_import(stmt: ast.stmt) -> bool:
    """An import statement, or an optional-import `try` (copied whole)."""
    return isinstance(stmt, (ast.Import, ast.ImportFrom)) or (
        isinstance(stmt, ast.Try) and is_optional_import(stmt))


#: Blocks whose bodies an `if`'s imports may sit in (`if a: for x in xs: import m`):
#: the imports of a copy are taken out of them (a copy must not run the loop).
BLOCKS = (ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)


def has_import(node: ast.If) -> bool:
    """An `if` with an import in one of its branches (not inside a def there)."""
    todo: list[ast.stmt] = node.body + node.orelse
    while todo:
        stmt = todo.pop()
        if is_import(stmt):
            return True
        if isinstance(stmt, ast.If):
            todo += stmt.body + stmt.orelse
        elif isinstance(stmt, BLOCKS):
            todo += stmt.body + getattr(stmt, "orelse", [])
    return False


def imports_only(node: ast.If) -> ast.If:
    """`node` with nothing but its imports (and the `if`s holding them) in its branches;
    imports inside a loop or `with` there are taken out of it."""
    def keep(body: list[ast.stmt]) -> list[ast.stmt]:
        kept: list[ast.stmt] = []
        for stmt in body:
            if is_import(stmt):
                kept.append(stmt)
            elif isinstance(stmt, ast.If) and has_import(stmt):
                kept.append(imports_only(stmt))
            elif isinstance(stmt, BLOCKS):
                kept += keep(stmt.body + getattr(stmt, "orelse", []))
        return kept

    return ast.If(node.test, keep(node.body) or [ast.Pass()], keep(node.orelse))


def _always(stmt: ast.stmt) -> bool:
    return True


def _conditional_import(stmt: ast.If) -> bool:
    return has_import(stmt) and all(declarative(s) for s in stmt.body + stmt.orelse)


def _constant(stmt: ast.Assign | ast.AnnAssign) -> bool:
    """`N = 10`, `a, b = 1, 2`, `plt.rcParams["figure.dpi"] = 120`."""
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return (stmt.value is not None and _literal(stmt.value)
            and all(isinstance(t, (ast.Name, ast.Tuple)) or _option_target(t)
                    for t in targets))


def _setup_expression(stmt: ast.Expr) -> bool:
    """A docstring, a setup line magic, or a setup call with settings as arguments."""
    value = stmt.value
    if isinstance(value, ast.Constant):
        return True
    if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)):
        return False
    if value.func.attr == "run_line_magic":
        return (bool(value.args) and isinstance(value.args[0], ast.Constant)
                and value.args[0].value in SETUP_MAGICS)
    return (value.func.attr in SETUP_CALLS and _dotted(value.func.value)
            and all(_setting(a) for a in value.args)
            and all(_setting(k.value) for k in value.keywords))


#: statement type -> whether such a statement does no work
_RULES: dict[type[ast.stmt], Callable[[Any], bool]] = {
    ast.Import: _always, ast.ImportFrom: _always, ast.FunctionDef: _always,
    ast.AsyncFunctionDef: _always, ast.ClassDef: _always, ast.Pass: _always,
    ast.Try: is_optional_import,
    ast.If: _conditional_import,
    ast.Assign: _constant, ast.AnnAssign: _constant,
    ast.Expr: _setup_expression,
}


def _setting(node: ast.expr) -> bool:
    """A literal, or a plain name such as a parameter (`np.random.seed(SEED)`)."""
    return isinstance(node, ast.Name) or _literal(node)


def _dotted(node: ast.expr) -> bool:
    """`np.random`, `warnings`: a plain dotted name (a module, as far as we can tell)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


def _option_target(target: ast.expr) -> bool:
    """`plt.rcParams["x"]` or `pd.options.display.max_rows`: an option, not data."""
    node, seen = target, False
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Subscript) and not _literal(node.slice):
            return False
        seen = seen or (isinstance(node, ast.Attribute) and node.attr in SETUP_OPTIONS)
        node = node.value
    return seen and isinstance(node, ast.Name)


def _literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True
