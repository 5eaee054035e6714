"""Unit tests of nb2prod/dataflow/: what one cell reads, writes, mutates, imports, defines."""

from __future__ import annotations

import textwrap

import pytest

from nb2prod.dataflow import (
    BUILTIN_NAMES,
    CellFlow,
    CellSyntaxError,
    analyze_cell,
    python_source,
    without_imports,
)
from nb2prod.readonly import PURE_METHODS


def flow(source: str) -> CellFlow:
    return analyze_cell(textwrap.dedent(source))


def reads(f: CellFlow) -> set[str]:
    """Definite module-level reads, builtins left out."""
    return set(f.reads) - BUILTIN_NAMES


# -- bindings ----------------------------------------------------------------------------
def test_assignment() -> None:
    f = flow("a = b + c\nd = a * 2\n")
    assert reads(f) == {"b", "c"}  # `a` is bound before it is read
    assert f.writes == {"a", "d"}
    assert f.mutates == frozenset()


def test_read_before_assignment_in_the_same_cell_is_an_input() -> None:
    f = flow("total = total + 1\n")
    assert reads(f) == {"total"}
    assert f.writes == {"total"}


def test_augmented_assignment_reads_and_writes() -> None:
    f = flow("x += y\n")
    assert reads(f) == {"x", "y"}
    assert "x" in f.writes
    assert "x" in f.provides


@pytest.mark.parametrize("source", ["a, (b, *c) = d\n", "[a, b, c] = d\n", "a = b = c = d\n"])
def test_tuple_unpacking_and_chained_targets(source: str) -> None:
    f = flow(source)
    assert reads(f) == {"d"}
    assert f.writes == {"a", "b", "c"}


def test_annotated_assignment() -> None:
    f = flow("n: int = m\nk: float\n")
    assert reads(f) == {"m"}
    assert f.writes == {"n"}  # a bare annotation binds nothing


def test_for_target_and_body() -> None:
    f = flow(
        """
        for i, (j, k) in pairs:
            last = i + j + k + offset
        """
    )
    assert reads(f) == {"pairs", "offset"}
    # the loop may run zero times: what it binds is only possibly bound
    assert {"i", "j", "k", "last"} <= f.maybe_writes
    assert {"i", "j", "k", "last"} <= f.provides


def test_with_target() -> None:
    f = flow(
        """
        with open(path) as fh, lock:
            text = fh.read()
        """
    )
    assert reads(f) == {"path", "lock"}
    assert {"fh", "text"} <= f.writes


def test_except_target_is_not_read_from_outside() -> None:
    f = flow(
        """
        try:
            value = parse(raw)
        except ValueError as err:
            message = str(err)
        """
    )
    assert reads(f) == {"parse", "raw"}
    assert "err" not in f.reads and "err" not in f.maybe_reads
    assert {"value", "message", "err"} <= f.provides


def test_walrus_binds_in_the_enclosing_scope() -> None:
    f = flow("if (n := len(items)) > 3:\n    big = n\nprint(n)\n")
    assert reads(f) == {"items"}
    assert "n" in f.writes
    assert "big" in f.maybe_writes


def test_walrus_inside_a_comprehension_binds_outside_it() -> None:
    f = flow("vals = [last := g(x) for x in xs]\nprint(last)\n")
    assert reads(f) == {"g", "xs"}
    assert {"vals", "last"} <= f.writes


def test_conditional_binding_then_read_is_a_maybe_read() -> None:
    f = flow("if flag:\n    z = 1\nprint(z)\n")
    assert reads(f) == {"flag"}
    assert "z" in f.maybe_reads  # an input only if an earlier stage provides it
    assert "z" in f.maybe_writes


# -- scopes ------------------------------------------------------------------------------
def test_comprehension_variables_are_local() -> None:
    f = flow("squares = [i * k for i in range(n) if i != skip]\n")
    assert reads(f) == {"k", "n", "skip"}
    assert f.writes == {"squares"}
    assert "i" not in f.provides


