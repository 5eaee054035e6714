"""Unit tests of nb2prod/analysis/: cells → stages, inputs/outputs, copied definitions, DAG."""

from __future__ import annotations

from pathlib import Path

import pytest

from nb2prod.analysis import Analysis, analyze
from nb2prod.errors import UserError
from nb2prod.notebook import Cell, Notebook

CellSpec = tuple[list[str], str]  # (tags, source)


def notebook(*cells: CellSpec | str) -> Notebook:
    """Code cells from (tags, source); a bare string is a markdown cell."""
    built = []
    for index, spec in enumerate(cells):
        if isinstance(spec, str):
            built.append(Cell(index, "markdown", spec))
        else:
            tags, source = spec
            built.append(Cell(index, "code", source, tuple(tags)))
    return Notebook(Path("nb.ipynb"), tuple(built), {}, "0" * 64)


def run(*cells: CellSpec | str) -> Analysis:
    return analyze(notebook(*cells))


def problems(*cells: CellSpec | str) -> list[str]:
    with pytest.raises(UserError) as info:
        analyze(notebook(*cells))
    return [str(p) for p in info.value.problems]


def shape(analysis: Analysis) -> dict[str, tuple[list[int], dict[str, str], list[str]]]:
    return {s.name: (s.cells, s.inputs, s.outputs) for s in analysis.stages}


# -- which cell belongs where ------------------------------------------------------------------
def test_untagged_cells_join_the_stage_above() -> None:
    a = run((["stage:load"], "x = 1"), ([], "y = x + 1"), "# markdown", ([], "z = y"),
            (["stage:use"], "w = z"))
    assert shape(a) == {"load": ([0, 1, 3], {}, ["z"]), "use": ([4], {"z": "load"}, [])}


def test_skip_cells_belong_to_no_stage_and_do_not_end_one() -> None:
    a = run((["stage:load"], "x = 1"), (["skip"], "plot(x)"), ([], "y = x"))
    assert a.stage("load").cells == [0, 2]


def test_prelude_cells_are_in_no_stage() -> None:
    a = run((["parameters"], "n = 3"), (["imports"], "import json"),
            (["functions"], "def f(v):\n    return v"), (["train"], "x = f(n)\ns = json.dumps(x)"))
    assert a.prelude == {"parameters": [0], "imports": [1], "functions": [2]}
    assert shape(a) == {"train": ([3], {}, [])}


def test_cells_before_the_first_stage_are_in_no_stage() -> None:
    a = run(([], "scratch = 1"), (["stage:a"], "x = 2"))
    assert a.stage("a").cells == [1]


def test_name_defined_only_before_the_first_stage_names_the_cell_to_tag() -> None:
    found = problems(([], "q = 1"), (["stage:a"], "x = q"))
    assert found == [('nb.ipynb, cell 2 ("x = q"): stage \'a\' reads \'q\', defined only in cell 1 ("q = 1"), '
                     "which "
                     "belongs to no stage: tag that cell 'imports', 'functions', 'parameters' "
                     "or a stage")]


def test_name_defined_only_in_a_skip_cell_names_the_cell() -> None:
    found = problems((["stage:a"], "x = 1"), (["skip"], "z = 2"), (["stage:b"], "y = z"))
    assert len(found) == 1
    assert 'cell 3 ("y = z")' in found[0] and "'z'" in found[0] and 'cell 2 ("z = 2")' in found[0]
    assert "tagged skip" in found[0]


@pytest.mark.parametrize(
    "cells",
    [
        [([], "import math"), (["stage:a"], "y = math.sqrt(2)")],
        [(["stage:a"], "x = 1"), (["skip"], "import math"), (["stage:b"], "y = math.sqrt(x)")],
    ],
)
def test_import_written_outside_any_stage_is_copied_into_the_stage_using_it(
        cells: list[CellSpec]) -> None:
    # DESIGN.md: every stage that uses a module gets its import, wherever it was written.
    a = run(*cells)
    user = a.stages[-1]
    assert {n: d.source for n, d in user.copied.items()} == {"math": "import math\n"}
    assert user.inputs == {k: v for k, v in user.inputs.items() if k != "math"}


def test_kale_rule_untagged_cell_after_imports_is_an_imports_cell() -> None:
    # Kale merges an untagged cell into the block above it, `imports` included
    # (kale/processors/nbprocessor.py, parse_notebook); a Kale notebook must split unedited.
    a = run((["imports"], "import json"), ([], "import math"),
            (["block:load"], "x = math.pi"), (["block:train", "prev:load"], "y = json.dumps(x)"))
    assert a.prelude["imports"] == [0, 1]
    assert shape(a) == {"load": ([2], {}, ["x"]), "train": ([3], {"x": "load"}, [])}


def test_no_code_cells_and_no_stage_tags_are_errors() -> None:
    assert problems("# only markdown") == ["nb.ipynb: the notebook has no code cells"]
    found = problems(([], "x = 1"), ([], "y = x"))
    assert found == [("nb.ipynb: no stage tags: tag the first cell of each stage with "
                     "'stage:NAME', 'train' or 'serve'")]


