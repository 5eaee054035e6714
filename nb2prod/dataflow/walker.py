"""The module-level walk of one cell: `analyze_cell` -> `CellFlow`.

Statements are visited in execution order, tracking which names are bound
for sure and which only maybe (`bindings`), so a read after a conditional
binding is a `maybe_read`, and a mutation reaches the objects a name is an
alias of (`m = models["lr"]`, loop targets).  Function bodies are left to
`scope`, import statements' copyable sources to `imports`.
"""

from __future__ import annotations

import ast
import textwrap

from nb2prod.dataflow.bindings import Bindings
from nb2prod.dataflow.declarative import declarative, has_import, is_optional_import
from nb2prod.dataflow.flow import Call, CellFlow, Definition
from nb2prod.dataflow.imports import (
    conditional_import,
    hoisted_imports,
    optional_import,
    statement_imports,
    statement_modules,
    tests_read,
)
from nb2prod.dataflow.names import (
    all_args,
    definition_reads,
    module_names,
    pattern_names,
    read_only_call,
    root_name,
)
from nb2prod.dataflow.scope import FunctionScope
from nb2prod.dataflow.source import TOO_DEEP, CellSyntaxError, parse_cell


def analyze_cell(source: str) -> CellFlow:
    """Analyse one cell's source (magics allowed) at module scope."""
    try:
        code, tree = parse_cell(source)
        walker = ScopeWalker(code)
        walker.run(tree.body)
        return walker.result(declarative=all(declarative(stmt) for stmt in tree.body))
    except RecursionError:  # e.g. `1+1+...` with hundreds of terms: CPython compiles it
        raise CellSyntaxError(TOO_DEEP, None) from None


class _Alias(ast.stmt):
    """Walker-only statement: a loop target refers to elements of the iterable."""

    _fields = ("target", "source")

    def __init__(self, target: ast.expr, source: ast.expr) -> None:
        super().__init__()
        self.target, self.source = target, source


