"""The state of a module-level walk: what is bound for sure or maybe, read, mutated.

Python binds a name in a branch only maybe: `branches` and `loop_body` merge
the alternatives so a read after a conditional binding is a `maybe_read`
(an input only if an earlier stage provides it), and `mutate` reaches the
objects a name is an alias of (`m = models["lr"]`).  Using a function
defined earlier in the cell reads its free names there (`load`).
"""

from __future__ import annotations

import ast

from nb2prod.dataflow.flow import Call, CellFlow, Definition
from nb2prod.dataflow.names import alias_origins, stored_names, target_names


class State:
    """Definitely and possibly bound names at one point of execution."""

    def __init__(self, bound: set[str] | None = None, maybe: set[str] | None = None) -> None:
        self.bound = set(bound or ())
        self.maybe = set(maybe or ())

    def copy(self) -> State:
        return State(self.bound, self.maybe)



class Bindings(ast.NodeVisitor):
    """What a walk has seen so far; the statement visitors (`walker`) drive it."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.state = State()
        self.reads: set[str] = set()
        self.maybe_reads: set[str] = set()
        self.writes: set[str] = set()
        self.mutates: set[str] = set()
        self.deletes: set[str] = set()
        self.imports: list[tuple[str, int]] = []
        self.definitions: dict[str, Definition] = {}
        self.uses: set[str] = set()
        self.star_import: int | None = None
        self.conditional = 0  # enclosing branches and loops
        self.loop_names: list[frozenset[str]] = []  # what each enclosing loop binds
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
        origins = alias_origins(source, self.aliases)
        if origins:
            for name in target_names(targets):
                self.aliases[name] = origins

    # -- branches ----------------------------------------------------------
    def branches(self, *bodies: list[ast.stmt], exhaustive: bool) -> None:
        """Run alternative bodies; a name is bound after only if every path binds it."""
        before = self.state
        outcomes: list[State] = []
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

    @property
    def in_branch(self) -> bool:
        """Inside an `if`/`try`/`match` branch, not only a loop: an import there belongs
        to that statement's one definition (a loop's body is copied by no one, so an
        import in it gets its own, like one at the top)."""
        return self.conditional > len(self.loop_names)

    def loop_body(self, loop: ast.stmt, *bodies: list[ast.stmt]) -> None:
        """A loop body may run zero or more times: everything it binds is conditional."""
        self.conditional += 1
        self.loop_names.append(frozenset(stored_names(loop)))
        before = self.state
        self.state = before.copy()
        for body in bodies:
            self.run(body)
        self.state.maybe |= self.state.bound - before.bound
        self.state.bound = set(before.bound)
        self.loop_names.pop()
        self.conditional -= 1

    def add_import(self, module: str, lineno: int) -> None:
        self.imports.append((module, lineno))
        (self.optional_modules if self.optional else self.required_modules).add(module)