def test_every_problem_is_reported_at_once() -> None:
    found = problems((["stage:a", "stage:b"], "x = 1"), (["stage:c", "cpu:lots"], "y = 2"))
    assert len(found) == 2
    assert found[0].startswith('nb.ipynb, cell 1 ("x = 1"): two stage tags')
    assert found[1].startswith('nb.ipynb, cell 2 ("y = 2"): tag \'cpu:lots\'')


def test_role_and_stage_on_one_cell_is_an_error() -> None:
    found = problems((["imports", "stage:a"], "import json"), (["stage:b"], "x = json"))
    assert found == ['nb.ipynb, cell 1 ("import json"): a \'imports\' cell cannot also start stage \'a\'']


def test_stage_tagged_batch_and_service_is_an_error() -> None:
    found = problems((["stage:a"], "x = 1"), (["serve:a"], "def predict(p):\n    return x"))
    assert found == ['nb.ipynb, cell 2 ("def predict(p):"): stage \'a\' is tagged both batch and service']


def test_stage_hints_collect_into_the_stage() -> None:
    a = run((["stage:train", "cpu:2"], "x = 1"), (["memory:1Gi"], "y = 2"))
    assert a.stage("train").hints == {"CPU_REQUEST": "2", "MEMORY_REQUEST_MB": "1024"}


def test_stage_tags_on_a_cell_outside_any_stage_are_an_error() -> None:
    found = problems((["cpu:2"], "x = 1"), (["stage:a"], "y = 2"))
    assert len(found) == 1 and found[0].startswith('nb.ipynb, cell 1 ("x = 1"): this cell has stage tags')


def test_typo_warnings_are_collected_with_the_cell() -> None:
    a = run((["stage:a"], "x = 1"), (["Stage:b"], "y = x"))
    assert [str(w) for w in a.warnings] == [
        'nb.ipynb, cell 2 ("y = x"): tag \'Stage:b\' is not an nb2prod tag; did you mean \'stage:b\'?']
    assert a.stage("a").cells == [0, 1]  # the typo'd tag did not start a stage


# -- inputs and providers ------------------------------------------------------------------
def test_input_is_provided_by_the_last_earlier_stage_that_binds_or_mutates_it() -> None:
    a = run((["stage:a"], "x = [1]"), (["stage:b"], "x.append(2)"), (["stage:c"], "y = x"))
    assert shape(a) == {"a": ([0], {}, ["x"]), "b": ([1], {"x": "a"}, ["x"]),
                        "c": ([2], {"x": "b"}, [])}
    assert a.edges == [("a", "b"), ("b", "c")]


@pytest.mark.parametrize(
    ("mutation", "name"),
    [("x[0] = 2", "x"), ("x.attr = 2", "x"), ("x.fit(X)", "x"),
     ("df.dropna(inplace=True)", "df"), ("x += [3]", "x")],
)
def test_every_kind_of_mutation_provides(mutation: str, name: str) -> None:
    a = run((["imports"], "from collections import UserList as make"),
            (["stage:a"], f"{name} = make()\nX = 1"), (["stage:b"], mutation),
            (["stage:c"], f"print({name})"))
    assert a.stage("b").inputs[name] == "a"
    assert name in a.stage("b").outputs
    assert a.stage("c").inputs == {name: "b"}


def test_pure_method_call_does_not_provide() -> None:
    a = run((["stage:a"], "model = 1\nX = 2"), (["stage:b"], "p = model.predict(X)"),
            (["stage:c"], "print(model)"))
    assert a.stage("c").inputs == {"model": "a"}
    assert a.stage("b").outputs == []


def test_rebinding_in_the_consumer_after_reading_still_reads_the_provider() -> None:
    a = run((["stage:a"], "x = 1"), (["stage:b"], "y = x\nx = 5"), (["stage:c"], "z = x"))
    assert a.stage("b").inputs == {"x": "a"}
    assert a.stage("c").inputs == {"x": "b"}


def test_parameters_imports_functions_are_not_data() -> None:
    a = run((["parameters"], "n = 3"), (["imports"], "import json"),
            (["functions"], "def double(v):\n    return 2 * v"),
            (["stage:a"], "x = double(n)"), (["stage:b"], "s = json.dumps(double(n))"))
    assert shape(a) == {"a": ([3], {}, []), "b": ([4], {}, [])}
    assert a.edges == []


def test_parameter_rebound_by_a_stage_becomes_data() -> None:
    a = run((["parameters"], "n = 3"), (["stage:a"], "n = n + 1"), (["stage:b"], "y = n"))
    assert a.stage("b").inputs == {"n": "a"}


def test_name_never_provided_is_an_error_naming_stage_and_cell() -> None:
    found = problems((["stage:a"], "x = 1"), (["stage:b"], "y = x + missing"))
    assert found == [('nb.ipynb, cell 2 ("y = x + missing"): stage \'b\' reads \'missing\' but no '
                      "earlier cell defines it")]


