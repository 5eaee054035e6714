"""Equivalence: running the split pipeline stage by stage leaves the notebook's final values.

For every example notebook, the generated stage notebooks run in DAG order, each in a fresh
namespace with its stage directory as cwd, their save/load cells going through the stage's
own `nb2prod_runtime/` into a temp `file://` store; the values the batch stages end with
must equal what running the notebook top to bottom leaves.  A hypothesis property test makes
the same claim over generated straight-line programs (assignments, augmented assignments,
list/dict mutations through subscripts and method calls, stage tags placed at random),
through nb2prod.analysis + nb2prod.render.stage_notebook in-process (the fast path).
"""

from __future__ import annotations

import configparser
import contextlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nb2prod import artifacts
from nb2prod.analysis import analyze
from nb2prod.dag import parse_dag
from nb2prod.notebook import Cell, Notebook, import_nbformat, load_notebook
from nb2prod.render import stage_notebook
from nb2prod.split import split_notebook
from nb2prod.templates import environment

np = pytest.importorskip("numpy")
pytest.importorskip("sklearn")

import_nbformat()  # nbformat through nb2prod's fast path before jupytext imports it

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_notebooks"
RUNTIME_ENV = ("NB2PROD_STORE", "NB2PROD_PIPELINE", "NB2PROD_STAGE", "NB2PROD_RUN_ID",
               "NB2PROD_INPUT_RUN_ID", "MODEL_RUN_ID")
IGNORED_NAMES = {"__builtins__", "_nb2prod"}


# -- running cells -----------------------------------------------------------------------------
def runnable(source: str) -> str:
    """Cell source as plain Python: IPython-only lines (`%magic`, `!cmd`) become `pass`."""
    try:
        compile(source, "<cell>", "exec")
        return source
    except SyntaxError:
        pass
    if source.lstrip().startswith("%%"):
        return ""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            line = line[: len(line) - len(stripped)] + "pass"
        lines.append(line)
    return "\n".join(lines)


def run_cells(sources: list[str], namespace: dict[str, Any], name: str) -> None:
    for i, source in enumerate(sources):
        exec(compile(runnable(source), f"<{name} cell {i}>", "exec"), namespace)  # noqa: S102


def data_names(namespace: dict[str, Any]) -> set[str]:
    """Names holding data: not modules, functions, classes or bookkeeping."""
    return {name for name, value in namespace.items()
            if name not in IGNORED_NAMES and not name.startswith("__")
            and not isinstance(value, (types.ModuleType, types.FunctionType, type))}


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def runtime_env(values: dict[str, str]) -> Iterator[None]:
    """NB2PROD_* set to exactly `values` (others unset), no pinned `latest` in the runtime."""
    clean = {k: v for k, v in os.environ.items() if k not in RUNTIME_ENV}
    with mock.patch.dict(os.environ, {**clean, **values}, clear=True):
        yield