def test_comprehension_variable_does_not_leak() -> None:
    f = flow("[i for i in range(3)]\nprint(i)\n")
    assert "i" in reads(f)  # Python 3: `i` after the comprehension is the module's `i`


def test_nested_comprehensions_and_dict_and_generator() -> None:
    f = flow(
        "pairs = {a: [b for b in group if b > a] for a, group in groups.items()}\n"
        "total = sum(x * w for x in values)\n"
    )
    assert reads(f) == {"groups", "values", "w"}
    assert f.writes == {"pairs", "total"}


def test_lambda_parameters_are_local_and_free_names_maybe_read() -> None:
    f = flow("f = lambda v, k=default: v * scale + k\n")
    assert reads(f) == {"default"}  # default values are evaluated now
    assert "v" not in f.reads | f.maybe_reads
    assert "scale" in f.maybe_reads  # read only if the lambda is called


def test_def_reads_its_free_names_where_called_not_where_defined() -> None:
    defined = flow(
        """
        def score(v):
            local = v * factor
            return local + offset
        """
    )
    assert reads(defined) == set()
    assert defined.writes == {"score"}
    assert defined.definitions["score"].kind == "def"
    assert defined.definitions["score"].free_reads >= {"factor", "offset"}
    assert "local" not in defined.definitions["score"].free_reads

    called = flow(
        """
        def score(v):
            return v * factor
        result = score(2)
        """
    )
    assert reads(called) == {"factor"}
    assert called.writes == {"score", "result"}


def test_def_default_values_and_decorators_are_read_at_definition() -> None:
    f = flow(
        """
        @register(registry)
        def handler(x, scale=SCALE):
            return x * scale
        """
    )
    assert reads(f) == {"register", "registry", "SCALE"}


def test_def_source_is_kept_for_copying() -> None:
    source = "@decorate\ndef twice(v):\n    return 2 * v\n\nx = twice(1)\n"
    f = analyze_cell(source)
    assert f.definitions["twice"].source == "@decorate\ndef twice(v):\n    return 2 * v\n"


def test_class_body_runs_now_methods_later() -> None:
    f = flow(
        """
        class Model(Base):
            rate = default_rate
            def step(self):
                return self.rate * momentum
        """
    )
    assert reads(f) == {"Base", "default_rate"}
    assert f.writes == {"Model"}
    definition = f.definitions["Model"]
    assert definition.kind == "class"
    # needed when a method runs, which the analysis cannot see: read only if provided
    assert "momentum" in definition.method_reads
    assert "momentum" not in definition.free_reads


def test_global_in_a_function_writes_the_module_name_when_called() -> None:
    f = flow(
        """
        def bump():
            global counter
            counter += 1
        bump()
        """
    )
    assert "counter" in reads(f)  # `counter += 1` reads it
    assert "counter" in f.provides


def test_module_level_global_statement_changes_nothing() -> None:
    f = flow("global g\ng = 1\n")
    assert f.writes == {"g"}
    assert reads(f) == set()


def test_function_mutating_a_global_counts_as_mutation_when_called() -> None:
    f = flow(
        """
        def remember(v):
            history.append(v)
        remember(1)
        """
    )
    assert "history" in reads(f)
    assert "history" in f.mutates


# -- imports -------------------------------------------------------------------------------
def test_imports_bind_names_and_are_recorded_with_line_numbers() -> None:
    f = flow(
        """
        import numpy as np
        import os.path
        from sklearn.linear_model import LogisticRegression as LR
        from . import sibling
        """
    )
    assert f.writes == {"np", "os", "LR", "sibling"}
    assert f.imports == (("numpy", 2), ("os", 3), ("sklearn", 4))  # relative import: no module
    assert f.definitions["np"].source == "import numpy as np\n"
    assert f.definitions["os"].source == "import os.path\n"
    assert f.definitions["LR"].source == "from sklearn.linear_model import LogisticRegression as LR\n"
    assert {d.kind for d in f.definitions.values()} == {"import"}