def test_name_provided_only_later_is_an_error() -> None:
    found = problems((["stage:a"], "y = later + 1"), (["stage:b"], "later = 2"))
    assert found == [('nb.ipynb, cell 1 ("y = later + 1"): stage \'a\' reads \'later\' but no '
                      "earlier cell defines it")]


def test_maybe_read_becomes_an_input_only_when_provided() -> None:
    a = run((["stage:a"], "scale = 3"), (["stage:b"], "f = lambda v: v * scale\nz = f(2)"))
    assert a.stage("b").inputs == {"scale": "a"}
    b = run((["stage:a"], "x = 1"), (["stage:b"], "f = lambda v: v * not_anywhere"))
    assert b.stage("b").inputs == {}


def test_service_stage_cannot_provide_names() -> None:
    found = problems((["stage:a"], "x = 1"),
                     (["serve"], "w = 2\ndef predict(p):\n    return x"),
                     (["stage:c"], "y = w"))
    assert found == [('nb.ipynb, cell 3 ("y = w"): \'w\' is set by service stage \'serve\'; a service stage '
                     "cannot provide names to stage 'c'")]


def test_service_entrypoint_free_names_are_inputs() -> None:
    a = run((["train"], "model = 1\nlabels = ['a']"),
            (["serve"], "def predict(payload):\n    return labels[model]"))
    assert a.stage("serve").inputs == {"labels": "train", "model": "train"}
    assert a.stage("serve").type == "service"
    assert a.edges == [("train", "serve")]


def test_service_stage_without_entrypoint_is_an_error() -> None:
    found = problems((["train"], "x = 1"), (["serve"], "def handle(p):\n    return x"))
    assert found == ['nb.ipynb, cell 2 ("def handle(p):"): service stage \'serve\' must define predict(payload)']


def test_batch_stage_after_a_service_stage_is_an_error() -> None:
    found = problems((["serve"], "def predict(p):\n    return 1"),
                     (["stage:b", "after:serve"], "y = 2"))
    assert found == [('nb.ipynb, cell 2 ("y = 2"): batch stage \'b\' cannot run after service stage '
                      "'serve'")]


# -- DAG ---------------------------------------------------------------------------------------
def test_independent_stages_can_run_in_parallel() -> None:
    a = run((["stage:a"], "x = 1"), (["stage:b"], "y = x + 1"), (["stage:c"], "z = x + 2"),
            (["stage:d"], "w = y + z"))
    assert set(a.edges) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    assert ("b", "c") not in a.edges and ("c", "b") not in a.edges
    assert [s.directory for s in a.stages] == ["stage-1-a", "stage-2-b", "stage-3-c",
                                               "stage-4-d"]


@pytest.mark.parametrize("tag", ["after:a", "prev:a"])
def test_after_tags_add_edges(tag: str) -> None:
    a = run((["stage:a"], "x = 1"), (["stage:b", tag], "y = 2"))
    assert a.edges == [("a", "b")]
    assert a.stage("b").inputs == {}


def test_after_tag_may_point_forward_and_reorders_stages() -> None:
    a = run((["stage:a", "after:b"], "x = 1"), (["stage:b"], "y = 2"))
    assert a.edges == [("b", "a")]
    assert [(s.position, s.name) for s in a.stages] == [(1, "b"), (2, "a")]


def test_after_unknown_stage_is_an_error() -> None:
    found = problems((["stage:a"], "x = 1"), (["stage:b"], "y = 2"), ([], "z = 3"),
                     (["after:nope"], "w = 4"))
    assert found == ['nb.ipynb, cell 4 ("w = 4"): after:nope: no stage named \'nope\'']


def test_after_cycle_is_an_error_naming_the_cycle() -> None:
    found = problems((["stage:a", "after:c"], "x = 1"), (["stage:b"], "y = x"),
                     (["stage:c"], "z = y"))
    assert len(found) == 1
    assert found[0].startswith("nb.ipynb, cell ")
    assert "cycle in stage DAG: " in found[0]
    cycle = found[0].split("cycle in stage DAG: ")[1].split(" >> ")
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}


# -- metrics -------------------------------------------------------------------------------
def test_metrics_names_are_owned_by_the_stage_that_provides_them() -> None:
    a = run((["stage:a"], "acc = 0.9\nx = 1"), (["stage:b"], "loss = 0.1 + x"),
            (["metrics"], "print(acc, loss)\nratio = loss / acc"))
    assert a.stage("a").metrics == ["acc"]
    assert sorted(a.stage("b").metrics) == ["loss", "ratio"]
    assert a.stage("b").inputs == {"acc": "a", "x": "a"}


@pytest.mark.parametrize("tag", ["metrics", "pipeline-metrics"])
def test_metrics_cell_bare_names(tag: str) -> None:
    a = run((["train"], "accuracy = 0.5\nf1 = 0.4"), ([tag], "accuracy\nf1"))
    assert sorted(a.stage("train").metrics) == ["accuracy", "f1"]
    assert a.stage("train").cells == [0, 1]