# -- comparing values ----------------------------------------------------------------------------
def same(a: Any, b: Any, probe: Any) -> bool:
    """Equal values: arrays element-wise, models by their predictions on `probe`."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    if hasattr(a, "predict") and hasattr(a, "fit"):
        return bool(np.array_equal(a.predict(probe), b.predict(probe)))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], probe) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, probe) for x, y in zip(a, b))
    return bool(a == b)


# -- the examples ---------------------------------------------------------------------------------
class SplitRun:
    """One example: run top to bottom, then its split pipeline stage by stage."""

    def __init__(self, notebook: Path, workdir: Path) -> None:
        self.notebook = notebook
        self.pipeline = workdir / f"{notebook.stem}-pipeline"
        split_notebook(notebook, self.pipeline)
        self.store = workdir / "store"
        self.run_id = "equivalence"
        top = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
        top.read(self.pipeline / "nb2prod.ini")
        self.name = top["project"]["NAME"]
        self.dag_stages, self.edges = parse_dag(top["workflow"]["DAG"])
        self.stage_dirs = sorted((p for p in self.pipeline.iterdir()
                                  if p.is_dir() and p.name.startswith("stage-")),
                                 key=lambda p: int(p.name.split("-")[1]))
        self.top: dict[str, Any] = {"__name__": "__notebook__"}
        self.stages: dict[str, dict[str, Any]] = {}
        self.configs: dict[str, configparser.SectionProxy] = {}
        self.first_cell: dict[str, int] = {}

    def run_notebook(self) -> None:
        cells = [c.source for c in load_notebook(self.notebook).cells if c.cell_type == "code"]
        run_cells(cells, self.top, self.notebook.name)

    def run_stages(self) -> None:
        for stage_dir in self.stage_dirs:
            config = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
            config.read(stage_dir / "config.ini")
            stage = config["default"]["NAME"]
            self.configs[stage] = config["default"]
            data = json.loads((stage_dir / config["default"]["EXECUTABLE"]).read_text())
            by_id = data["metadata"]["nb2prod"]["source_cells_by_id"]
            self.first_cell[stage] = min(i for i in by_id.values())
            self.stages[stage] = self._run_stage(stage, stage_dir, data)

    def _run_stage(self, stage: str, stage_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
        sources = [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                   for c in data["cells"] if c["cell_type"] == "code"]
        namespace: dict[str, Any] = {"__name__": "__stage__"}
        env = {"NB2PROD_STORE": f"file://{self.store}", "NB2PROD_PIPELINE": self.name,
               "NB2PROD_RUN_ID": self.run_id}
        saved_path = list(sys.path)
        _forget_runtime()
        sys.path[:0] = [str(stage_dir), str(stage_dir.parent)]  # as the runner sets it
        try:
            with runtime_env(env), working_dir(stage_dir):
                run_cells(sources, namespace, stage)
            runtime = sys.modules.get("nb2prod_runtime")
            if runtime is not None:  # it was the pipeline's own copy, not nb2prod's package
                assert Path(runtime.__file__).parent == stage_dir.parent / "nb2prod_runtime"
        finally:
            sys.path[:] = saved_path
            _forget_runtime()
        return namespace

    def batch_final_values(self) -> dict[str, Any]:
        """Each batch stage's end state, later stages (in notebook order) winning."""
        merged: dict[str, Any] = {}
        batch = [s for s in self.stages if self.configs[s]["STAGE_TYPE"] == "batch"]
        for stage in sorted(batch, key=lambda s: self.first_cell[s]):
            namespace = self.stages[stage]
            merged.update({name: namespace[name] for name in data_names(namespace)})
        return merged

    def metrics(self, stage: str) -> dict[str, Any]:
        path = self.store / self.name / "runs" / self.run_id / stage / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}


@pytest.fixture(scope="module", params=["iris.ipynb", "wine_parallel.ipynb", "diabetes.py"])
def example(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitRun]:
    """Each example split once, run both ways once; shared by the tests below."""
    workdir = tmp_path_factory.mktemp(Path(request.param).stem)
    notebook = workdir / request.param
    shutil.copyfile(EXAMPLES / request.param, notebook)
    run = SplitRun(notebook, workdir)
    with working_dir(workdir):
        run.run_notebook()
    run.run_stages()
    yield run


def test_stages_ran_in_an_order_respecting_the_dag(example: SplitRun) -> None:
    order = [p.name.split("-", 2)[2] for p in example.stage_dirs]
    assert sorted(order) == sorted(example.dag_stages)
    for a, b in example.edges:
        assert order.index(a) < order.index(b), f"{a} >> {b} violated by {order}"


def test_batch_stages_end_with_the_notebooks_values(example: SplitRun) -> None:
    final = example.batch_final_values()
    probe = example.top["X_test"]
    outputs = {name for cfg in example.configs.values()
               for name in cfg["OUTPUTS"].replace(" ", "").split(",") if name}
    assert outputs and outputs <= set(final), "a stage output is missing from the stage runs"
    assert "X_test" in final
    different = [name for name in sorted(final)
                 if name not in example.top or not same(final[name], example.top[name], probe)]
    assert not different, f"stage-by-stage values differ from the notebook's: {different}"