def test_import_inside_a_function_is_recorded_but_binds_locally() -> None:
    f = flow(
        """
        def load():
            import json
            return json.loads(text)
        """
    )
    assert "json" not in f.writes
    assert "json" not in f.definitions["load"].free_reads


def test_star_import_is_flagged_with_its_line() -> None:
    f = flow("x = 1\nfrom os.path import *\n")
    assert f.star_import == 2
    assert flow("from os.path import join\n").star_import is None


# -- del -----------------------------------------------------------------------------------
def test_del_reads_and_unbinds() -> None:
    f = flow("del a\n")
    assert reads(f) == {"a"}
    assert f.deletes == {"a"}
    assert "a" not in f.provides


def test_del_after_assignment_in_the_same_cell() -> None:
    f = flow("tmp = compute()\nresult = tmp * 2\ndel tmp\n")
    assert reads(f) == {"compute"}
    assert "tmp" not in f.writes
    assert "result" in f.writes


def test_del_of_an_item_is_a_mutation() -> None:
    f = flow("del cache['key']\n")
    assert "cache" in f.mutates
    assert f.deletes == frozenset()


# -- mutation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("d['k'] = v\n", "d"),
        ("d[i][j] = v\n", "d"),
        ("obj.attr = v\n", "obj"),
        ("obj.inner.attr = v\n", "obj"),
        ("obj.items[0].x = v\n", "obj"),
        ("d['k'] += 1\n", "d"),
        ("model.fit(X, y)\n", "model"),
        ("df.dropna(inplace=True)\n", "df"),
        ("df.replace(1, 2, inplace=True)\n", "df"),  # a pure method made impure
        ("xs.append(1)\n", "xs"),
        ("xs.extend(ys)\n", "xs"),
        ("m.update(other)\n", "m"),
        ("m.pop('k', None)\n", "m"),
        ("pipe.steps[0].fit(X)\n", "pipe"),
        ("rng.shuffle(xs)\n", "rng"),
    ],
)
def test_mutation(source: str, name: str) -> None:
    f = flow(source)
    assert name in f.mutates
    assert name in f.provides
    assert name in reads(f)  # mutating needs the value: it is also an input


@pytest.mark.parametrize(
    ("source", "receiver"),
    [
        ("p = model.predict(X)\n", "model"),
        ("s = model.score(X, y)\n", "model"),
        ("h = df.head()\n", "df"),
        ("c = df.copy()\n", "df"),
        ("k = list(d.keys())\n", "d"),
        ("v = d.get('k')\n", "d"),
        ("df2 = df.replace(1, 2, inplace=False)\n", "df"),
    ],
)
def test_pure_methods_do_not_mutate(source: str, receiver: str) -> None:
    f = flow(source)
    assert receiver in reads(f)
    assert f.mutates == frozenset()
    assert receiver not in f.provides


def test_pure_method_list_covers_common_readers() -> None:
    assert {"predict", "score", "transform", "head", "copy", "get", "keys"} <= PURE_METHODS
    assert not {"fit", "append", "update", "pop", "extend", "sort", "fill", "set_params",
                "construct", "add", "fit_transform", "partial_fit"} & PURE_METHODS


def test_module_attribute_call_counts_as_use_not_data() -> None:
    # np.mean(...) "mutates" np by the letter of the rule; the analysis later ignores
    # modules, but the cell must still report the read.
    f = flow("import numpy as np\nm = np.mean(xs)\n")
    assert reads(f) == {"xs"}
    assert "np" in f.writes


# -- IPython syntax --------------------------------------------------------------------------
def test_line_magics_and_shell_lines_are_transformed() -> None:
    f = flow(
        """
        %matplotlib inline
        x = base + 1
        !pip list
        files = !ls
        """
    )
    assert reads(f) - {"get_ipython"} == {"base"}
    assert f.writes == {"x", "files"}