def test_metrics_lists_names_shown_not_names_computed_with() -> None:
    """METRICS (config.ini) names what the cell shows; objects passed to calls are not metrics."""
    a = run((["imports"], "from sklearn.linear_model import LogisticRegression"),
            (["train"], ("model = LogisticRegression()\nX_test, y_test = [[1]], [0]\n"
                        "scores = {'forest': 0.9, 'logreg': 0.8}")),
            (["metrics"], ("accuracy = model.score(X_test, y_test)\n"
                          "best_name = max(scores, key=scores.get)\nlabel = f'{accuracy:.2f}'\n"
                          "print(best_name, accuracy)\nprint(f'{scores} {model}')\n"
                          "n_rows = len(X_test)\nn_rows")))
    assert a.stage("train").metrics == ["accuracy", "n_rows"]


# -- definitions and imports used across stages ------------------------------------------------
def test_functions_cell_definitions_read_their_free_names_where_called() -> None:
    a = run((["functions"], "def evaluate():\n    return model * weight"),
            (["stage:fit"], "model = 2\nweight = 3"), (["stage:report"], "score = evaluate()"))
    assert a.stage("report").inputs == {"model": "fit", "weight": "fit"}
    assert a.stage("report").copied == {}  # functions cells are prepended, not copied


def test_def_in_one_stage_used_in_another_is_copied_as_source() -> None:
    a = run((["stage:a"], "k = 2\ndef helper(v):\n    return v * k"),
            (["stage:b"], "x = helper(1)"))
    b = a.stage("b")
    assert list(b.copied) == ["helper"]
    assert b.copied["helper"].source == "def helper(v):\n    return v * k\n"
    assert b.inputs == {"k": "a"}  # the copied function's free name is data
    assert a.stage("a").outputs == ["k"]
    assert a.edges == [("a", "b")]


def test_class_in_one_stage_used_in_another_is_copied() -> None:
    a = run((["stage:a"], "class Scaler:\n    factor = 2\ns = 1"),
            (["stage:b"], "t = Scaler.factor"))
    assert list(a.stage("b").copied) == ["Scaler"]
    assert a.stage("b").copied["Scaler"].kind == "class"
    assert a.stage("b").inputs == {}


def test_import_in_one_stage_used_in_another_is_copied() -> None:
    a = run((["stage:a"], "import json\nimport numpy as np\nimport os.path\nx = 1"),
            (["stage:b"], "y = np.array([x])\ns = json.dumps(1)\np = os.path.join('a')"))
    b = a.stage("b")
    assert {name: d.source for name, d in b.copied.items()} == {
        "json": "import json\n", "np": "import numpy as np\n", "os": "import os.path\n"}
    assert b.inputs == {"x": "a"}
    assert a.stage("a").outputs == ["x"]  # modules are never data


@pytest.mark.parametrize(
    ("stage_a", "needed"),
    [
        ("import functools\n@functools.lru_cache(maxsize=None)\ndef f(x):\n    return x * 2",
         "functools"),
        ("SCALE = 3\ndef f(x, s=SCALE):\n    return x * s", "SCALE"),
        ("import numbers\nclass f(numbers.Number):\n    pass", "numbers"),
    ],
)
def test_copied_definition_brings_what_its_def_statement_evaluates(stage_a: str,
                                                                   needed: str) -> None:
    # Decorators, default values and base classes run when the copied `def`/`class`
    # runs in the consuming stage, so the names they read must be there too.
    a = run((["stage:a"], stage_a), (["stage:b"], "y = f"))
    b = a.stage("b")
    assert "f" in b.copied
    assert needed in b.copied or needed in b.inputs, (
        f"stage b copies {list(b.copied)} and loads {list(b.inputs)}: running the copied "
        f"definition raises NameError: {needed!r}")


def test_a_name_deleted_by_an_earlier_stage_is_not_loaded_from_before_the_delete() -> None:
    found = problems((["stage:a"], "x = 1"), (["stage:b"], "y = x + 1\ndel x"),
                     (["stage:c"], "print(x, y)"))
    assert found == [('nb.ipynb, cell 3 ("print(x, y)"): stage \'c\' reads \'x\', but cell 2 ("y = x + 1") '
                      "(stage 'b') deletes "
                      "it before: the notebook would fail here too")]
    # Defined again after the delete: read from the new definition.
    again = run((["stage:a"], "x = 1"), (["stage:b"], "del x\nx = 2"), (["stage:c"], "print(x)"))
    assert shape(again)["c"][1] == {"x": "b"}


# -- issue 12: real notebooks (each minimal reproduction from the issue) -------------------
def test_inline_import_reaches_every_stage_using_the_module() -> None:
    # `np.arange(...)` once counted as mutating `np`: `train` got neither import nor load.
    a = run((["stage:a"], "import numpy as np\nX = np.arange(3)"),
            (["stage:b"], "Z = np.arange(3)"), (["train"], "w = np.arange(3)"))
    for name in ("b", "train"):
        assert {n: d.source for n, d in a.stage(name).copied.items()} == {
            "np": "import numpy as np\n"}
        assert a.stage(name).inputs == {}
    assert all(s.outputs == [] for s in a.stages)
    assert a.edges == []


