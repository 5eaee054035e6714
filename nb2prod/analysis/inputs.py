"""A stage's inputs, and the imports and definitions copied into it.

Rules (DESIGN.md "Data between stages"): imports, `functions` definitions and
parameters are not data; a `def`/`class` made in one stage and used by another
is copied as source, and so is the import statement of every module a stage
uses, wherever it was written; names in method bodies are read only if some
earlier stage provides them (the analysis cannot see which methods run); a
service stage provides nothing to other stages.  Calling a function reads its
free names at the call (`_free_reads`), which is why each stage is walked cell
by cell with the functions it knows so far.
"""

from __future__ import annotations

from nb2prod.analysis.layout import Layout
from nb2prod.analysis.model import Stage
from nb2prod.analysis.providers import Providers
from nb2prod.dataflow import BUILTIN_NAMES, Definition


def resolve_inputs(layout: Layout, providers: Providers, entrypoint: str) -> None:
    """Fill in every stage's `inputs`, its providers' `outputs`, `copied` and
    `before_prelude`; problems (a name nobody provides, ...) go to `layout`."""
    prelude, prelude_functions = layout.prelude_names()
    modules = providers.import_names()
    before_parameters = parameter_imports(layout, providers, modules)
    first = prelude_imports(layout, providers, prelude, modules)
    for stage in layout.stages.values():
        stage.copied.update(first)
        stage.copied.update(before_parameters)
        stage.before_parameters = set(before_parameters)
        stage.before_prelude = set(first) - stage.before_parameters
        resolver = _StageResolver(layout, providers, stage, prelude, modules,
                                  dict(prelude_functions))
        bound: set[str] = set()
        maybe: set[str] = set()
        for index in stage.cells:
            flow = layout.flows[index]
            called, in_methods = _free_reads(flow.uses - set(flow.definitions),
                                             resolver.known_functions)
            local = dict(flow.definitions)
            local_called, local_methods = _free_reads(flow.reads & set(local), local)
            reads = set(flow.reads) | called | local_called
            maybe_reads = set(flow.maybe_reads) | in_methods | local_methods
            resolver.resolve_reads(index, reads, maybe_reads, bound, maybe)
            bound |= flow.writes
            maybe |= flow.maybe_writes | flow.mutates | providers.mutated_by_calls.get(index, set())
            resolver.known_functions.update({k: d for k, d in local.items() if d.kind != "import"})
        if stage.type == "service" and stage.cells:
            # the server calls the entrypoint: its free names are read at the end
            served, in_methods = _free_reads({entrypoint}, resolver.known_functions)
            resolver.resolve_reads(stage.cells[-1] + 1, served, in_methods, bound, maybe)
        resolver.copy_for_unpickling(bound | maybe)
        stage.copied = _definition_order(stage.copied)


def prelude_imports(layout: Layout, providers: Providers, prelude: set[str],
                    modules: set[str]) -> dict[str, Definition]:
    """The prelude cells run first in every stage: a module one of them uses at once
    (`@functools.lru_cache` on a def, `def f(sep=os.sep)`), imported in a cell outside
    the prelude (in no stage, or in a stage), is copied before them."""
    return _imports_read(layout, providers, sorted(layout.prelude_cells()), prelude, modules)


def parameter_imports(layout: Layout, providers: Providers,
                      modules: set[str]) -> dict[str, Definition]:
    """A stage notebook runs its parameters cell first (papermill sets the values
    right after it): a module it reads (`DATA_DIR = os.environ.get(...)`), imported
    in the imports cell or anywhere else, is copied before it."""
    return _imports_read(layout, providers, layout.prelude["parameters"],
                         parameter_names(layout), modules)


def parameter_names(layout: Layout) -> set[str]:
    """Names the parameters cells bind."""
    return {n for i in layout.prelude["parameters"] if i in layout.flows
            for n in layout.flows[i].writes | layout.flows[i].maybe_writes}


def _imports_read(layout: Layout, providers: Providers, cells: list[int], bound: set[str],
                  modules: set[str]) -> dict[str, Definition]:
    """The import definitions of the modules `cells` read (and what running them
    reads: `import sys` for `if sys.version_info ...: import tomllib`), but `bound`."""
    found: dict[str, Definition] = {}

    def add(name: str, before: int) -> None:
        source = None if name in bound or name in found or name not in modules \
            else providers.import_for(name, before)
        if source is not None:
            found[name] = layout.flows[source].definitions[name]
            for free in sorted(found[name].free_reads):
                add(free, before)

    for index in cells:
        flow = layout.flows.get(index)
        for name in sorted(flow.reads | flow.maybe_reads) if flow else ():
            add(name, index)
    return found


