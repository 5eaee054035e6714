"""From a tagged notebook to stages, their inputs and outputs, and the DAG.

Pure: takes a loaded `Notebook`, returns an `Analysis` or raises `UserError`
listing *every* problem found (a user fixing tags wants them all at once).

Rules (DESIGN.md "Cell tags", "Data between stages"):
- untagged code cells join the stage of the nearest tagged cell above; after
  an imports/functions/parameters cell, only while they do no work (imports,
  def/class, literal constants): exploration above the first stage runs in
  no stage;
- a name a stage reads before binding it is provided by the last earlier
  stage cell (notebook order) that binds or mutates it;
- imports, `functions` definitions and parameters are not data; a `def`/`class`
  made in one stage and used by another is copied as source, and so is the
  import statement of every module a stage uses, wherever it was written;
- names in method bodies are read only if some earlier stage provides them
  (the analysis cannot see which methods run);
- a service stage provides nothing to other stages.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from nb2prod import dag, files
from nb2prod.dataflow import (
    BUILTIN_NAMES,
    TOO_DEEP,
    CellFlow,
    CellSyntaxError,
    Definition,
    analyze_cell,
    names_used,
    python_source,
    without_imports,
)
from nb2prod.errors import Problem, UserError
from nb2prod.metric_names import metric_names
from nb2prod.notebook import Notebook
from nb2prod.tags import CellTags, parse_tags

PRELUDE_ROLES = ("parameters", "imports", "functions")


@dataclass
class Stage:
    """One stage: its cells, data in and out, DAG edges and runtime hints."""

    name: str
    type: str  # "batch" | "service"
    cells: list[int] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # name -> providing stage
    outputs: list[str] = field(default_factory=list)
    copied: dict[str, Definition] = field(default_factory=dict)  # imports/defs from other stages
    #: the copied imports the parameters/imports/functions cells need (a decorator, a
    #: default value): they run before those cells
    before_prelude: set[str] = field(default_factory=set)
    pruned: dict[int, str] = field(default_factory=dict)  # imports cell -> source minus unused
    file_inputs: dict[str, str] = field(default_factory=dict)  # path literal -> writing stage
    metrics: list[str] = field(default_factory=list)
    hints: dict[str, str] = field(default_factory=dict)
    secrets: list[tuple[str, str, str]] = field(default_factory=list)
    position: int = 0  # 1-based, in topological order

    @property
    def directory(self) -> str:
        return f"stage-{self.position}-{self.name}"


@dataclass
class Analysis:
    """Everything split needs to render a pipeline."""

    notebook: Notebook
    stages: list[Stage]
    edges: list[dag.Edge]
    prelude: dict[str, list[int]]  # role -> cell indices
    flows: dict[int, CellFlow]
    warnings: list[Problem]
    paths: dict[int, files.CellPaths] = field(default_factory=dict)  # stage cell -> literals
    unassigned: dict[int, str] = field(default_factory=dict)  # cell -> why it runs in no stage

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def analyze(notebook: Notebook, entrypoint: str = "predict") -> Analysis:
    """Analyse a notebook; raise `UserError` with every problem if it cannot be split."""
    try:
        return _analyze(notebook, entrypoint)
    except RecursionError:  # a cell's own walk says which cell; this is the backstop
        raise UserError(Problem(TOO_DEEP, file=notebook.path.name)) from None


def _analyze(notebook: Notebook, entrypoint: str) -> Analysis:
    builder = _Builder(notebook, entrypoint)
    builder.analyse_flows()
    builder.assign_cells()
    builder.check_flows()
    if not builder.problems:
        builder.argument_mutations()
        builder.resolve_inputs()
        builder.resolve_files()
        builder.resolve_metrics()
        builder.prune_imports()
        builder.check_services()
        builder.check_stage_names()
        builder.build_dag()
    if builder.problems:
        raise UserError(builder.problems)
    return builder.result()


class _Builder:
    """Holds the intermediate state of one analysis."""

    def __init__(self, notebook: Notebook, entrypoint: str) -> None:
        self.nb = notebook
        self.file = notebook.path.name
        self.entrypoint = entrypoint
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.stages: dict[str, Stage] = {}
        self.cell_stage: dict[int, str] = {}
        self.prelude: dict[str, list[int]] = {role: [] for role in PRELUDE_ROLES}
        self.orphans: list[int] = []  # code cells before the first stage tag
        self.skipped: list[int] = []
        self.metrics_cells: list[int] = []
        self.tags: dict[int, CellTags] = {}
        self.flows: dict[int, CellFlow] = {}
        self.edges: list[dag.Edge] = []
        self._providers: dict[str, list[int]] | None = None  # name -> stage cells providing it
        self._deleters: dict[str, list[int]] | None = None   # name -> stage cells deleting it
        self.paths: dict[int, files.CellPaths] = {}
        self._imports: dict[str, list[int]] | None = None  # name -> cells importing it
        self.syntax_errors: dict[int, CellSyntaxError] = {}
        self.mutated_by_calls: dict[int, frozenset[str]] = {}  # stage cell -> via arguments

    def problem(self, message: str, cell: int | None = None) -> None:
        self.problems.append(Problem(message, cell=cell, file=self.file,
                                     cell_line=None if cell is None else self.nb.first_line(cell)))

    # -- 1. which cell belongs where ----------------------------------------
    def assign_cells(self) -> None:
        code = [c for c in self.nb.cells if c.cell_type == "code"]
        if not code:
            self.problem("the notebook has no code cells")
            return
        current: str | None = None
        block: str | None = None  # untagged cells after a prelude cell join it while idle
        typos = False
        for cell in code:
            tags = self.tags[cell.index]
            for message in tags.errors:
                self.problem(message, cell.index)
            if current is None and tags.stage_typos and not tags.stage:
                typos = True  # the typo is why there is no stage here: say so on this cell
                for message in tags.stage_typos:
                    self.problem(message, cell.index)
            for message in tags.warnings:
                if current is not None or message not in tags.stage_typos or tags.stage:
                    self.warnings.append(Problem(message, cell=cell.index, file=self.file,
                                                 cell_line=self.nb.first_line(cell.index)))
            if tags.role and tags.stage:
                self.problem(f"a '{tags.role}' cell cannot also start stage '{tags.stage}'", cell.index)
                continue
            if tags.role == "skip":
                self.skipped.append(cell.index)
                continue
            if tags.role in PRELUDE_ROLES:
                self.prelude[tags.role].append(cell.index)
                block = tags.role
                continue
            if tags.stage or tags.after or tags.hints or tags.secrets or tags.metrics:
                block = None
            elif block is not None:
                flow = self.flows.get(cell.index)
                if flow is not None and flow.declarative:
                    self.prelude[block].append(cell.index)
                    continue
                block = None  # the first cell doing real work ends the block
            if tags.stage:
                current = tags.stage
                existing = self.stages.get(current)
                if existing is None:
                    self.stages[current] = Stage(current, tags.stage_type or "batch")
                elif existing.type != tags.stage_type:
                    self.problem(f"stage '{current}' is tagged both batch and service", cell.index)
            if current is None:
                if tags.after or tags.hints or tags.secrets or tags.metrics:
                    self.problem("this cell has stage tags but belongs to no stage; "
                                 "tag it (or a cell above) with stage:NAME", cell.index)
                self.orphans.append(cell.index)
                continue
            stage = self.stages[current]
            stage.cells.append(cell.index)
            self.cell_stage[cell.index] = current
            stage.after += [a for a in tags.after if a not in stage.after]
            stage.hints.update(tags.hints)
            stage.secrets += tags.secrets
            if tags.metrics:
                self.metrics_cells.append(cell.index)
        if code and not self.stages and not typos:
            self.problem("no stage tags: tag the first cell of each stage with "
                         "'stage:NAME', 'train' or 'serve'")

    # -- 0. per-cell data flow (first: the block rule needs to know what a cell does)
    def analyse_flows(self) -> None:
        for cell in self.nb.cells:
            if cell.cell_type != "code":
                continue
            self.tags[cell.index] = parse_tags(list(cell.tags))
            try:
                self.flows[cell.index] = analyze_cell(cell.source)
            except CellSyntaxError as exc:
                self.syntax_errors[cell.index] = exc

    def check_flows(self) -> None:
        """Syntax errors and star imports matter only in cells that run in a stage."""
        wanted = set(self.cell_stage) | {i for cells in self.prelude.values() for i in cells}
        for index in sorted(wanted):
            if index in self.syntax_errors:
                self.problem(str(self.syntax_errors[index]), index)
            flow = self.flows.get(index)
            if flow is not None and flow.star_import is not None:
                self.problem(f"star import (line {flow.star_import}) hides which names are used; "
                             "import the names explicitly", index)

    # -- 3. inputs, outputs, copied definitions -------------------------------
    def prelude_names(self) -> tuple[set[str], dict[str, Definition]]:
        names: set[str] = set()
        functions: dict[str, Definition] = {}
        for role in PRELUDE_ROLES:
            for index in self.prelude[role]:
                flow = self.flows.get(index)
                if flow:
                    names |= flow.writes | flow.maybe_writes
                    functions.update({k: d for k, d in flow.definitions.items() if d.kind != "import"})
        return names, functions

    def import_names(self) -> set[str]:
        """Names bound by an import anywhere: modules are never data."""
        if self._imports is None:
            self._imports = {}
            for index in sorted(self.flows):
                for name, d in self.flows[index].definitions.items():
                    if d.kind == "import":
                        self._imports.setdefault(name, []).append(index)
        return set(self._imports)

    def import_for(self, name: str, before: int) -> int | None:
        """The cell whose import binds `name` for a reader at cell `before`.

        The last import before it, wherever it is (another stage, a cell in no
        stage); None if a later plain assignment rebinds the name (then it is data).
        Without one before, the first import after: `every stage that uses a
        module gets its import`, also when the notebook imports it further down.
        """
        cells = (self._imports or {}).get(name, [])
        earlier = cells[: bisect.bisect_left(cells, before)]
        if not earlier:
            return cells[0] if cells else None
        last = earlier[-1]
        for index in self.providers().get(name, []):
            flow = self.flows[index]
            if last < index < before and name in flow.writes | flow.maybe_writes \
                    and name not in flow.definitions:
                return None
        return last

    def argument_mutations(self) -> None:
        """`add_features(train)` with `def add_features(df): df["r"] = ...` in another
        cell changes `train`: the calling cell is its provider from then on."""
        defs: dict[str, list[tuple[int, Definition]]] = {}
        for index in sorted(self.flows):
            for name, d in self.flows[index].definitions.items():
                if d.kind == "def" and d.mutated_params:
                    defs.setdefault(name, []).append((index, d))
        if not defs:
            return
        prelude = {i for cells in self.prelude.values() for i in cells}
        for index in self.cell_stage:
            flow = self.flows[index]
            found: set[str] = set()
            for call in flow.calls:
                if call.func in flow.definitions or call.func not in defs:
                    continue
                seen = [d for i, d in defs[call.func] if i < index or i in prelude]
                if seen:
                    found |= seen[-1].mutated_by(call)
            if found - flow.mutates:
                self.mutated_by_calls[index] = frozenset(found)

    def provides(self, index: int) -> frozenset[str]:
        return self.flows[index].provides | self.mutated_by_calls.get(index, frozenset())

    def providers(self) -> dict[str, list[int]]:
        """name -> the stage cells (in order) that bind or mutate it."""
        if self._providers is None:
            self._providers = {}
            for index in sorted(self.cell_stage):
                for provided in self.provides(index) if index in self.flows else ():
                    self._providers.setdefault(provided, []).append(index)
        return self._providers

    def provider(self, name: str, before: int, consumer: str) -> tuple[str, Definition | None] | None:
        """The stage cell that last bound or mutated `name` before cell `before`."""
        cells = self.providers().get(name, [])
        for index in reversed(cells[: bisect.bisect_left(cells, before)]):
            stage = self.cell_stage[index]
            if stage != consumer:
                return stage, self.flows[index].definitions.get(name)
        return None

    def deleted_after_provider(self, name: str, before: int, consumer: str) -> int | None:
        """A cell of another stage that `del`s `name` after its last provider, before `before`."""
        if self._deleters is None:
            self._deleters = {}
            for index in sorted(self.cell_stage):
                flow = self.flows.get(index)
                for deleted in flow.deletes if flow else ():
                    self._deleters.setdefault(deleted, []).append(index)
        deleters = self._deleters.get(name)
        if not deleters:
            return None
        providers = (self._providers or {}).get(name, [])
        last_provider = next((i for i in reversed(providers[: bisect.bisect_left(providers, before)])
                              if self.cell_stage[i] != consumer), -1)
        found = [i for i in deleters[: bisect.bisect_left(deleters, before)]
                 if i > last_provider and self.cell_stage[i] != consumer]
        return found[-1] if found else None

    def resolve_inputs(self) -> None:
        prelude, prelude_functions = self.prelude_names()
        modules = self.import_names()
        first = self.prelude_imports(prelude, modules)
        for stage in self.stages.values():
            stage.copied.update(first)
            stage.before_prelude = set(first)
            bound: set[str] = set()
            maybe: set[str] = set()
            known_functions = dict(prelude_functions)
            for index in stage.cells:
                flow = self.flows[index]
                called, in_methods = _free_reads(flow.uses - set(flow.definitions),
                                                 known_functions)
                local = dict(flow.definitions)
                local_called, local_methods = _free_reads(flow.reads & set(local), local)
                reads = set(flow.reads) | called | local_called
                maybe_reads = set(flow.maybe_reads) | in_methods | local_methods
                self._resolve_reads(stage, index, reads, maybe_reads, bound, maybe,
                                    prelude, modules, known_functions)
                bound |= flow.writes
                maybe |= flow.maybe_writes | flow.mutates | self.mutated_by_calls.get(index, set())
                known_functions.update({k: d for k, d in local.items() if d.kind != "import"})
            if stage.type == "service" and stage.cells:
                # the server calls the entrypoint: its free names are read at the end
                served, in_methods = _free_reads({self.entrypoint}, known_functions)
                self._resolve_reads(stage, stage.cells[-1] + 1, served, in_methods, bound, maybe,
                                    prelude, modules, known_functions)
            self.copy_for_unpickling(stage, bound | maybe, prelude, modules, known_functions)
            stage.copied = _definition_order(stage.copied)

    def prelude_imports(self, prelude: set[str], modules: set[str]) -> dict[str, Definition]:
        """The prelude cells run first in every stage: a module one of them uses at once
        (`@functools.lru_cache` on a def, `def f(sep=os.sep)`), imported in a cell outside
        the prelude (in no stage, or in a stage), is copied before them."""
        found: dict[str, Definition] = {}

        def add(name: str, before: int) -> None:
            source = None if name in prelude or name in found or name not in modules \
                else self.import_for(name, before)
            if source is not None:
                found[name] = self.flows[source].definitions[name]
                for free in sorted(found[name].free_reads):
                    add(free, before)

        for index in sorted(i for cells in self.prelude.values() for i in cells):
            flow = self.flows.get(index)
            for name in sorted(flow.reads | flow.maybe_reads) if flow else ():
                add(name, index)
        return found

    def copy_for_unpickling(self, stage: Stage, bound: set[str], prelude: set[str],
                            modules: set[str], known_functions: dict[str, Definition]) -> None:
        """A loaded object may be an instance of a class (or hold a function) its producer
        defined: pickle finds those by name, so the consumer gets their definitions too.
        Only what defining them needs comes along (imports, other defs), never data."""
        for producer in sorted(set(stage.inputs.values())):
            made = self.stages[producer]
            found = {name: d for i in made.cells for name, d in self.flows[i].definitions.items()
                     if d.kind != "import"}
            found.update({n: d for n, d in made.copied.items() if d.kind != "import"})
            for name, definition in sorted(found.items()):
                if name in stage.copied or name in bound or name in prelude:
                    continue
                stage.copied[name] = definition
                needed = definition.free_reads | definition.method_reads
                for free in sorted(needed & (modules | set(found))):
                    if free not in stage.copied and free not in bound:
                        if free in found:
                            stage.copied[free] = found[free]
                        else:
                            self.resolve_name(stage, free, stage.cells[0], False, prelude,
                                              modules, known_functions)

    def _resolve_reads(self, stage: Stage, index: int, reads: set[str], maybe_reads: set[str],
                       bound: set[str], maybe: set[str], prelude: set[str], modules: set[str],
                       known_functions: dict[str, Definition]) -> None:
        for name in sorted(reads | maybe_reads):
            if name in bound:
                continue
            definite = name in reads and name not in maybe
            self.resolve_name(stage, name, index, definite, prelude, modules, known_functions)

    def resolve_name(self, stage: Stage, name: str, index: int, definite: bool,
                     prelude: set[str], modules: set[str],
                     known_functions: dict[str, Definition]) -> None:
        """Decide where a name read by `stage` at cell `index` comes from."""
        if name in stage.inputs or name in stage.copied:
            return
        if name in modules:
            if name in prelude:
                return
            source = self.import_for(name, index)
            if source is not None:
                if self.cell_stage.get(source) != stage.name:
                    self.copy(stage, name, self.flows[source].definitions[name], index,
                              prelude, modules, known_functions)
                return
        found = self.provider(name, index, stage.name)
        deleted = self.deleted_after_provider(name, index, stage.name)
        if deleted is not None and definite:
            self.problem(f"stage '{stage.name}' reads '{name}', but {self.nb.label(deleted)} (stage "
                         f"'{self.cell_stage[deleted]}') deletes it before: the notebook "
                         "would fail here too", index)
            return
        if found is not None:
            provider, definition = found
            if definition is not None:  # a def or class: copy the source
                self.copy(stage, name, definition, index, prelude, modules, known_functions)
                return
            if self.stages[provider].type == "service":
                self.problem(f"'{name}' is set by service stage '{provider}'; a service stage "
                             f"cannot provide names to stage '{stage.name}'", index)
                return
            stage.inputs[name] = provider
            outputs = self.stages[provider].outputs
            if name not in outputs:
                outputs.append(name)
            return
        if name in prelude or name in BUILTIN_NAMES:
            return
        elsewhere = [i for i in self.orphans + self.skipped
                     if i < index and i in self.flows and name in self.flows[i].provides]
        if elsewhere:
            where = "belongs to no stage" if elsewhere[-1] in self.orphans else "is tagged skip"
            self.problem(f"stage '{stage.name}' reads '{name}', defined only in "
                         f"{self.nb.label(elsewhere[-1])}, which {where}: tag that cell 'imports', 'functions', "
                         "'parameters' or a stage", index)
        elif definite:
            self.problem(f"stage '{stage.name}' reads '{name}' but no earlier cell defines it",
                         index)

    def copy(self, stage: Stage, name: str, definition: Definition, index: int,
             prelude: set[str], modules: set[str], known_functions: dict[str, Definition]) -> None:
        """Copy an import/def/class into `stage`, with what running its source needs."""
        stage.copied[name] = definition
        if definition.kind != "import":
            known_functions[name] = definition
        for free in sorted(definition.free_reads | definition.method_reads):
            self.resolve_name(stage, free, index, False, prelude, modules, known_functions)

    def resolve_files(self) -> None:
        """A path literal one stage writes and a later one reads is a data edge (nb2prod.files)."""
        by_index = {c.index: c for c in self.nb.cells}
        self.paths = {i: files.cell_paths(by_index[i].source) for i in sorted(self.cell_stage)}
        services = {s.name for s in self.stages.values() if s.type == "service"}
        cells = [(self.cell_stage[i], i, paths) for i, paths in self.paths.items()]
        for producer, consumer, path in files.plan(cells, services=services).edges:
            self.stages[consumer].file_inputs.setdefault(path, producer)

    # -- 4. metrics ------------------------------------------------------------
    def resolve_metrics(self) -> None:
        """Names a metrics cell shows are recorded by the stage that provides them;
        parameters (Kale prints them in its `pipeline-metrics` cell) by the cell's stage."""
        parameters = {n for i in self.prelude["parameters"] if i in self.flows
                      for n in self.flows[i].writes | self.flows[i].maybe_writes}
        modules = self.import_names()
        sources = [python_source(c.source) for c in self.nb.cells if c.cell_type == "code"]
        not_data = {name for flow in self.flows.values() for name in flow.definitions}
        for index in self.metrics_cells:
            flow = self.flows.get(index)
            if flow is None:
                continue
            source = python_source(self.nb.cells[index].source)
            for name in metric_names(source, sources, not_data):
                if name in BUILTIN_NAMES or name in modules:
                    continue
                owner = self.cell_stage[index] if name in self.provides(index) else None
                if owner is None:
                    found = self.provider(name, index, consumer="")
                    owner = found[0] if found and found[1] is None else None
                if owner is None and name in parameters:
                    owner = self.cell_stage[index]
                if owner and name not in self.stages[owner].metrics:
                    self.stages[owner].metrics.append(name)

    def prune_imports(self) -> None:
        """DESIGN.md: a stage may leave out imports (of `imports` cells) whose names it
        never uses; a name no cell uses at all was imported for its side effects: kept."""
        cells = [i for i in self.prelude["imports"] if i in self.flows]
        bound = {n for i in cells for n, d in self.flows[i].definitions.items()
                 if d.kind == "import" and not d.optional}
        if not bound:
            return
        used = {i: names_used(flow) for i, flow in self.flows.items()}
        everywhere = set().union(*(used[i] for role in PRELUDE_ROLES for i in self.prelude[role]
                                   if i in used))
        anywhere = set().union(*used.values())
        candidates = (bound & anywhere) - everywhere
        sources = {c.index: c.source for c in self.nb.cells}
        for stage in self.stages.values():
            mine = set().union(*(used[i] for i in stage.cells))
            for definition in stage.copied.values():
                mine |= definition.free_reads | definition.method_reads
            unused = candidates - mine
            for index in cells if unused else ():
                pruned = without_imports(sources[index], unused)
                if pruned is not None:
                    stage.pruned[index] = pruned

    def check_stage_names(self) -> None:
        """A stage's script `<name>.py` sits on its import path, so in `stage:xgboost` an
        `import xgboost` imports the script (standard-library names are a tag error,
        nb2prod.tags): warn on the cell that names the stage.  A path lookup per name,
        no import and no scan of every installed distribution's metadata."""
        from importlib.machinery import PathFinder

        for stage in self.stages.values():
            name = stage.name
            if name.isidentifier() and PathFinder.find_spec(name) is not None:
                self.warnings.append(Problem(
                    f"stage '{name}': its script {name}.py would be imported instead of "
                    f"Python's '{name}' module inside the stage; rename the stage "
                    f"(e.g. '{name}_stage')", cell=stage.cells[0], file=self.file,
                    cell_line=self.nb.first_line(stage.cells[0])))

    # -- 5. services and the DAG ----------------------------------------------
    def check_services(self) -> None:
        prelude, _ = self.prelude_names()
        for stage in self.stages.values():
            if stage.type != "service":
                continue
            defined = set(stage.copied) | prelude
            for index in stage.cells:
                defined |= self.flows[index].writes | self.flows[index].maybe_writes
            if self.entrypoint not in defined:
                self.problem(f"service stage '{stage.name}' must define "
                             f"{self.entrypoint}(payload)", stage.cells[0])

    def build_dag(self) -> None:
        names = list(self.stages)
        for stage in self.stages.values():
            for producer in [*stage.inputs.values(), *stage.file_inputs.values()]:
                self._edge(producer, stage.name)
            for before in stage.after:
                if before not in self.stages:
                    self.problem(f"after:{before}: no stage named '{before}'",
                                 self._tag_cell(stage, f"{before}"))
                    continue
                self._edge(before, stage.name)
        for a, b in self.edges:
            if self.stages[a].type == "service" and self.stages[b].type == "batch":
                self.problem(f"batch stage '{b}' cannot run after service stage '{a}'",
                             self.stages[b].cells[0])
        try:
            order = dag.topological_order(names, self.edges)
        except dag.CycleError as exc:
            cell = self.stages[exc.cycle[0]].cells[0]
            self.problem(str(exc), cell)
            return
        for position, name in enumerate(order, start=1):
            self.stages[name].position = position

    def _edge(self, a: str, b: str) -> None:
        if a != b and (a, b) not in self.edges:
            self.edges.append((a, b))

    def _tag_cell(self, stage: Stage, after: str) -> int:
        for index in stage.cells:
            if after in self.tags[index].after:
                return index
        return stage.cells[0]

    def _imports_only(self, index: int) -> bool:
        flow = self.flows.get(index)
        return bool(flow and flow.declarative and flow.definitions
                    and all(d.kind == "import" for d in flow.definitions.values())
                    and flow.writes | flow.maybe_writes <= set(flow.definitions))

    def result(self) -> Analysis:
        stages = sorted(self.stages.values(), key=lambda s: s.position)
        sources = {c.index: c.source for c in self.nb.cells}
        unassigned = {i: "imports only: each stage gets the ones it uses"
                      if self._imports_only(i) else "before the first stage tag"
                      for i in self.orphans}
        unassigned.update({i: "tagged skip" for i in self.skipped})
        unassigned = {i: why for i, why in sorted(unassigned.items()) if sources[i].strip()}
        return Analysis(self.nb, stages, self.edges, self.prelude, self.flows, self.warnings,
                        self.paths, unassigned)


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