def test_import_written_below_its_first_use_in_another_stage_is_copied() -> None:
    a = run((["stage:a"], "def f(v):\n    return json.dumps(v)\ny = f(1)"),
            (["stage:b"], "import json\nz = json.dumps(2)"))
    assert a.stage("a").copied["json"].source == "import json\n"


def test_a_name_imported_then_assigned_is_data_from_the_assignment() -> None:
    a = run((["stage:a"], "from os import sep as value\nvalue = 3"), (["stage:b"], "y = value"))
    assert a.stage("b").inputs == {"value": "a"}


@pytest.mark.parametrize("later_tags", [[], ["stage:b"]])
def test_names_in_method_bodies_are_needed_when_called_not_when_defined(
        later_tags: list[str]) -> None:
    # The notebook runs: `Path` is imported before `save` is ever called.
    a = run((["train"], "class M:\n    def save(self, p):\n        return Path(p)\nm = M()"),
            (later_tags, "from pathlib import Path\nout = m.save('x')"))
    train = a.stage("train")
    assert train.inputs == {}
    if later_tags:  # another stage imports it: train gets the import too (save may run there)
        assert train.copied["Path"].source == "from pathlib import Path\n"


def test_method_body_name_provided_by_an_earlier_stage_is_an_input() -> None:
    a = run((["stage:prep"], "scale = 2"),
            (["train"], "class M:\n    def go(self):\n        return scale\nm = M()\nr = m.go()"))
    assert a.stage("train").inputs == {"scale": "prep"}


def test_exploration_after_the_imports_cell_runs_in_no_stage() -> None:
    a = run((["imports"], "import json"),
            ([], "import math\nSEED = 42\nCOLS = ['a', 'b']\ndef f(v):\n    return v\n%matplotlib inline"),
            ([], "fit = f(3)  # an exploratory fit"), ([], "import os\nplot = 1"),
            ([], "   "), (["skip"], "z = 2"), (["train"], "x = math.pi + SEED"))
    assert a.prelude["imports"] == [0, 1]
    assert a.stage("train").cells == [6]
    assert a.unassigned == {2: "before the first stage tag", 3: "before the first stage tag",
                            5: "tagged skip"}
    assert a.stage("train").inputs == {}


def test_a_name_from_exploration_above_the_first_stage_names_the_cell_to_tag() -> None:
    found = problems((["imports"], "import json"), ([], "data = json.loads('[1]')"),
                     (["train"], "x = data"))
    assert found == [("nb.ipynb, cell 3 (\"x = data\"): stage 'train' reads 'data', defined only in "
                      "cell 2 (\"data = json.loads('[1]')\"), "
                      "which belongs to no stage: tag that cell 'imports', 'functions', "
                      "'parameters' or a stage")]


def test_idle_cells_join_the_functions_and_parameters_blocks() -> None:
    a = run((["parameters"], "n = 3"), ([], "rate = 0.1"),
            (["functions"], "def f(v):\n    return v"), ([], "class C:\n    pass"),
            ([], "print(n)"), (["train"], "x = f(n) * rate"))
    assert a.prelude == {"parameters": [0, 1], "imports": [], "functions": [2, 3]}
    assert a.unassigned == {4: "before the first stage tag"}


def test_optional_import_is_an_import_not_data() -> None:
    source = ("try:\n    import ipywidgets as widgets\n    HAS_WIDGETS = True\n"
              "except ImportError:\n    widgets = None\n    HAS_WIDGETS = False")
    a = run((["stage:a"], source + "\nx = 1"), (["stage:b"], "if HAS_WIDGETS:\n    w = widgets\ny = x"))
    b = a.stage("b")
    assert b.inputs == {"x": "a"}
    assert set(b.copied) == {"widgets", "HAS_WIDGETS"}
    definition = b.copied["widgets"]
    assert definition.optional and definition.modules == ("ipywidgets",)
    assert definition.source.startswith("try:\n") and definition.source.rstrip().endswith(
        "HAS_WIDGETS = False")


@pytest.mark.parametrize("call", ["r = X.ravel()", "names = booster.feature_name()",
                                  "imp = booster.feature_importance()", "df.plot.bar(x='a')",
                                  "h = df['a'].str.contains('x')", "s = X.values.ravel().sum()"])
def test_read_only_calls_do_not_make_a_producer(call: str) -> None:
    # A plotting stage calling read-only methods must not become the model's provider.
    a = run((["train"], "booster = 1\nX = 2\ndf = 3"), (["stage:plot"], call),
            (["serve"], "def predict(p):\n    return [booster, X, df]"))
    assert a.stage("serve").inputs == {"booster": "train", "X": "train", "df": "train"}
    assert a.stage("plot").outputs == []