class ScopeWalker(Bindings):
    """Walks module-level statements in execution order."""

    # -- targets -----------------------------------------------------------
    def store_target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self.bind(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.store_target(elt)
        elif isinstance(target, ast.Starred):
            self.store_target(target.value)
        elif isinstance(target, (ast.Subscript, ast.Attribute)):
            root = root_name(target.value)
            if isinstance(target, ast.Subscript):
                self.visit(target.slice)
            self.visit_non_root(target.value)
            if root:
                self.mutate(root)

    def visit_non_root(self, node: ast.expr) -> None:
        """Visit the parts of an attribute/subscript chain other than its root name."""
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            if isinstance(node, ast.Subscript):
                self.visit(node.slice)
            node = node.value
        if not isinstance(node, ast.Name):
            self.visit(node)

    # -- statements --------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.store_target(target)
            self.alias(target, node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self.mutate(node.target.id)
            self.bind(node.target.id)
        else:
            self.store_target(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.in_annotation += 1
        self.visit(node.annotation)
        self.in_annotation -= 1
        if node.value is not None:
            self.visit(node.value)
            self.store_target(node.target)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.load(target.id)
                self.state.bound.discard(target.id)
                self.state.maybe.discard(target.id)
                self.definitions.pop(target.id, None)
                self.deletes.add(target.id)
            else:
                self.store_target(target)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for module in statement_modules(node):
            self.add_import(module, node.lineno)
        if any(alias.name == "*" for alias in node.names):
            self.star_import = node.lineno
        definitions = statement_imports(node)
        for bound, definition in definitions:
            self.bind(bound)
        if not self.in_branch:
            self.definitions.update(definitions)

    visit_ImportFrom = visit_Import  # type: ignore[assignment]

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        self._visit_arguments_defaults(node.args)
        self.in_annotation += 1
        for arg in all_args(node.args):
            if arg.annotation is not None:
                self.visit(arg.annotation)
        if node.returns is not None:
            self.visit(node.returns)
        self.in_annotation -= 1
        info = FunctionScope.analyse(node)
        self._body_imports(info)
        self.bind(node.name)
        if not self.conditional:
            self.definitions[node.name] = Definition(
                "def", self._segment(node), info.free_reads | definition_reads(node),
                info.free_mutates, info.global_writes, modules=module_names(info.imports),
                definition_reads=definition_reads(node),
                params=tuple(a.arg for a in node.args.posonlyargs + node.args.args),
                mutated_params=info.mutated_params,
            )

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        for base in node.bases:
            self.visit(base)
        for kw in node.keywords:
            self.visit(kw.value)
        info = FunctionScope.analyse(node)
        self._body_imports(info)
        # the class body runs now: names it reads outside methods are read now
        for name in info.body_reads:
            self.load(name)
        self.bind(node.name)
        if not self.conditional:
            self.definitions[node.name] = Definition(
                "class", self._segment(node),
                info.free_reads | info.body_reads | definition_reads(node),
                info.free_mutates, info.global_writes, info.method_reads,
                modules=module_names(info.imports),
                definition_reads=info.body_reads | definition_reads(node)
            )

    def visit_If(self, node: ast.If) -> None:
        imports = not self.in_branch and has_import(node)
        first = len(self.imports)
        self.visit(node.test)
        self.conditional += 1
        self.optional += imports  # a branch's module may be missing here: like `try`
        self.branches(node.body, node.orelse, exhaustive=True)
        self.optional -= imports
        self.conditional -= 1
        if imports:
            self.record_conditional_import(node, first)

    def record_conditional_import(self, node: ast.If, first: int) -> None:
        """`if USE_GPU: import cupy as xp / else: import numpy as xp`: the names it imports
        are modules whichever branch binds them, never data.  One import definition of
        them: the whole statement when it does no work, else its imports only (the
        tests kept), so a copy never repeats the work.  Inside a loop, when a test reads
        what the loop binds (`for name in MODELS: if name == "xgb": import xgboost`),
        the loop may take every branch: each import is copied on its own."""
        loop_names = frozenset().union(*self.loop_names)
        if loop_names & tests_read(node):
            self.definitions.update(hoisted_imports(node))
            return
        bound, definition = conditional_import(node, self._segment(node),
                                               module_names(self.imports[first:]))
        for name in bound:
            self.definitions[name] = definition

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        target = ast.Assign(targets=[node.target], value=ast.Constant(None), lineno=0)
        self.loop_body(node, [target, _Alias(node.target, node.iter)], node.body, node.orelse)

    def visit__Alias(self, node: _Alias) -> None:
        self.alias(node.target, node.source)

    visit_AsyncFor = visit_For  # type: ignore[assignment]

    def visit_While(self, node: ast.While) -> None:
        self.visit(node.test)
        self.loop_body(node, node.body, node.orelse)

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            root = root_name(item.context_expr)
            if root and isinstance(item.context_expr, ast.Name):
                self.mutates.add(root)
            if item.optional_vars is not None:
                self.store_target(item.optional_vars)
        self.run(node.body)

    visit_AsyncWith = visit_With  # type: ignore[assignment]

    def visit_Try(self, node: ast.Try) -> None:
        if is_optional_import(node):
            self.record_optional_import(node)
        else:
            self.try_branches(node)

    visit_TryStar = visit_Try  # type: ignore[assignment]

    def try_branches(self, node: ast.Try) -> None:
        self.conditional += 1
        bodies = [node.body + node.orelse]
        for handler in node.handlers:
            if handler.type is not None:
                self.visit(handler.type)
            body = list(handler.body)
            if handler.name:
                body.insert(0, ast.Assign(targets=[ast.Name(handler.name, ast.Store())],
                                          value=ast.Constant(None), lineno=0))
            bodies.append(body)
        self.branches(*bodies, exhaustive=False)
        self.conditional -= 1
        self.run(node.finalbody)

    def record_optional_import(self, node: ast.Try) -> None:
        """`try: import x / except ImportError: ...`: one import definition of every name
        it binds, whose source is the whole statement; its modules are optional."""
        first, top = len(self.imports), not self.in_branch
        self.optional += 1
        self.conditional += 1
        self.try_branches(node)
        self.conditional -= 1
        self.optional -= 1
        if not top:
            return
        bound, definition = optional_import(node, self._segment(node),
                                            module_names(self.imports[first:]))
        for name in bound:
            self.definitions[name] = definition

    def visit_Match(self, node: ast.Match) -> None:
        self.visit(node.subject)
        self.conditional += 1
        bodies = []
        for case in node.cases:
            names = [n for n in pattern_names(case.pattern)]
            pre = [ast.Assign(targets=[ast.Name(n, ast.Store())], value=ast.Constant(None),
                              lineno=0) for n in names]
            if case.guard is not None:
                pre.append(ast.Expr(case.guard))
            bodies.append(pre + list(case.body))
        self.branches(*bodies, exhaustive=False)
        self.conditional -= 1

    def visit_Global(self, node: ast.Global) -> None:
        """`global` at module level changes nothing."""

    # -- expressions -------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.load(node.id)
        elif isinstance(node.ctx, ast.Store):
            self.bind(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.store_target(node.target)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            root = root_name(func.value)
            self.visit_non_root(func.value)
            if root:
                if read_only_call(node):
                    self.load(root)
                else:
                    self.mutate(root)
        else:
            self.visit(func)
        for arg in node.args:
            self.visit(arg)
        for kw in node.keywords:
            self.visit(kw.value)
        if isinstance(func, ast.Name):
            call = Call(func.id, tuple(root_name(a) for a in node.args),
                        tuple((kw.arg, root_name(kw.value)) for kw in node.keywords if kw.arg))
            self.calls.append(call)
            defn = self.definitions.get(func.id)
            for name in sorted(defn.mutated_by(call)) if defn else ():
                self.mutate(name)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        self.visit(node.values[0])
        self.conditional += 1
        saved = self.state.copy()
        for value in node.values[1:]:
            self.visit(value)
        saved.maybe |= (self.state.bound - saved.bound) | self.state.maybe
        self.state = saved
        self.conditional -= 1

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self.conditional += 1
        self.branches([ast.Expr(node.body)], [ast.Expr(node.orelse)], exhaustive=True)
        self.conditional -= 1

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._visit_arguments_defaults(node.args)
        info = FunctionScope.analyse(node)
        self._body_imports(info)
        self.maybe_reads |= {n for n in info.free_reads if n not in self.state.bound}
        self.uses |= info.free_reads

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        # the first iterable is evaluated in the enclosing scope
        self.visit(node.generators[0].iter)
        info = FunctionScope.analyse(node)
        for name in info.free_reads:
            self.load(name)
        self.mutates |= info.free_mutates
        for name in info.walrus_targets:
            self.bind(name)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension

    # -- helpers -----------------------------------------------------------
    def _body_imports(self, info: FunctionScope.Info) -> None:
        for module, lineno in info.imports:
            self.add_import(module, lineno)

    def _visit_arguments_defaults(self, args: ast.arguments) -> None:
        for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.visit(default)

    def _segment(self, node: ast.stmt) -> str:
        lines = self.code.splitlines()
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        end = node.end_lineno or node.lineno
        segment = "\n".join(lines[start - 1 : end]) + "\n"
        # a statement inside `with` is indented: its copy must run at module level
        return textwrap.dedent(segment) if node.col_offset else segment