def test_python_cell_magic_body_is_analysed() -> None:
    f = flow("%%time\ny = x + 1\n")
    assert reads(f) == {"x"}
    assert f.writes == {"y"}


def test_capture_cell_magic_binds_its_variable() -> None:
    f = flow("%%capture out\nprint(x)\n")
    assert "out" in f.writes
    assert reads(f) == {"x"}


@pytest.mark.parametrize("source", ["%%bash\necho $x\n", "%%html\n<b>{x}</b>\n",
                                    "%%writefile f.txt\nx = 1\n"])
def test_non_python_cell_magics_do_nothing(source: str) -> None:
    f = flow(source)
    assert f.reads == f.writes == f.mutates == frozenset()


def test_python_source_leaves_valid_python_alone() -> None:
    source = "a = b % c\n"
    assert python_source(source) == source


def test_syntax_error_is_reported_with_its_line() -> None:
    with pytest.raises(CellSyntaxError) as info:
        analyze_cell("x = 1\ny = = 2\n")
    assert info.value.lineno == 2
    assert "line 2" in str(info.value)


# -- issue 12 ----------------------------------------------------------------------------------
def test_optional_import_is_one_definition_with_optional_modules() -> None:
    f = flow(
        """
        try:
            import ujson as json
            FAST = True
        except ImportError:
            import json
            FAST = False
            warnings.warn("slow json")
        """
    )
    assert f.optional_imports == {"ujson", "json"}
    assert f.definitions["json"] is f.definitions["FAST"]
    definition = f.definitions["json"]
    assert (definition.kind, definition.optional, definition.modules) == (
        "import", True, ("ujson", "json"))
    assert definition.source.startswith("try:\n") and "slow json" in definition.source
    assert definition.free_reads == {"warnings"}


@pytest.mark.parametrize("header", ["except ImportError:", "except ModuleNotFoundError:",
                                    "except (ImportError, OSError):", "except Exception:",
                                    "except:"])
def test_handlers_that_catch_a_failed_import_make_an_optional_import(header: str) -> None:
    f = flow(f"try:\n    import xgboost as xgb\n{header}\n    xgb = None\n")
    assert f.optional_imports == {"xgboost"}
    assert f.definitions["xgb"].optional


@pytest.mark.parametrize("source", [
    "try:\n    import x\nexcept ValueError:\n    pass\n",  # not about imports
    "try:\n    import x\n    model = fit()\nexcept ImportError:\n    pass\n",  # does work
])
def test_other_try_statements_are_not_optional_imports(source: str) -> None:
    f = flow(source)
    assert f.optional_imports == frozenset()
    assert "x" not in f.definitions


def test_imports_inside_functions_and_methods_are_recorded() -> None:
    f = flow("def f():\n    import yaml\nclass C:\n    def m(self):\n        from PIL import Image\n")
    assert [m for m, _ in f.imports] == ["yaml", "PIL"]
    assert f.definitions["f"].modules == ("yaml",)


@pytest.mark.parametrize(("source", "declarative"), [
    (("import os\nfrom a import b\nSEED = 42\nCOLS = ['a', 'b']\nN: int = -3\n"
     "def f():\n    return fit()\nclass C:\n    pass\n%matplotlib inline\n'''doc'''\n"), True),
    ("", True),
    ("x = compute()\n", False),
    ("df.head()\n", False),
    ("print(1)\n", False),
    ("!pip install xgboost\n", False),
    ("path = Path('data')\n", False),
    ("try:\n    import x\nexcept ImportError:\n    x = None\n", True),
    (("import numpy as np\nnp.random.seed(42)\nimport warnings\nwarnings.filterwarnings('ignore')\n"
     "plt.style.use('ggplot')\nsns.set_theme(style='whitegrid')\n"
     "plt.rcParams['figure.figsize'] = (10, 6)\npd.options.display.max_rows = 100\n"), True),
    ("np.random.seed(SEED)\n", True),  # a parameter, say
    ("np.random.seed(len(df))\n", False),  # computed: work
    ("df['a'] = 0\n", False),  # data, not an option
    ("model.fit(X)\n", False),
])
def test_declarative_cells(source: str, declarative: bool) -> None:
    assert analyze_cell(source).declarative is declarative