class _StageResolver:
    """Where each name one stage reads comes from: an input, a copy, the prelude."""

    def __init__(self, layout: Layout, providers: Providers, stage: Stage, prelude: set[str],
                 modules: set[str], known_functions: dict[str, Definition]) -> None:
        self.layout, self.providers, self.stage = layout, providers, stage
        self.prelude, self.modules = prelude, modules
        #: the defs/classes the stage has seen so far (its own, the prelude's, copies)
        self.known_functions = known_functions

    def resolve_reads(self, index: int, reads: set[str], maybe_reads: set[str],
                      bound: set[str], maybe: set[str]) -> None:
        for name in sorted(reads | maybe_reads):
            if name in bound:
                continue
            definite = name in reads and name not in maybe
            self.resolve_name(name, index, definite)

    def resolve_name(self, name: str, index: int, definite: bool) -> None:
        """Decide where a name read by the stage at cell `index` comes from."""
        stage, layout = self.stage, self.layout
        if name in stage.inputs or name in stage.copied:
            return
        if name in self.modules:
            if name in self.prelude:
                return
            source = self.providers.import_for(name, index)
            if source is not None:
                if layout.cell_stage.get(source) != stage.name:
                    self.copy(name, layout.flows[source].definitions[name], index)
                return
        found = self.providers.provider(name, index, stage.name)
        deleted = self.providers.deleted_after_provider(name, index, stage.name)
        if deleted is not None and definite:
            layout.problem(f"stage '{stage.name}' reads '{name}', but {layout.nb.label(deleted)} "
                           f"(stage '{layout.cell_stage[deleted]}') deletes it before: the "
                           "notebook would fail here too", index)
            return
        if found is not None:
            provider, definition = found
            if definition is not None:  # a def or class: copy the source
                self.copy(name, definition, index)
                return
            if layout.stages[provider].type == "service":
                layout.problem(f"'{name}' is set by service stage '{provider}'; a service stage "
                               f"cannot provide names to stage '{stage.name}'", index)
                return
            stage.inputs[name] = provider
            outputs = layout.stages[provider].outputs
            if name not in outputs:
                outputs.append(name)
            return
        if name in self.prelude or name in BUILTIN_NAMES:
            return
        self._not_provided(name, index, definite)

    def _not_provided(self, name: str, index: int, definite: bool) -> None:
        """No stage cell provides `name`: a cell in no stage may (say which), else a
        definite read is a name the notebook would not find either."""
        layout, stage = self.layout, self.stage
        elsewhere = [i for i in layout.orphans + layout.skipped
                     if i < index and i in layout.flows and name in layout.flows[i].provides]
        if elsewhere:
            where = "belongs to no stage" if elsewhere[-1] in layout.orphans else "is tagged skip"
            layout.problem(f"stage '{stage.name}' reads '{name}', defined only in "
                           f"{layout.nb.label(elsewhere[-1])}, which {where}: tag that cell "
                           "'imports', 'functions', 'parameters' or a stage", index)
        elif definite:
            layout.problem(f"stage '{stage.name}' reads '{name}' but no earlier cell defines it",
                           index)

    def copy(self, name: str, definition: Definition, index: int) -> None:
        """Copy an import/def/class into the stage, with what running its source needs."""
        self.stage.copied[name] = definition
        if definition.kind != "import":
            self.known_functions[name] = definition
        for free in sorted(definition.free_reads | definition.method_reads):
            self.resolve_name(free, index, False)

    def copy_for_unpickling(self, bound: set[str]) -> None:
        """A loaded object may be an instance of a class (or hold a function) its producer
        defined: pickle finds those by name, so the consumer gets their definitions too.
        Only what defining them needs comes along (imports, other defs), never data."""
        stage, layout = self.stage, self.layout
        for producer in sorted(set(stage.inputs.values())):
            made = layout.stages[producer]
            found = {name: d for i in made.cells for name, d in layout.flows[i].definitions.items()
                     if d.kind != "import"}
            found.update({n: d for n, d in made.copied.items() if d.kind != "import"})
            for name, definition in sorted(found.items()):
                if name in stage.copied or name in bound or name in self.prelude:
                    continue
                stage.copied[name] = definition
                needed = definition.free_reads | definition.method_reads
                for free in sorted(needed & (self.modules | set(found))):
                    if free not in stage.copied and free not in bound:
                        if free in found:
                            stage.copied[free] = found[free]
                        else:
                            self.resolve_name(free, stage.cells[0], False)


def _definition_order(copied: dict[str, Definition]) -> dict[str, Definition]:
    """Copied sources in an order that runs: imports first (`import sys` before `if
    sys.version_info ...: import tomllib`), then each def/class after the copied ones
    its statement needs (`class B(A)`; a cycle keeps the found order)."""
    ordered: dict[str, Definition] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered or name in visiting:
            return
        visiting.add(name)
        for dep in sorted(copied[name].free_reads & set(copied)):
            visit(dep)
        ordered[name] = copied[name]

    for name in sorted(copied, key=lambda n: copied[n].kind != "import"):  # stable
        visit(name)
    return ordered


def _free_reads(names: set[str], functions: dict[str, Definition]) -> tuple[set[str], set[str]]:
    """Free names read by calling `names`, following calls between known functions:
    (read for sure, read only if a method runs)."""
    found: set[str] = set()
    in_methods: set[str] = set()
    todo = [(n, False) for n in names if n in functions]
    seen: set[tuple[str, bool]] = set()
    while todo:
        name, method = todo.pop()
        if (name, method) in seen:
            continue
        seen.add((name, method))
        definition = functions[name]
        for free, via_method in [(f, method) for f in definition.free_reads] + [
                (f, True) for f in definition.method_reads]:
            (in_methods if via_method else found).add(free)
            if free in functions:
                todo.append((free, via_method))
    return found, in_methods - found
