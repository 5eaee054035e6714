"""Import statements as copyable `Definition`s, and pruning imports a stage never uses.

Modules are never data (DESIGN.md "Data between stages"): every stage that
uses a module gets the import statement that binds it, wherever the notebook
wrote it.  Here is how each kind of import statement becomes the source that
is copied: one alias of a plain import, a whole optional `try: import`, a
conditional `if ...: import` (whole when it does no work, else its imports
only, so a copy never repeats the work); and how an `imports` cell loses the
imports one stage does not need (`without_imports`).
"""

from __future__ import annotations

import ast

from nb2prod.dataflow.declarative import declarative, imports_only, is_optional_import
from nb2prod.dataflow.flow import BUILTIN_NAMES, Definition
from nb2prod.dataflow.names import loaded_names, stored_names


def statement_modules(node: ast.Import | ast.ImportFrom) -> tuple[str, ...]:
    """The top-level modules an import statement imports (none for a relative import)."""
    if isinstance(node, ast.Import):
        return tuple(alias.name.split(".")[0] for alias in node.names)
    return (node.module.split(".")[0],) if node.level == 0 and node.module else ()


def statement_imports(node: ast.Import | ast.ImportFrom,
                      optional: bool = False) -> list[tuple[str, Definition]]:
    """Each name `import a, b` / `from m import a, b` binds, with its own statement
    (a star import binds nothing nameable)."""
    found = []
    for alias in node.names:
        asname = f" as {alias.asname}" if alias.asname else ""
        if isinstance(node, ast.Import):
            module = alias.name.split(".")[0]
            found.append((alias.asname or module, Definition(
                "import", f"import {alias.name}{asname}\n", modules=(module,),
                optional=optional)))
        elif alias.name != "*":
            found.append((alias.asname or alias.name, Definition(
                "import", f"from {'.' * node.level}{node.module or ''} import "
                f"{alias.name}{asname}\n", modules=statement_modules(node), optional=optional)))
    return found


def hoisted_imports(node: ast.If) -> list[tuple[str, Definition]]:
    """The imports of an `if` (in its branches and nested `if`s), each a statement of
    its own, optional (a branch may not have run): for an `if` inside a loop whose
    test reads what the loop binds, where copying the `if` would take one branch."""
    found: list[tuple[str, Definition]] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                found.extend(statement_imports(stmt, optional=True))
            elif isinstance(stmt, ast.Try) and is_optional_import(stmt):
                modules = tuple(dict.fromkeys(
                    m for sub in ast.walk(stmt) if isinstance(sub, (ast.Import, ast.ImportFrom))
                    for m in statement_modules(sub)))
                bound, definition = optional_import(stmt, ast.unparse(stmt) + "\n", modules)
                found.extend((name, definition) for name in sorted(bound))
            elif isinstance(stmt, ast.If):
                visit(stmt.body)
                visit(stmt.orelse)

    visit(node.body + node.orelse)
    return found


def tests_read(node: ast.If) -> set[str]:
    """Names the tests of an `if` and of the `if`s nested in its branches read."""
    found = loaded_names(node.test)
    for stmt in node.body + node.orelse:
        if isinstance(stmt, ast.If):
            found |= tests_read(stmt)
    return found


def conditional_import(node: ast.If, segment: str,
                       modules: tuple[str, ...]) -> tuple[set[str], Definition]:
    """`if USE_GPU: import cupy as xp / else: import numpy as xp`: the names it binds and
    their one definition (`segment`, the statement as written, when it does no work)."""
    copied = node if declarative(node) else imports_only(node)
    bound = bound_by(copied)
    source = segment if copied is node else ast.unparse(copied) + "\n"
    return bound, Definition(
        "import", source, frozenset(loaded_names(copied) - bound - BUILTIN_NAMES),
        modules=modules, optional=True)


def optional_import(node: ast.Try, segment: str,
                    modules: tuple[str, ...]) -> tuple[set[str], Definition]:
    """`try: import x / except ImportError: ...`: the names it binds and their one
    definition, the whole statement; its modules are optional."""
    bound = bound_by(node)
    return bound, Definition(
        "import", segment,
        frozenset(loaded_names(node) - bound - BUILTIN_NAMES - {"ImportError"}),
        modules=modules, optional=True)


def bound_by(node: ast.stmt) -> set[str]:
    """Names an optional or conditional import statement binds (not `except ... as e`)."""
    bound = stored_names(node)
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Import, ast.ImportFrom)):
            bound |= {a.asname or a.name.split(".")[0] for a in sub.names}
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            bound.discard(sub.name)
    return bound


def without_imports(source: str, names: set[str]) -> str | None:
    """`source` with its top-level imports of `names` left out; None if nothing changes.

    Only plain-Python cells are rewritten (magics would not survive the round
    trip), statement by statement, keeping every other line as written.
    """
    if any(ch in source for ch in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
        return None  # str.splitlines would not count lines as the parser does
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []  # (first line, last line, replacement), 1-based
    left_out: set[str] = set()
    for stmt in tree.body:
        if not isinstance(stmt, (ast.Import, ast.ImportFrom)) or (
                isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"):
            continue
        if any(a.name == "*" for a in stmt.names):
            continue
        keep = [a for a in stmt.names if _bound_name(a) not in names]
        if len(keep) == len(stmt.names):
            continue
        left_out |= {_bound_name(a) for a in stmt.names} - {_bound_name(a) for a in keep}
        end = stmt.end_lineno or stmt.lineno
        first, last = lines[stmt.lineno - 1].encode(), lines[end - 1].encode()  # offsets: bytes
        comment = last[stmt.end_col_offset or 0:].strip()
        if first[:stmt.col_offset].strip() or comment and not comment.startswith(b"#"):
            return None  # shares a line with another statement (`import a; x = 1`)
        text = ""
        if keep:
            node = ast.Import(keep) if isinstance(stmt, ast.Import) else ast.ImportFrom(
                stmt.module, keep, stmt.level)
            text = ast.unparse(node) + (f"  {comment.decode()}" if comment else "") + "\n"
        edits.append((stmt.lineno, end, text))
    if not edits:
        return None
    for start, end, text in reversed(edits):
        lines[start - 1:end] = [text] if text else []
    lines.insert(0, "# nb2prod: left out imports this stage never uses: "
                    f"{', '.join(sorted(left_out))}\n")
    pruned = "".join(lines)
    return pruned if source.endswith("\n") else pruned.rstrip("\n")


def _bound_name(alias: ast.alias) -> str:
    return alias.asname or alias.name.split(".")[0]