@pytest.mark.parametrize("source", ["X.clip(0, 1, out=X)\n", "df.drop(columns=['a'], inplace=1)\n"])
def test_out_and_inplace_arguments_make_a_read_only_method_mutate(source: str) -> None:
    assert flow(source).mutates == {source[:source.index(".")]}


@pytest.mark.parametrize("source", ["df.plot.bar(x='a')\n", "s.str.lower().unique()\n",
                                    "b.feature_name()\n", "X.ravel()\n"])
def test_read_only_calls_and_accessors(source: str) -> None:
    assert flow(source).mutates == frozenset()


@pytest.mark.parametrize(("source", "mutated"), [
    ("for name, m in models.items():\n    m.fit(X, y)\n", {"models", "m"}),
    ("for m in [lr, rf]:\n    m.fit(X, y)\n", {"lr", "rf", "m"}),
    ("for a, b in zip(xs, ys):\n    a.append(b)\n", {"xs", "ys", "a"}),
    ("m = models['lr']\nm.fit(X, y)\n", {"models", "m"}),
    ("step = pipe.steps[0][1]\nstep.fit(X)\n", {"pipe", "step"}),
    ("[m.fit(X, y) for m in models.values()]\n", {"models"}),
    ("def fit_all():\n    for m in models:\n        m.fit(X, y)\nfit_all()\n", {"models"}),
    ("X2 = X.copy()\nX2['a'] = 1\n", {"X2"}),  # a new object: X unchanged
    ("m = make()\nm.fit(X)\n", {"m"}),
    ("m = models['lr']\nm = other\nm.fit(X)\n", {"m", "other"}),  # rebinding ends the alias
])
def test_mutating_an_alias_mutates_what_it_came_from(source: str, mutated: set[str]) -> None:
    assert flow(source).mutates == mutated


@pytest.mark.parametrize(("source", "mutated"), [
    ("def add(df):\n    df['r'] = df.a / df.b\nadd(train)\n", {"train"}),
    ("def add(df, col):\n    df[col] = 1\nadd(col='x', df=train)\n", {"train"}),
    ("def fit_all(ms, X):\n    for m in ms.values():\n        m.fit(X)\nfit_all(models, X)\n",
     {"models"}),
    ("def prep(df):\n    df = df.copy()\n    df['r'] = 1\n    return df\nout = prep(train)\n",
     set()),  # copied first: the caller's frame is left alone
    ("def prep(df):\n    df['r'] = 1\n    df = df.dropna()\n    return df\nprep(train)\n",
     {"train"}),
    ("def show(df):\n    print(df.head())\nshow(train)\n", set()),
])
def test_a_call_mutates_what_the_function_changes_through_its_parameters(
        source: str, mutated: set[str]) -> None:
    assert flow(source).mutates == mutated


@pytest.mark.parametrize(("source", "names", "expected"), [
    ("import a, b as c\nfrom x.y import (p,\n   q)\nimport os.path\nx = 1\n", {"c", "q", "os"},
     ("# nb2prod: left out imports this stage never uses: c, os, q\n"
     "import a\nfrom x.y import p\nx = 1\n")),
    ("import a, b  # é 数値\nimport c\n", {"b"},
     "# nb2prod: left out imports this stage never uses: b\nimport a  # é 数値\nimport c\n"),
    ("from __future__ import annotations\nimport a\n", {"annotations", "a"},
     ("# nb2prod: left out imports this stage never uses: a\n"
     "from __future__ import annotations\n")),
    ("import a; x = 1\n", {"a"}, None),  # shares its line
    ("%matplotlib inline\nimport a\n", {"a"}, None),  # magics: kept as written
    ("import a\r\nimport b\r\n", {"b"}, None),
    ("import a\n", {"z"}, None),  # nothing to leave out
])
def test_without_imports(source: str, names: set[str], expected: str | None) -> None:
    assert without_imports(source, names) == expected


