"""Free names of a function, lambda, class or comprehension body.

A body runs when it is called, not where it is defined, so its free names are
collected flow-insensitively and handed to the module-level walk (`walker`),
which reads them where the function is *used*; a class keeps its method
bodies apart (`method_reads`: needed only if a method runs).  Python decides
a body's locals by any binding anywhere in it (`collect_locals`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from nb2prod.dataflow.flow import BUILTIN_NAMES
from nb2prod.dataflow.names import (
    alias_origins,
    all_args,
    binds,
    definition_reads,
    read_only_call,
    root_name,
    stored_names,
    target_names,
)


class FunctionScope(ast.NodeVisitor):
    """Free names of a function, lambda, class or comprehension body."""

    def __init__(self) -> None:
        self.local: set[str] = set()
        self.loaded: set[str] = set()
        self.mutated: set[str] = set()
        self.globals: set[str] = set()
        self.global_writes: set[str] = set()
        self.walrus: set[str] = set()
        self.body_reads: set[str] = set()
        self.method_reads: set[str] = set()
        self.imports: list[tuple[str, int]] = []
        self.aliases: dict[str, frozenset[str]] = {}  # flow-insensitive: every alias counts
        self.params: set[str] = set()
        self.first_mutation: dict[str, int] = {}  # top-level statement index
        self.first_rebind: dict[str, int] = {}

    @dataclass(frozen=True)
    class Info:
        free_reads: frozenset[str]
        free_mutates: frozenset[str]
        global_writes: frozenset[str]
        walrus_targets: frozenset[str]
        body_reads: frozenset[str]
        method_reads: frozenset[str]
        imports: tuple[tuple[str, int], ...]  # made inside the body, when it runs
        mutated_params: frozenset[str] = frozenset()

    @classmethod
    def analyse(cls, node: ast.AST) -> FunctionScope.Info:
        scope = cls()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for arg in all_args(node.args):
                scope.local.add(arg.arg)
                scope.params.add(arg.arg)
            body = node.body if isinstance(node.body, list) else [node.body]
            for stmt in body:
                scope.collect_locals(stmt)
            for i, stmt in enumerate(body):
                before = set(scope.mutated)
                scope.visit(stmt)
                for name in scope.mutated - before:
                    scope.first_mutation.setdefault(name, i)
                for name in scope.params & stored_names(stmt):
                    scope.first_rebind.setdefault(name, i)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    inner = cls.analyse(stmt)
                    scope.method_reads |= inner.free_reads | inner.method_reads
                    scope.mutated |= inner.free_mutates
                    scope.global_writes |= inner.global_writes
                    scope.imports += inner.imports
                    scope.body_reads |= definition_reads(stmt)
                else:
                    before = set(scope.loaded)
                    scope.collect_locals(stmt)
                    scope.visit(stmt)
                    scope.body_reads |= scope.loaded - before
            scope.body_reads -= scope.local
        else:  # comprehension
            for gen in node.generators:  # type: ignore[attr-defined]
                for name in target_names(gen.target):
                    scope.local.add(name)
                scope.alias(gen.target, gen.iter)
            for i, gen in enumerate(node.generators):  # type: ignore[attr-defined]
                if i:
                    scope.visit(gen.iter)
                for cond in gen.ifs:
                    scope.visit(cond)
            for part in ("elt", "key", "value"):
                if hasattr(node, part):
                    scope.visit(getattr(node, part))
        free = scope.loaded - scope.local - BUILTIN_NAMES
        mutated = set(scope.mutated)
        for name in scope.mutated:
            mutated |= scope.aliases.get(name, frozenset())
        return cls.Info(
            frozenset(free | (scope.globals & scope.loaded)),
            frozenset(mutated - (scope.local - scope.globals)),
            frozenset(scope.global_writes),
            frozenset(scope.walrus),
            frozenset(scope.body_reads),
            frozenset(scope.method_reads - BUILTIN_NAMES),
            tuple(scope.imports),
            frozenset(scope.mutated_params()),
        )

    def mutated_params(self) -> set[str]:
        """Parameters changed in place before the body rebinds them: `df = df.copy()`
        first means the caller's object is left alone."""
        first = dict(self.first_mutation)
        for name, index in self.first_mutation.items():
            for origin in self.aliases.get(name, ()):
                first[origin] = min(first.get(origin, index), index)
        return {p for p in self.params & set(first)
                if first[p] <= self.first_rebind.get(p, first[p])}

    def collect_locals(self, stmt: ast.AST) -> None:
        """Python decides locals by any binding anywhere in the body."""
        for node in ast.walk(stmt):
            if isinstance(node, (ast.Global, ast.Nonlocal)):
                self.globals |= set(node.names)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                self.local.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.local.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    self.local.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ExceptHandler) and node.name:
                self.local.add(node.name)
        self.local -= self.globals
        for name in self.globals:
            if binds(stmt, name):
                self.global_writes.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.loaded.add(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self.walrus.add(node.target.id)
            self.local.add(node.target.id)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute):
            root = root_name(node.func.value)
            if root and not read_only_call(node):
                self.mutated.add(root)
        self.generic_visit(node)

    def _store(self, target: ast.expr) -> None:
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            root = root_name(target.value)
            if root:
                self.mutated.add(root)

    def alias(self, targets: ast.expr, source: ast.expr | None) -> None:
        origins = alias_origins(source, self.aliases)
        for name in target_names(targets) if origins else ():
            self.aliases[name] = self.aliases.get(name, frozenset()) | origins

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._store(target)
            self.alias(target, node.value)
        self.generic_visit(node)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.alias(node.target, node.iter)
        self.generic_visit(node)

    visit_AsyncFor = visit_For  # type: ignore[assignment]

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._store(node.target)
        if isinstance(node.target, ast.Name):
            self.loaded.add(node.target.id)
        self.generic_visit(node)

    def _nested(self, inner: FunctionScope.Info) -> None:
        """A def/class/lambda inside this body: everything it may read counts here."""
        self.loaded |= inner.free_reads | inner.body_reads | inner.method_reads
        self.mutated |= inner.free_mutates
        self.imports += inner.imports

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._nested(FunctionScope.analyse(node))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        inner = FunctionScope.analyse(node)
        self._nested(inner)
        self.global_writes |= inner.global_writes

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._nested(FunctionScope.analyse(node))

    def visit_Import(self, node: ast.Import) -> None:
        self.imports += [(alias.name.split(".")[0], node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.imports.append((node.module.split(".")[0], node.lineno))

    def _comprehension(self, node: ast.AST) -> None:
        self.visit(node.generators[0].iter)  # type: ignore[attr-defined]
        inner = FunctionScope.analyse(node)
        self.loaded |= inner.free_reads
        self.mutated |= inner.free_mutates
        self.local |= inner.walrus_targets

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension
