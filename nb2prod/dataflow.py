"""What each cell reads, writes and mutates: pure functions over cell sources.

The splitter needs, per cell, the module-level names it reads before binding
them (its *inputs*), the names it binds (*writes*), the names it changes in
place (*mutates*: ``x[k] = v``, ``x.a = v``, ``x.fit(...)``, ``x += 1``), the
modules it imports (for requirements) and the functions/classes it defines
(whose free names are read where they are *used*, not where defined).

The rule throughout is the one in DESIGN.md: when unsure, report a name as
read rather than miss it; a spurious input costs a save/load, a missed one
breaks the pipeline.  Reads that happen only after a *conditional* binding
(inside ``if``/``for``/``try``, in a lambda, in an annotation) are reported as
``maybe_reads``: they become inputs only when an earlier stage provides them.
"""

from __future__ import annotations

import ast
import builtins
import functools
import textwrap
from dataclasses import dataclass, field

from nb2prod.readonly import PURE_METHODS, READ_ONLY_ACCESSORS

BUILTIN_NAMES = frozenset(dir(builtins)) | {"get_ipython", "display", "__file__", "In", "Out"}

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

#: Cell magics whose body is Python run in the user namespace.
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})


class CellSyntaxError(ValueError):
    """A cell that is not Python even after IPython's transformations."""

    def __init__(self, message: str, lineno: int | None) -> None:
        super().__init__(message)
        self.lineno = lineno


@dataclass(frozen=True)
class Definition:
    """A top-level ``def``/``class``/import whose source can be copied to another stage."""

    kind: str  # "def" | "class" | "import"
    source: str
    free_reads: frozenset[str] = frozenset()
    free_mutates: frozenset[str] = frozenset()
    global_writes: frozenset[str] = frozenset()
    #: a class's method bodies: their free names are needed when a method runs, which
    #: the analysis cannot see, so they are read only if some earlier stage provides them
    method_reads: frozenset[str] = frozenset()
    #: an import: the top-level modules it imports (for requirements)
    modules: tuple[str, ...] = ()
    #: an import inside ``try: ... except ImportError:``: fine to be missing
    optional: bool = False
    #: what the statement itself evaluates (decorators, defaults, bases, a class body):
    #: a copy runs only after these exist
    definition_reads: frozenset[str] = frozenset()
    #: a def: its positional parameters, and those its body changes in place
    #: (`def add_features(df): df["r"] = ...`): a call mutates what is passed there
    params: tuple[str, ...] = ()
    mutated_params: frozenset[str] = frozenset()

    def mutated_by(self, call: Call) -> set[str]:
        """The names a call of this function changes through its arguments."""
        found = {root for param, root in zip(self.params, call.args)
                 if root and param in self.mutated_params}
        return found | {root for kw, root in call.keywords
                        if root and kw in self.mutated_params}


@dataclass(frozen=True)
class Call:
    """A call of a plain name, `f(a, key=b)`: the root names of its arguments."""

    func: str
    args: tuple[str | None, ...]
    keywords: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class CellFlow:
    """Data flow of one cell at module level."""

    reads: frozenset[str]
    maybe_reads: frozenset[str]
    writes: frozenset[str]
    maybe_writes: frozenset[str]
    mutates: frozenset[str]
    deletes: frozenset[str]
    imports: tuple[tuple[str, int], ...]
    definitions: dict[str, Definition] = field(default_factory=dict)
    uses: frozenset[str] = frozenset()  # every name loaded anywhere (function lookups)
    star_import: int | None = None
    optional_imports: frozenset[str] = frozenset()  # modules imported only optionally
    calls: tuple[Call, ...] = ()  # calls of plain names (functions defined elsewhere)
    #: nothing but imports, def/class, literal constants and setup magics: such an
    #: untagged cell may join the imports/functions/parameters block above it
    declarative: bool = False

    @functools.cached_property
    def provides(self) -> frozenset[str]:
        """Names whose value this cell may change: the producers of data."""
        return self.writes | self.maybe_writes | self.mutates