@pytest.mark.parametrize(("source", "names", "modules"), [
    ("if USE_GPU:\n    import cupy as xp\nelse:\n    import numpy as xp\n", {"xp"},
     ("cupy", "numpy")),
    ("if sys.version_info >= (3, 11):\n    import tomllib\nelse:\n    import tomli as tomllib\n",
     {"tomllib"}, ("tomllib", "tomli")),
    ("if A:\n    import a as m\nelif B:\n    from b import m\n", {"m"}, ("a", "b")),
    (("if SHOW:\n    try:\n        import plotly as px\n    except ImportError:\n"
      "        px = None\n"), {"px"}, ("plotly",)),
])
def test_a_conditional_import_is_one_optional_import_definition_not_data(
        source: str, names: set[str], modules: tuple[str, ...]) -> None:
    # DESIGN.md "What is not data": names bound by imports, whichever branch binds them.
    f = flow(source)
    for name in names:
        definition = f.definitions[name]
        assert (definition.kind, definition.optional, definition.modules) == (
            "import", True, modules)
        assert definition.source == source  # the whole if/else reaches the consumer
    assert f.optional_imports == set(modules)  # a branch's module may be missing
    assert f.declarative


def test_a_conditional_import_that_also_does_work_copies_only_its_imports() -> None:
    f = flow("if FAST:\n    import ujson as json\n    data = json.loads(s)\nelse:\n"
             "    import json\n    data = json.loads(s)\n")
    assert f.definitions["json"].source == (
        "if FAST:\n    import ujson as json\nelse:\n    import json\n")
    assert f.definitions["json"].free_reads == {"FAST"}
    assert "data" not in f.definitions and "data" in f.writes
    assert not f.declarative


@pytest.mark.parametrize(("source", "expected"), [
    ("for path in PATHS:\n    if VERBOSE:\n        import json\n    n = len(path)\n",
     "if VERBOSE:\n    import json\n"),
    ("while more():\n    with lock:\n        if VERBOSE:\n            import json\n",
     "if VERBOSE:\n    import json\n"),
    ("for i in range(2):\n    import json\n", "import json\n"),
    ("if VERBOSE:\n    for path in PATHS:\n        import json\n",
     "if VERBOSE:\n    import json\n"),
])
def test_an_import_in_a_loop_is_an_import_not_data(source: str, expected: str) -> None:
    # The loop may run zero times, so the name is bound only maybe, but it is a module
    # whichever way: one import definition (the loop itself is never copied).
    f = flow(source)
    assert "json" in f.maybe_writes
    assert f.definitions["json"].kind == "import"
    assert f.definitions["json"].source == expected
    assert f.definitions["json"].modules == ("json",)


def test_an_import_chosen_by_a_loop_variable_copies_every_branch_import() -> None:
    # Copying the `if` would take the branch of the loop's last value only.
    f = flow("for name in MODELS:\n    if name == 'xgb':\n        import xgboost as xgb\n"
             "        models[name] = xgb.XGBClassifier()\n    elif name == 'lgbm':\n"
             "        from lightgbm import LGBMClassifier\n")
    assert f.definitions["xgb"].source == "import xgboost as xgb\n"
    assert f.definitions["LGBMClassifier"].source == "from lightgbm import LGBMClassifier\n"
    assert all(f.definitions[n].optional and not f.definitions[n].free_reads
               for n in ("xgb", "LGBMClassifier"))
    assert f.optional_imports == {"xgboost", "lightgbm"}


def test_a_definition_inside_with_is_copied_at_module_level() -> None:
    f = flow("with open('x') as fh:\n    if A:\n        import a as m\n"
             "    def g():\n        return 1\n")
    assert f.definitions["m"].source == "if A:\n    import a as m\n"
    assert f.definitions["g"].source == "def g():\n    return 1\n"