def test_kale_pipeline_metrics_cell_printing_parameters_records_them() -> None:
    a = run((["pipeline-parameters"], "d1 = 5\nlr = 0.1"), (["block:train"], "acc = 0.9 + d1"),
            (["pipeline-metrics"], "print(d1)\nprint(acc)"))
    assert sorted(a.stage("train").metrics) == ["acc", "d1"]


@pytest.mark.parametrize(("tag", "meant"), [("trian", "train"), ("Stage:train", "stage:train"),
                                            ("Train", "train"), ("sevre", "serve")])
def test_typo_in_the_only_stage_tag_is_reported_on_that_cell(tag: str, meant: str) -> None:
    found = problems((["imports"], "import json"), ([tag], "x = 1"),
                     (["metrics"], "x"))
    assert found[0] == (f"nb.ipynb, cell 2 (\"x = 1\"): tag '{tag}' is not an nb2prod tag; "
                        f"did you mean '{meant}'?")
    assert not any("no stage tags" in p for p in found)


def test_typo_of_a_later_stage_tag_stays_a_warning() -> None:
    a = run((["train"], "x = 1"), (["trian"], "y = x"))
    assert a.stage("train").cells == [0, 1]
    assert [w.message for w in a.warnings] == [
        "tag 'trian' is not an nb2prod tag; did you mean 'train'?"]


def stage_code(a: Analysis, name: str) -> list[str]:
    """The Python of a stage notebook's cells, minus nb2prod's load/save/metrics cells."""
    from nb2prod.render import stage_notebook
    from nb2prod.templates import environment

    nb = stage_notebook(a, a.stage(name), environment())
    return [c["source"] for c in nb["cells"]
            if c["id"] not in ("nb2prod-load", "nb2prod-save", "nb2prod-metrics")]


@pytest.mark.parametrize(
    ("cells", "stage"),
    [
        ([(["stage:a"], "import numpy as np\nX = np.arange(3)"),
          (["stage:b"], "Z = np.arange(3)"), (["train"], "w = np.arange(3)")], "train"),
        ([(["train"], "class M:\n    def save(self, p):\n        return Path(p)\nm = M()"),
          (["stage:b"], "from pathlib import Path\nout = 1"),
          (["stage:c", "after:train"], "n = 2")], "train"),
        ([(["stage:a"], ("try:\n    import nb2prod_no_such_widgets as w\n    HAS_W = True\n"
                        "except ImportError:\n    w = None\n    HAS_W = False\n"
                        "from pathlib import Path as P, PurePath as PP")),
          (["stage:b"], "print(w, HAS_W, P, PP)")], "b"),
        ([(["stage:a"], ("import functools\nclass A:\n    pass\nclass B(A):\n    pass\n"
                        "@functools.lru_cache(None)\ndef f(x):\n    return B\nx = 1")),
          (["stage:b"], "y = f(2)")], "b"),  # copied sources run in dependency order
        ([(["parameters"], "USE_GPU = False"),
          (["stage:a"], ("if USE_GPU:\n    import nb2prod_no_such_cupy as xp\nelse:\n"
                         "    import math as xp\nx = xp.sqrt(4)")),
          (["stage:b"], "y = xp.sqrt(9)")], "b"),  # conditional import, one branch missing
        ([(["stage:a"], ("import sys\nif sys.version_info >= (3, 11):\n    import tomllib\n"
                         "else:\n    import tomli as tomllib\nx = 1")),
          (["stage:b"], "c = tomllib.loads('a = 1')")], "b"),
        ([([], "import functools\nprint(functools)"),
          (["functions"], "@functools.lru_cache(maxsize=None)\ndef f(x):\n    return x"),
          (["train"], "import functools\ny = f(1)")], "train"),  # the decorator's import first
    ],
)
def test_stage_code_runs_without_name_errors(cells: list[CellSpec], stage: str) -> None:
    a = run(*cells)
    assert a.stage(stage).inputs == {}
    code = stage_code(a, stage)
    assert "\n".join(code).count("try:") <= 1  # one optional import, copied once
    namespace: dict = {}
    for source in code:
        exec(compile(source, "<stage cell>", "exec"), namespace)  # noqa: S102


def test_a_stage_leaves_out_imports_it_never_uses_but_keeps_side_effect_imports() -> None:
    a = run((["imports"], ("import json\nimport math, os\nimport antigravity_plugin\n"
                          "from os import path as p")),
            (["functions"], "def f(v):\n    return p.join(v)"),
            (["stage:a"], "x = json.dumps(1)"),
            (["stage:b"], "def g():\n    return math.pi\ny = 2"),
            (["stage:c"], "z = os.sep"))
    # json: used by a only; math: b (in a def body); os: c; p: the functions cell (everywhere);
    # antigravity_plugin: used nowhere, so imported for its side effects: kept everywhere
    assert a.stage("a").pruned == {0: (
        "# nb2prod: left out imports this stage never uses: math, os\n"
        "import json\nimport antigravity_plugin\nfrom os import path as p")}
    assert a.stage("b").pruned[0].splitlines()[1:3] == ["import math", "import antigravity_plugin"]
    assert a.stage("c").pruned[0].splitlines()[1:3] == ["import os", "import antigravity_plugin"]
    code = stage_code(a, "c")
    assert "import json" not in "\n".join(code)