def test_metrics_recorded_equal_the_notebooks(example: SplitRun) -> None:
    recorded = {stage: example.metrics(stage) for stage in example.stages}
    assert any(recorded.values()), "no stage recorded any metric"
    for stage, metrics in recorded.items():
        declared = {n for n in example.configs[stage]["METRICS"].replace(" ", "").split(",") if n}
        assert set(metrics) <= declared
        for name, value in metrics.items():
            assert value == example.top[name], f"{stage}: metric {name}"


def test_service_stage_predicts_like_the_notebook(example: SplitRun) -> None:
    services = [s for s in example.stages if example.configs[s]["STAGE_TYPE"] == "service"]
    assert services
    payload = {"instances": example.top["X_test"][:5].tolist()}
    expected = example.top["predict"](payload)
    for stage in services:
        actual = example.stages[stage]["predict"](payload)
        assert json.dumps(actual, default=lambda o: o.tolist()) == \
            json.dumps(expected, default=lambda o: o.tolist())


# -- the property over generated programs ---------------------------------------------------------
INTS = ("a", "b", "c")
LISTS = ("xs", "ys")
DICTS = ("m", "n")


@st.composite
def statement(draw: st.DrawFn, defined: set[str]) -> str:
    """One straight-line statement using only names already bound (names keep one type)."""
    ints = sorted(set(INTS) & defined)
    lists = sorted(set(LISTS) & defined)
    dicts = sorted(set(DICTS) & defined)

    def int_expr() -> str:
        options = [str(draw(st.integers(0, 9)))]
        if ints:
            options += [f"{draw(st.sampled_from(ints))} + {draw(st.integers(0, 3))}",
                        f"{draw(st.sampled_from(ints))} * 2 % 101"]
        if lists:
            options += [f"len({draw(st.sampled_from(lists))})",
                        f"sum({draw(st.sampled_from(lists))}) % 97"]
        if dicts:
            options.append(f"{draw(st.sampled_from(dicts))}.get('k{draw(st.integers(0, 2))}', 0)")
        return draw(st.sampled_from(options))

    kinds = ["int_new", "list_new", "dict_new"]
    if ints:
        kinds += ["int_aug"]
    if lists:
        kinds += ["list_copy", "list_mutate", "list_mutate", "list_pop"]
    if dicts:
        kinds += ["dict_copy", "dict_mutate", "dict_mutate"]
    kind = draw(st.sampled_from(kinds))
    if kind == "int_new":
        return f"{draw(st.sampled_from(INTS))} = {int_expr()}"
    if kind == "int_aug":
        target = draw(st.sampled_from(ints))
        return draw(st.sampled_from([f"{target} += {int_expr()}", f"{target} -= 1",
                                     f"{target} %= 7", f"{target} *= 3"]))
    if kind == "list_new":
        return f"{draw(st.sampled_from(LISTS))} = [{int_expr()}, {int_expr()}]"
    if kind == "dict_new":
        return f"{draw(st.sampled_from(DICTS))} = {{'k0': {int_expr()}}}"
    if kind == "list_copy":
        source = draw(st.sampled_from(lists))
        target = draw(st.sampled_from(LISTS))
        return draw(st.sampled_from([f"{target} = list({source})",
                                     f"{target} = sorted({source})",
                                     f"{target} = [v + 1 for v in {source}]"]))
    if kind == "dict_copy":
        source = draw(st.sampled_from(dicts))
        target = draw(st.sampled_from(DICTS))
        return draw(st.sampled_from([f"{target} = dict({source})",
                                     f"{target} = {{k: v * 2 for k, v in {source}.items()}}"]))
    if kind == "list_pop":
        target = draw(st.sampled_from(lists))
        into = draw(st.sampled_from(INTS))
        return f"{into} = {target}.pop() if {target} else 0"
    if kind == "list_mutate":
        target = draw(st.sampled_from(lists))
        others = [x for x in lists if x != target]
        options = [f"{target}.append({int_expr()})", f"{target}[-1:] = [{int_expr()}]",
                   f"{target}.insert(0, {int_expr()})", f"{target}.sort()",
                   f"{target}.reverse()"]
        if others:
            options += [f"{target}.extend({others[0]}[:2])", f"{target} += {others[0]}[:2]"]
        return draw(st.sampled_from(options))
    target = draw(st.sampled_from(dicts))
    key = f"'k{draw(st.integers(0, 2))}'"
    others = [x for x in dicts if x != target]
    options = [f"{target}[{key}] = {int_expr()}", f"{target}.update({{{key}: {int_expr()}}})",
               f"{target}.pop({key}, None)", f"{target}.setdefault({key}, {int_expr()})"]
    if others:
        options.append(f"{target}.update({others[0]})")
    return draw(st.sampled_from(options))