def python_source(source: str) -> str:
    """Return plain Python for a cell, applying IPython's transformations if needed.

    IPython is imported only for cells that are not valid Python already:
    importing it costs far more than parsing a notebook.
    """
    try:
        ast.parse(source)
        return source
    except SyntaxError:
        pass
    lines = source.lstrip().splitlines()
    if lines and lines[0].startswith("%%"):
        magic = lines[0][2:].split()
        name = magic[0] if magic else ""
        if name not in PYTHON_CELL_MAGICS:
            return ""  # %%bash, %%html, %%writefile ...: not Python
        body = "\n".join(lines[1:])
        prefix = ""
        if name == "capture" and len(magic) > 1 and not magic[-1].startswith("-"):
            prefix = f"{magic[-1]} = None\n"  # %%capture out binds `out`
        return prefix + python_source(body)
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


TOO_DEEP = ("code nested too deeply to analyse (an expression of hundreds of terms?); "
            "split it into smaller statements")


def analyze_cell(source: str) -> CellFlow:
    """Analyse one cell's source (magics allowed) at module scope."""
    try:
        return _analyze_cell(source)
    except RecursionError:  # e.g. `1+1+...` with hundreds of terms: CPython compiles it
        raise CellSyntaxError(TOO_DEEP, None) from None


def _analyze_cell(source: str) -> CellFlow:
    try:
        code, tree = source, ast.parse(source)  # most cells: parsed once
    except SyntaxError:
        code = python_source(source)
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            raise CellSyntaxError(f"not valid Python: {exc.msg} (line {exc.lineno})",
                                  exc.lineno) from None
    walker = _ScopeWalker(code)
    walker.run(tree.body)
    return walker.result(declarative=all(_declarative(stmt) for stmt in tree.body))


class _State:
    """Definitely and possibly bound names at one point of execution."""

    def __init__(self, bound: set[str] | None = None, maybe: set[str] | None = None) -> None:
        self.bound = set(bound or ())
        self.maybe = set(maybe or ())

    def copy(self) -> _State:
        return _State(self.bound, self.maybe)