def test_imports_are_kept_whole_when_the_cell_cannot_be_rewritten_safely() -> None:
    a = run((["imports"], "%matplotlib inline\nimport json\nimport math"),
            (["imports"], "import os; import sys"),
            (["stage:a"], "x = json.dumps(1)"), (["stage:b"], "y = math.pi + len(os.sep + sys.path[0])"))
    assert a.stage("a").pruned == {}


def test_a_loaded_object_brings_the_classes_and_functions_of_its_producer() -> None:
    # pickle finds a notebook class by name (`__main__.Wrapper`): the consumer must define it
    a = run((["stage:a"], "import json\ndata = 3"),
            (["train"], ("class Wrapper(json.JSONEncoder):\n    def dump(self):\n"
                        "        return json.dumps(self.m) + str(data)\n"
                        "def scorer(v):\n    return v\nw = Wrapper()\nw.m = 1")),
            (["stage:use"], "print(w)"))
    use = a.stage("use")
    assert use.inputs == {"w": "train"}  # not `data`: methods do not run when unpickling
    assert set(use.copied) == {"Wrapper", "scorer", "json"}
    code = stage_code(a, "use")
    namespace: dict = {"w": None}
    for source in code[:-1]:  # all but the stage's own cell: the class is defined without data
        exec(compile(source, "<stage cell>", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["Wrapper"], type)


def test_a_module_the_parameters_cell_reads_is_imported_before_it(monkeypatch) -> None:
    # The notebook imports os above its parameters cell; a stage notebook starts with
    # the parameters cell (papermill injects the values right after it).
    a = run((["imports"], "import os\nimport json"),
            (["parameters"], "DATA_DIR = os.environ.get('NB2PROD_TEST_DATA_DIR', 'data')"),
            (["train"], "n = len(DATA_DIR)"), (["stage:report"], "print(json.dumps(n))"))
    for stage in a.stages:
        assert stage.before_parameters == {"os"} and stage.copied["os"].source == "import os\n"
        assert stage.before_prelude == set()
    from nb2prod.render import stage_notebook
    from nb2prod.templates import environment

    cells = stage_notebook(a, a.stage("train"), environment())["cells"]
    assert [c["id"] for c in cells[:2]] == ["nb2prod-copied-before-parameters", "cell-1"]
    assert cells[1]["metadata"]["tags"] == ["parameters"]
    assert cells[0]["source"] == ("# nb2prod: imports the parameters cell reads: it runs first "
                                  "(papermill sets the values after it)\nimport os")
    monkeypatch.setenv("NB2PROD_TEST_DATA_DIR", "/srv/data")
    namespace: dict = {}
    for source in stage_code(a, "train"):  # in stage order, as papermill runs them
        exec(compile(source, "<stage cell>", "exec"), namespace)  # noqa: S102
    assert namespace["n"] == len("/srv/data")


def test_a_parameters_cell_reading_what_a_later_cell_defines_is_refused_naming_it() -> None:
    found = problems((["functions"], "def default_dir():\n    return 'data'"),
                     (["parameters"], "DATA_DIR = default_dir()"), (["train"], "x = DATA_DIR"))
    assert found == [('nb.ipynb, cell 2 ("DATA_DIR = default_dir()"): the parameters cell reads '
                      "'default_dir', which is neither a parameter nor an import: every stage "
                      "runs its parameters cell first; move the code that needs 'default_dir' "
                      "to a later cell")]
    # a second parameters cell may read what the first one sets
    assert run((["parameters"], "N = 2"), (["parameters"], "M = N * 2"),
               (["train"], "x = M")).stage("train").inputs == {}


def test_copied_definitions_come_before_the_load_unless_they_read_a_loaded_name() -> None:
    from nb2prod.render import stage_notebook
    from nb2prod.templates import environment

    a = run((["train"], "K = 2\nclass M:\n    pass\ndef f(x, k=K):\n    return x * k\nm = M()"),
            (["stage:use"], "print(m, f(1))"))
    use = a.stage("use")
    assert use.inputs == {"K": "train", "m": "train"}
    cells = stage_notebook(a, use, environment())["cells"]
    ids = [c["id"] for c in cells if c["id"].startswith("nb2prod-")]
    assert ids == ["nb2prod-parameters", "nb2prod-copied", "nb2prod-load",
                   "nb2prod-copied-after-load"]
    by_id = {c["id"]: c["source"] for c in cells}
    assert "class M" in by_id["nb2prod-copied"] and "def f" in by_id["nb2prod-copied-after-load"]


def test_models_fitted_through_a_loop_are_provided_by_the_fitting_stage() -> None:
    a = run((["stage:setup"], "models = {'lr': 1, 'rf': 2}\nX = 1\ny = 2"),
            (["train"], "for name, model in models.items():\n    model.fit(X, y)"),
            (["stage:evaluate"], "scores = {n: m.score(X, y) for n, m in models.items()}"))
    assert a.stage("evaluate").inputs == {"models": "train", "X": "setup", "y": "setup"}


@pytest.mark.parametrize("where", [["functions"], ["stage:setup"]])
def test_a_function_changing_its_argument_makes_the_calling_stage_the_provider(
        where: list[str]) -> None:
    # def add_features(df): df["r"] = ... / add_features(train): train changed in place
    a = run((where, "def add_features(df):\n    df['r'] = df['a'] / df['b']"),
            (["stage:load"], "train = {'a': 1, 'b': 2}"),
            (["stage:features"], "add_features(train)"),
            (["train"], "model = train['r']"))
    assert a.stage("train").inputs == {"train": "features"}
    assert a.stage("features").inputs == {"train": "load"}


@pytest.mark.parametrize("name", ["sklearn", "xgboost"])
def test_a_stage_named_like_an_installed_module_gets_a_warning_on_its_cell(name: str) -> None:
    # stage-N-xgboost/xgboost.py would be what `import xgboost` imports in that stage
    a = run((["train"], "x = 1"), ([f"stage:{name}"], "y = x"))
    assert [(w.cell, w.message) for w in a.warnings] == [(1, (
        f"stage '{name}': its script {name}.py would be imported instead of Python's "
        f"'{name}' module inside the stage; rename the stage (e.g. '{name}_stage')"))]
    assert run((["train"], "x = 1"), (["stage:inspect_model"], "y = x")).warnings == []


def test_an_untagged_imports_cell_above_the_first_stage_says_its_imports_reach_the_stages() -> None:
    a = run(([], "%matplotlib inline\nimport numpy as np\nimport pandas as pd"),
            ([], "import json\nx = 1"), (["train"], "y = np.zeros(2)"))
    assert a.unassigned == {0: "imports only: each stage gets the ones it uses",
                            1: "before the first stage tag"}
    assert a.stage("train").copied["np"].source == "import numpy as np\n"


@pytest.mark.parametrize("branches", [
    "if USE_GPU:\n    import cupy as xp\nelse:\n    import numpy as xp",
    ("if USE_GPU:\n    import cupy as xp\n    DEVICE = 'cuda'\nelse:\n    import numpy as xp\n"
     "    DEVICE = 'cpu'"),
])
def test_a_conditional_import_reaches_every_stage_using_the_name(branches: str) -> None:
    a = run((["parameters"], "USE_GPU = False"),
            (["stage:a"], f"{branches}\nX = xp.arange(3)"),
            (["stage:b"], "Z = xp.zeros(3)"), (["train"], "w = xp.ones(3)"))
    for name in ("b", "train"):
        stage = a.stage(name)
        assert stage.inputs == {}
        assert stage.copied["xp"].source == branches + "\n"
    assert all(s.outputs == [] for s in a.stages)
    assert a.edges == []


def test_an_import_in_an_if_inside_a_loop_reaches_the_stage_using_it_not_as_data() -> None:
    a = run((["parameters"], "VERBOSE = True"),
            (["stage:a"], ("rows = []\nfor n in range(3):\n    if VERBOSE:\n        import json\n"
                           "    rows.append(n)")),
            (["stage:b"], "text = json.dumps(rows)"))
    b = a.stage("b")
    assert b.inputs == {"rows": "a"}  # json is a module, never data
    assert b.copied["json"].source == "if VERBOSE:\n    import json\n"
    assert a.stage("a").outputs == ["rows"]


def test_a_version_dependent_import_brings_the_module_its_test_reads_first() -> None:
    a = run((["stage:a"], ("import sys\nif sys.version_info >= (3, 11):\n    import tomllib\n"
                           "else:\n    import tomli as tomllib\nx = 1")),
            (["stage:b"], "c = tomllib.loads('a = 1')"))
    b = a.stage("b")
    assert b.inputs == {}
    assert list(b.copied) == ["sys", "tomllib"]  # `sys` runs before the `if` reading it


@pytest.mark.parametrize(("orphan", "functions", "name"), [
    ("import functools\nimport pandas as pd\ndf = pd.DataFrame()",
     "@functools.lru_cache(maxsize=None)\ndef f(x):\n    return x * 2", "functools"),
    ("import os\nprint(os.getcwd())", "def f(x, sep=os.sep):\n    return x + sep", "os"),
])
def test_an_import_a_functions_cell_needs_at_once_runs_before_it(
        orphan: str, functions: str, name: str) -> None:
    # The import is in a cell in no stage (exploration above the first stage); the
    # decorator or default value runs when the functions cell runs, first in every stage.
    a = run(([], orphan), (["functions"], functions), (["stage:a"], "y = f('a')"),
            (["stage:b"], f"import {name}\nz = f('b')"))
    assert a.unassigned == {0: "before the first stage tag"}
    for stage in a.stages:
        assert name in stage.copied and name in stage.before_prelude