_BINDS = re.compile(r"^(\w+) (?:=|\+=|-=|%=|\*=) ")


@st.composite
def program(draw: st.DrawFn) -> list[tuple[list[str], str]]:
    """Cells of (tags, source); the first cell starts a stage, later ones may start new ones."""
    defined: set[str] = set()
    cells = []
    stages = itertools.count()
    for index in range(draw(st.integers(1, 6))):
        lines = []
        for _ in range(draw(st.integers(1, 4))):
            line = draw(statement(defined))
            lines.append(line)
            match = _BINDS.match(line)
            if match:
                defined.add(match.group(1))
        starts_stage = index == 0 or draw(st.booleans())
        tags = [f"stage:s{next(stages)}"] if starts_stage else []
        cells.append((tags, "\n".join(lines) + "\n"))
    return cells


def _forget_runtime() -> None:
    for name in [n for n in sys.modules if n.split(".")[0] == "nb2prod_runtime"]:
        del sys.modules[name]


@contextlib.contextmanager
def runtime_module() -> Iterator[None]:
    """`import nb2prod_runtime` in generated cells gets nb2prod's runtime (the fast path).

    Only this one sys.modules entry is touched: patching the whole dict would unload every
    module first imported inside the block when it is restored.
    """
    previous = sys.modules.get("nb2prod_runtime")
    sys.modules["nb2prod_runtime"] = artifacts
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop("nb2prod_runtime", None)
        else:
            sys.modules["nb2prod_runtime"] = previous


@pytest.fixture(scope="module")
def jinja_env() -> Any:
    return environment()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells=program())
def test_property_stage_by_stage_equals_top_to_bottom(cells: list[tuple[list[str], str]],
                                                      jinja_env: Any) -> None:
    top: dict[str, Any] = {}
    for _, source in cells:
        exec(source, top)  # noqa: S102 - generated test programs

    nb = Notebook(Path("generated.ipynb"),
                  tuple(Cell(i, "code", src, tuple(tags)) for i, (tags, src) in enumerate(cells)),
                  {}, "0" * 64)
    analysis = analyze(nb)
    namespaces: dict[str, dict[str, Any]] = {}
    merged: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, working_dir(Path(tmp)), runtime_module():
        for stage in analysis.stages:  # in DAG order
            env = {"NB2PROD_STORE": f"file://{tmp}/store", "NB2PROD_PIPELINE": "prop",
                   "NB2PROD_STAGE": stage.name, "NB2PROD_RUN_ID": "r1"}
            namespace: dict[str, Any] = {}
            with runtime_env(env):
                for cell in stage_notebook(analysis, stage, jinja_env)["cells"]:
                    exec(cell["source"], namespace)  # noqa: S102
            namespaces[stage.name] = namespace
    # stages in notebook order: the last one to touch a name holds its final value
    for stage in sorted(analysis.stages, key=lambda s: s.cells[0]):
        merged.update({k: v for k, v in namespaces[stage.name].items()
                       if k not in IGNORED_NAMES})

    expected = {k: v for k, v in top.items() if k != "__builtins__"}
    assert merged == expected, "\n".join(f"{tags} {src}" for tags, src in cells)