class _ScopeWalker(ast.NodeVisitor):
    """Walks module-level statements in execution order."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.state = _State()
        self.reads: set[str] = set()
        self.maybe_reads: set[str] = set()
        self.writes: set[str] = set()
        self.mutates: set[str] = set()
        self.deletes: set[str] = set()
        self.imports: list[tuple[str, int]] = []
        self.definitions: dict[str, Definition] = {}
        self.uses: set[str] = set()
        self.star_import: int | None = None
        self.conditional = 0
        self.in_annotation = 0
        self.optional = 0  # inside an optional-import `try`
        self.aliases: dict[str, frozenset[str]] = {}  # name -> names of objects it is part of
        self.calls: list[Call] = []
        self.optional_modules: set[str] = set()
        self.required_modules: set[str] = set()

    # -- bookkeeping -------------------------------------------------------
    def run(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.visit(stmt)

    def result(self, declarative: bool = False) -> CellFlow:
        maybe_writes = self.state.maybe - self.state.bound
        return CellFlow(
            reads=frozenset(self.reads),
            maybe_reads=frozenset(self.maybe_reads - self.reads),
            writes=frozenset(self.state.bound & self.writes),
            maybe_writes=frozenset(maybe_writes | (self.writes - self.state.bound - self.deletes)),
            mutates=frozenset(self.mutates),
            deletes=frozenset(self.deletes),
            imports=tuple(self.imports),
            definitions=self.definitions,
            uses=frozenset(self.uses),
            star_import=self.star_import,
            optional_imports=frozenset(self.optional_modules - self.required_modules),
            calls=tuple(self.calls),
            declarative=declarative,
        )

    def load(self, name: str) -> None:
        self.uses.add(name)
        if name in self.state.bound:
            defn = self.definitions.get(name)
            if defn is not None:  # using a local function reads its free names now
                self._apply_definition(defn)
            return
        if name in self.state.maybe or self.in_annotation:
            self.maybe_reads.add(name)
        else:
            self.reads.add(name)

    def _apply_definition(self, defn: Definition) -> None:
        for free in defn.free_reads:
            if free not in self.state.bound:
                (self.maybe_reads if free in self.state.maybe else self.reads).add(free)
        self.maybe_reads |= defn.method_reads - self.state.bound
        self.mutates |= defn.free_mutates
        for name in defn.global_writes:
            self.bind(name)

    def bind(self, name: str) -> None:
        self.writes.add(name)
        self.deletes.discard(name)
        self.definitions.pop(name, None)
        self.aliases.pop(name, None)
        self.state.bound.add(name)
        self.state.maybe.discard(name)

    def mutate(self, name: str) -> None:
        self.load(name)
        self.mutates.add(name)
        self.mutates |= self.aliases.get(name, frozenset())  # `for m in models: m.fit(X)`

    def alias(self, targets: ast.expr, source: ast.expr | None) -> None:
        """Names in `targets` now refer to (parts of) the objects `source` names."""
        origins = _alias_origins(source, self.aliases)
        if origins:
            for name in _target_names(targets):
                self.aliases[name] = origins

    # -- branches ----------------------------------------------------------
    def branches(self, *bodies: list[ast.stmt], exhaustive: bool) -> None:
        """Run alternative bodies; a name is bound after only if every path binds it."""
        before = self.state
        outcomes: list[_State] = []
        for body in bodies:
            self.state = before.copy()
            self.run(body)
            outcomes.append(self.state)
        after = before.copy()
        for outcome in outcomes:
            after.maybe |= outcome.bound | outcome.maybe
        if exhaustive and outcomes:
            common = set.intersection(*(o.bound for o in outcomes))
            after.bound |= common
        after.maybe -= after.bound
        self.state = after

    def loop_body(self, *bodies: list[ast.stmt]) -> None:
        """A loop body may run zero or more times: everything it binds is conditional."""
        self.conditional += 1
        before = self.state
        self.state = before.copy()
        for body in bodies:
            self.run(body)
        self.state.maybe |= self.state.bound - before.bound
        self.state.bound = set(before.bound)
        self.conditional -= 1

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
            root = _root_name(target.value)
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

    def add_import(self, module: str, lineno: int) -> None:
        self.imports.append((module, lineno))
        (self.optional_modules if self.optional else self.required_modules).add(module)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = alias.name.split(".")[0]
            self.add_import(module, node.lineno)
            bound = alias.asname or module
            self.bind(bound)
            if not self.conditional:
                self.definitions[bound] = Definition(
                    "import", _import_source(alias, None, 0), modules=(module,))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        modules: tuple[str, ...] = ()
        if node.level == 0 and node.module:
            modules = (node.module.split(".")[0],)
            self.add_import(modules[0], node.lineno)
        for alias in node.names:
            if alias.name == "*":
                self.star_import = node.lineno
                continue
            bound = alias.asname or alias.name
            self.bind(bound)
            if not self.conditional:
                self.definitions[bound] = Definition(
                    "import", _import_source(alias, node.module, node.level), modules=modules
                )

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        self._visit_arguments_defaults(node.args)
        self.in_annotation += 1
        for arg in _all_args(node.args):
            if arg.annotation is not None:
                self.visit(arg.annotation)
        if node.returns is not None:
            self.visit(node.returns)
        self.in_annotation -= 1
        info = _FunctionScope.analyse(node)
        self._body_imports(info)
        self.bind(node.name)
        if not self.conditional:
            self.definitions[node.name] = Definition(
                "def", self._segment(node), info.free_reads | _definition_reads(node),
                info.free_mutates, info.global_writes, modules=_modules(info.imports),
                definition_reads=_definition_reads(node),
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
        info = _FunctionScope.analyse(node)
        self._body_imports(info)
        # the class body runs now: names it reads outside methods are read now
        for name in info.body_reads:
            self.load(name)
        self.bind(node.name)
        if not self.conditional:
            self.definitions[node.name] = Definition(
                "class", self._segment(node),
                info.free_reads | info.body_reads | _definition_reads(node),
                info.free_mutates, info.global_writes, info.method_reads,
                modules=_modules(info.imports),
                definition_reads=info.body_reads | _definition_reads(node)
            )

    def visit_If(self, node: ast.If) -> None:
        imports = not self.conditional and _has_import(node)
        first = len(self.imports)
        self.visit(node.test)
        self.conditional += 1
        self.optional += imports  # a branch's module may be missing here: like `try`
        self.branches(node.body, node.orelse, exhaustive=True)
        self.optional -= imports
        self.conditional -= 1
        if imports:
            self.conditional_import(node, first)

    def conditional_import(self, node: ast.If, first: int) -> None:
        """`if USE_GPU: import cupy as xp / else: import numpy as xp`: the names it imports
        are modules whichever branch binds them, never data.  One import definition of
        them: the whole statement when it does no work, else its imports only (the
        tests kept), so a copy never repeats the work."""
        copied = node if _declarative(node) else _imports_only(node)
        bound = _bound_by(copied)
        source = self._segment(node) if copied is node else ast.unparse(copied) + "\n"
        definition = Definition(
            "import", source, frozenset(_loaded_names(copied) - bound - BUILTIN_NAMES),
            modules=_modules(self.imports[first:]), optional=True)
        for name in bound:
            self.definitions[name] = definition

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.loop_body([ast.Assign(targets=[node.target], value=ast.Constant(None), lineno=0),
                        _Alias(node.target, node.iter)], node.body, node.orelse)

    def visit__Alias(self, node: _Alias) -> None:
        self.alias(node.target, node.source)

    visit_AsyncFor = visit_For  # type: ignore[assignment]

    def visit_While(self, node: ast.While) -> None:
        self.visit(node.test)
        self.loop_body(node.body, node.orelse)

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            root = _root_name(item.context_expr)
            if root and isinstance(item.context_expr, ast.Name):
                self.mutates.add(root)
            if item.optional_vars is not None:
                self.store_target(item.optional_vars)
        self.run(node.body)

    visit_AsyncWith = visit_With  # type: ignore[assignment]

    def visit_Try(self, node: ast.Try) -> None:
        if is_optional_import(node):
            self.optional_import(node)
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

    def optional_import(self, node: ast.Try) -> None:
        """`try: import x / except ImportError: ...`: one import definition of every name
        it binds, whose source is the whole statement; its modules are optional."""
        first, top = len(self.imports), not self.conditional
        self.optional += 1
        self.conditional += 1
        self.try_branches(node)
        self.conditional -= 1
        self.optional -= 1
        if not top:
            return
        bound = _bound_by(node)
        definition = Definition(
            "import", self._segment(node),
            frozenset(_loaded_names(node) - bound - BUILTIN_NAMES - {"ImportError"}),
            modules=_modules(self.imports[first:]), optional=True)
        for name in bound:
            self.definitions[name] = definition

    def visit_Match(self, node: ast.Match) -> None:
        self.visit(node.subject)
        self.conditional += 1
        bodies = []
        for case in node.cases:
            names = [n for n in _pattern_names(case.pattern)]
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
            root = _root_name(func.value)
            self.visit_non_root(func.value)
            if root:
                if _read_only_call(node):
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
            call = Call(func.id, tuple(_root_name(a) for a in node.args),
                        tuple((kw.arg, _root_name(kw.value)) for kw in node.keywords if kw.arg))
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
        info = _FunctionScope.analyse(node)
        self._body_imports(info)
        self.maybe_reads |= {n for n in info.free_reads if n not in self.state.bound}
        self.uses |= info.free_reads

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        # the first iterable is evaluated in the enclosing scope
        self.visit(node.generators[0].iter)
        info = _FunctionScope.analyse(node)
        for name in info.free_reads:
            self.load(name)
        self.mutates |= info.free_mutates
        for name in info.walrus_targets:
            self.bind(name)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension

    # -- helpers -----------------------------------------------------------
    def _body_imports(self, info: _FunctionScope.Info) -> None:
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


class _FunctionScope(ast.NodeVisitor):
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
    def analyse(cls, node: ast.AST) -> _FunctionScope.Info:
        scope = cls()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for arg in _all_args(node.args):
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
                for name in scope.params & _stored_names(stmt):
                    scope.first_rebind.setdefault(name, i)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    inner = cls.analyse(stmt)
                    scope.method_reads |= inner.free_reads | inner.method_reads
                    scope.mutated |= inner.free_mutates
                    scope.global_writes |= inner.global_writes
                    scope.imports += inner.imports
                    scope.body_reads |= _definition_reads(stmt)
                else:
                    before = set(scope.loaded)
                    scope.collect_locals(stmt)
                    scope.visit(stmt)
                    scope.body_reads |= scope.loaded - before
            scope.body_reads -= scope.local
        else:  # comprehension
            for gen in node.generators:  # type: ignore[attr-defined]
                for name in _target_names(gen.target):
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
            if _binds(stmt, name):
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
            root = _root_name(node.func.value)
            if root and not _read_only_call(node):
                self.mutated.add(root)
        self.generic_visit(node)

    def _store(self, target: ast.expr) -> None:
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            root = _root_name(target.value)
            if root:
                self.mutated.add(root)

    def alias(self, targets: ast.expr, source: ast.expr | None) -> None:
        origins = _alias_origins(source, self.aliases)
        for name in _target_names(targets) if origins else ():
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

    def _nested(self, inner: _FunctionScope.Info) -> None:
        """A def/class/lambda inside this body: everything it may read counts here."""
        self.loaded |= inner.free_reads | inner.body_reads | inner.method_reads
        self.mutated |= inner.free_mutates
        self.imports += inner.imports

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._nested(_FunctionScope.analyse(node))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        inner = _FunctionScope.analyse(node)
        self._nested(inner)
        self.global_writes |= inner.global_writes

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._nested(_FunctionScope.analyse(node))

    def visit_Import(self, node: ast.Import) -> None:
        self.imports += [(alias.name.split(".")[0], node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.imports.append((node.module.split(".")[0], node.lineno))

    def _comprehension(self, node: ast.AST) -> None:
        self.visit(node.generators[0].iter)  # type: ignore[attr-defined]
        inner = _FunctionScope.analyse(node)
        self.loaded |= inner.free_reads
        self.mutated |= inner.free_mutates
        self.local |= inner.walrus_targets

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension


_ELEMENT_METHODS = frozenset({"values", "items", "get", "setdefault"})


class _Alias(ast.stmt):
    """Walker-only statement: a loop target refers to elements of the iterable."""

    _fields = ("target", "source")

    def __init__(self, target: ast.expr, source: ast.expr) -> None:
        super().__init__()
        self.target, self.source = target, source


def _alias_origins(source: ast.expr | None,
                   aliases: dict[str, frozenset[str]]) -> frozenset[str]:
    """Names whose objects `source` may hand out by reference: `m = models["lr"]`,
    `step = pipe.steps[0]`, `for m in models.values()`, `for a, b in zip(xs, ys)`.
    Calls count only when they hand out elements (`d.values()`, `zip(...)`): most
    methods return new objects (`X2 = X.copy()` must not make `X` change with `X2`,
    or two stages evaluating the same test set would stop running in parallel)."""
    if source is None:
        return frozenset()
    if isinstance(source, (ast.Tuple, ast.List)):
        return frozenset().union(*(_alias_origins(e, aliases) for e in source.elts))
    if isinstance(source, ast.Call) and isinstance(source.func, ast.Name) and \
            source.func.id in {"zip", "enumerate", "reversed", "list", "tuple", "iter"}:
        return frozenset().union(*(_alias_origins(a, aliases) for a in source.args))
    if isinstance(source, ast.Call) and not (isinstance(source.func, ast.Attribute)
                                             and source.func.attr in _ELEMENT_METHODS):
        return frozenset()
    root = _root_name(source)
    if root is None:
        return frozenset()
    return frozenset({root}) | aliases.get(root, frozenset())


def _root_name(node: ast.expr) -> str | None:
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


def _read_only_call(call: ast.Call) -> bool:
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


def _all_args(args: ast.arguments) -> list[ast.arg]:
    found = args.posonlyargs + args.args + args.kwonlyargs
    if args.vararg:
        found.append(args.vararg)
    if args.kwarg:
        found.append(args.kwarg)
    return found


def _stored_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _target_names(target: ast.expr) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _loaded_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _binds(stmt: ast.AST, name: str) -> bool:
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
    return False


def _pattern_names(pattern: ast.pattern) -> list[str]:
    names = []
    for node in ast.walk(pattern):
        if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.append(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.append(node.rest)
    return names


def _modules(imports: list[tuple[str, int]] | tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(module for module, _ in imports))


def _import_source(alias: ast.alias, module: str | None, level: int) -> str:
    asname = f" as {alias.asname}" if alias.asname else ""
    if module is None and level == 0:
        return f"import {alias.name}{asname}\n"
    return f"from {'.' * level}{module or ''} import {alias.name}{asname}\n"


def _definition_reads(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> frozenset[str]:
    """Names a `def`/`class` statement itself evaluates: decorators, defaults, annotations, bases."""
    parts: list[ast.AST] = list(node.decorator_list)
    if isinstance(node, ast.ClassDef):
        parts += node.bases + [kw.value for kw in node.keywords]
    else:
        parts += node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
        parts += [a.annotation for a in _all_args(node.args) if a.annotation is not None]
        if node.returns is not None:
            parts.append(node.returns)
    return frozenset(name for part in parts for name in _loaded_names(part)) - BUILTIN_NAMES


#: Handlers that catch a failed import (a bare `except:` too): with a `try:` body of
#: nothing but imports and constants, nothing else can have failed.
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def is_optional_import(node: ast.Try) -> bool:
    """`try:` of nothing but imports (and constants) with a handler catching ImportError."""
    if node.finalbody or not any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in node.body):
        return False
    if not all(_declarative(stmt) for stmt in node.body + node.orelse):
        return False
    for handler in node.handlers:
        kind = handler.type
        if kind is None:
            return True
        names = kind.elts if isinstance(kind, ast.Tuple) else [kind]
        if any(isinstance(n, ast.Name) and n.id in _IMPORT_ERRORS for n in names):
            return True
    return False


def _bound_by(node: ast.stmt) -> set[str]:
    """Names an optional or conditional import statement binds (not `except ... as e`)."""
    bound = _stored_names(node)
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Import, ast.ImportFrom)):
            bound |= {a.asname or a.name.split(".")[0] for a in sub.names}
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            bound.discard(sub.name)
    return bound


def _has_import(node: ast.If) -> bool:
    """An `if` with an import in one of its branches (not inside a def there)."""
    todo: list[ast.stmt] = node.body + node.orelse
    while todo:
        stmt = todo.pop()
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) or (
                isinstance(stmt, ast.Try) and is_optional_import(stmt)):
            return True
        if isinstance(stmt, ast.If):
            todo += stmt.body + stmt.orelse
    return False


def _imports_only(node: ast.If) -> ast.If:
    """`node` with nothing but its imports (and the `if`s holding them) in its branches."""
    def keep(body: list[ast.stmt]) -> list[ast.stmt]:
        kept: list[ast.stmt] = []
        for stmt in body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)) or (
                    isinstance(stmt, ast.Try) and is_optional_import(stmt)):
                kept.append(stmt)
            elif isinstance(stmt, ast.If) and _has_import(stmt):
                kept.append(_imports_only(stmt))
        return kept

    return ast.If(node.test, keep(node.body) or [ast.Pass()], keep(node.orelse))


def _declarative(stmt: ast.stmt) -> bool:
    """An import, def/class, literal constant, docstring, `pass` or setup magic: no work;
    also a conditional import (`if sys.version_info >= (3, 11): import tomllib ...`)."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef,
                         ast.ClassDef, ast.Pass)):
        return True
    if isinstance(stmt, ast.Try):
        return is_optional_import(stmt)
    if isinstance(stmt, ast.If):
        return _has_import(stmt) and all(_declarative(s) for s in stmt.body + stmt.orelse)
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return (stmt.value is not None and _literal(stmt.value)
                and all(isinstance(t, (ast.Name, ast.Tuple)) or _option_target(t)
                        for t in targets))
    if isinstance(stmt, ast.Expr):
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
    return False


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


def names_used(flow: CellFlow) -> frozenset[str]:
    """Every name a cell may load, also inside the bodies of its defs and methods."""
    found = set(flow.uses | flow.reads | flow.maybe_reads)
    for definition in flow.definitions.values():
        found |= definition.free_reads | definition.method_reads
    return frozenset(found)


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
