"""Unit tests of nb2prod/requirements.py: imports → pinned distributions from metadata."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from nb2prod.analysis import analyze
from nb2prod.errors import UserError
from nb2prod.notebook import Cell, Notebook, import_nbformat
from nb2prod.render import render
from nb2prod.requirements import RUNTIME_REQUIREMENTS, Import, is_stdlib, pin, resolve
from nb2prod.split import check_notebook, split_notebook

# nbformat through nb2prod's fast path before render imports jupytext (which imports it).
import_nbformat()


def installed(distribution: str) -> str:
    """`Name==version` of an installed distribution, read independently of nb2prod."""
    dist = metadata.distribution(distribution)
    return f"{dist.metadata['Name']}=={dist.version}"


# Import name → distribution pairs whose names differ, for distributions installed here
# (checked through importlib.metadata first, so the test never depends on a hand table).
CANDIDATES = [("sklearn", "scikit-learn"), ("yaml", "PyYAML"), ("PIL", "Pillow"),
              ("bs4", "beautifulsoup4"), ("dateutil", "python-dateutil"),
              ("cv2", "opencv-python")]
_PROVIDERS = metadata.packages_distributions()
RENAMED = [(module, dist) for module, dist in CANDIDATES
           if dist.lower() in {d.lower() for d in _PROVIDERS.get(module, [])}]


def test_renamed_distributions_are_available_to_test() -> None:
    # sklearn and yaml are test dependencies of nb2prod: these must always be exercised.
    assert ("sklearn", "scikit-learn") in RENAMED
    assert ("yaml", "PyYAML") in RENAMED


@pytest.mark.parametrize(("module", "distribution"), RENAMED)
def test_import_name_maps_to_its_distribution_pinned(module: str, distribution: str) -> None:
    result = resolve([(module, 3)], "none", {})
    assert result.problems == ()
    assert result.lines == (installed(distribution),)


def test_pin_uses_the_canonical_name_and_installed_version() -> None:
    assert pin("scikit-learn") == installed("scikit-learn")
    assert pin("pyyaml") == installed("PyYAML")
    assert pin("pyyaml").startswith("PyYAML==")


@pytest.mark.parametrize("module", ["os", "json", "sys", "math", "collections", "itertools",
                                    "__future__", "asyncio", "sqlite3"])
def test_stdlib_is_excluded(module: str) -> None:
    assert is_stdlib(module)
    assert resolve([(module, 1)], "none", {}) == resolve([], "none", {})


def test_third_party_is_not_stdlib() -> None:
    assert not is_stdlib("numpy")
    assert not is_stdlib("sklearn")


def test_lines_are_sorted_and_deduplicated() -> None:
    result = resolve([("sklearn", 1), ("numpy", 1), ("sklearn", 2), ("yaml", 4)], "none", {})
    assert result.lines == tuple(sorted(
        {installed("numpy"), installed("scikit-learn"), installed("PyYAML")},
        key=lambda line: line.split("==")[0].lower()))


def test_unresolvable_import_is_a_problem_naming_import_and_cell() -> None:
    result = resolve([("numpy", 0), ("nb2prod_no_such_module", 7)], "none", {}, file="nb.ipynb")
    assert result.lines == (installed("numpy"),)
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert (problem.file, problem.cell) == ("nb.ipynb", 7)
    assert str(problem).startswith("nb.ipynb, cell 8: import 'nb2prod_no_such_module' is not "
                                   "installed here")
    assert "[requirements]" in str(problem)


def test_requirements_override_maps_an_uninstalled_import() -> None:
    result = resolve([("nb2prod_no_such_module", 7), ("cv2", 2)], "none",
                     {"nb2prod_no_such_module": "nosuch-dist==1.2.3",
                      "cv2": "opencv-python-headless>=4"})
    assert result.problems == ()
    assert result.lines == ("nosuch-dist==1.2.3", "opencv-python-headless>=4")


def test_requirements_override_replaces_an_installed_mapping() -> None:
    result = resolve([("sklearn", 1)], "none", {"sklearn": "scikit-learn==1.0"})
    assert result.lines == ("scikit-learn==1.0",)


def test_empty_override_ignores_the_import() -> None:
    result = resolve([("nb2prod_no_such_module", 7)], "none", {"nb2prod_no_such_module": ""})
    assert result.lines == () and result.problems == ()


def test_local_modules_and_the_runtime_are_not_distributions() -> None:
    result = resolve([("helpers", 1), ("nb2prod_runtime", 2)], "none", {}, {"helpers"})
    assert result.lines == () and result.problems == ()


@pytest.mark.parametrize("stage_type", ["batch", "service"])
def test_runtime_requirements_per_stage_type(stage_type: str) -> None:
    lines = resolve([], stage_type, {}).lines
    assert lines == tuple(sorted((installed(d) for d in RUNTIME_REQUIREMENTS[stage_type]),
                                 key=lambda line: line.split("==")[0].lower()))
    names = {line.split("==")[0].lower() for line in lines}
    if stage_type == "batch":
        assert {"papermill", "ipykernel", "joblib"} <= names
        assert "gunicorn" not in names
    else:
        assert {"flask", "gunicorn", "joblib"} <= names
        assert "papermill" not in names


def test_user_import_and_runtime_requirement_are_not_listed_twice() -> None:
    lines = resolve([("joblib", 1)], "batch", {}).lines
    assert [line.split("==")[0] for line in lines].count("joblib") == 1


def test_stage_requirements_include_prelude_and_producer_imports(tmp_path: Path) -> None:
    """A stage's requirements.txt: its own imports, the imports/functions cells', and the
    imports of the stages it loads from (needed to unpickle their objects)."""
    cells = (
        Cell(0, "code", "import yaml", ("imports",)),
        Cell(1, "code", "import numpy as np\nx = np.zeros(2)", ("stage:prep",)),
        Cell(2, "code", "import json\ny = json.dumps(x.tolist())", ("stage:use",)),
        Cell(3, "code", "import sklearn\nz = 1", ("stage:other",)),
    )
    nb = Notebook(tmp_path / "nb.ipynb", cells, {}, "0" * 64)
    rendered = render(analyze(nb), tmp_path / "out")
    use = [line.split("==")[0] for line in rendered.requirements["use"]]
    assert "PyYAML" in use  # imports cell
    assert "numpy" in use  # producer's import
    assert "scikit-learn" not in use  # an unrelated stage's import
    assert {"papermill", "ipykernel", "joblib"} <= set(use)
    assert all("==" in line for line in rendered.requirements["use"])
    other = [line.split("==")[0] for line in rendered.requirements["other"]]
    assert "scikit-learn" in other and "numpy" not in other


def names(lines: list[str] | tuple[str, ...]) -> set[str]:
    return {line.split("==")[0].lower() for line in lines}


def test_a_stage_saving_or_loading_values_pins_what_their_serializers_need(
        tmp_path: Path) -> None:
    """`X = df.to_numpy()` names no `np`: the imports cell's numpy is pruned from the stage,
    but X is saved as .npy (and loaded so by `train`): numpy must be pinned there."""
    cells = (
        Cell(0, "code", "import numpy as np\nimport pandas as pd", ("imports",)),
        Cell(1, "code", "df = pd.DataFrame({'a': [1.0, 2.0]})\nX = df.to_numpy()",
             ("stage:prep",)),
        Cell(2, "code", "total = float(X.sum())", ("train",)),
        Cell(3, "code", "z = np.zeros(2)", ("stage:other",)),
    )
    nb = Notebook(tmp_path / "nb.ipynb", cells, {}, "0" * 64)
    analysis = analyze(nb)
    assert "np" in analysis.stage("prep").pruned[0]  # the import is left out of the code...
    rendered = render(analysis, tmp_path / "out")
    for stage in ("prep", "train"):
        assert {"numpy", "pandas"} <= names(rendered.requirements[stage])  # ...not the pins
    assert "pandas" not in names(rendered.requirements["other"])  # no values: pruned


def test_values_passed_on_keep_their_serializers_libraries(tmp_path: Path) -> None:
    """`b` passes a DataFrame on without importing pandas: `c`, loading it from `b`, still
    needs pandas, and numpy (which pandas requires) pinned."""
    cells = (
        Cell(0, "code", "import pandas as pd\nframe = pd.DataFrame({'a': [1.0, None]})",
             ("stage:a",)),
        Cell(1, "code", "clean = frame.dropna()", ("stage:b",)),
        Cell(2, "code", "n = len(clean)", ("stage:c",)),
    )
    nb = Notebook(tmp_path / "nb.ipynb", cells, {}, "0" * 64)
    rendered = render(analyze(nb), tmp_path / "out")
    assert {"numpy", "pandas"} <= names(rendered.requirements["c"])


def test_needed_libraries_follow_imports_and_what_their_distributions_require() -> None:
    from nb2prod.requirements import needed_libraries

    assert needed_libraries({"sklearn"}, {"numpy", "pandas"}) == {"numpy"}  # requires numpy
    assert needed_libraries({"pandas"}, {"numpy", "pandas"}) == {"numpy", "pandas"}
    assert needed_libraries({"json", "yaml"}, {"numpy", "pandas"}) == set()
    assert needed_libraries({"numpy"}, {"nb2prod_no_such_library"}) == set()  # not installed


def test_unresolvable_import_in_a_notebook_names_the_cell_index(tmp_path: Path) -> None:
    """The problem must name the notebook cell holding the import, not its line number."""
    cells = (
        Cell(0, "markdown", "# title"),
        Cell(1, "code", "x = 1", ("train",)),
        Cell(2, "code", "import os\nimport json\n\nimport nb2prod_no_such_module\ny = x", ()),
    )
    nb = Notebook(tmp_path / "nb.ipynb", cells, {}, "0" * 64)
    with pytest.raises(UserError) as info:
        render(analyze(nb), tmp_path / "out")
    assert [str(p) for p in info.value.problems] == [
        ("nb.ipynb, cell 3 (\"import os\"): import 'nb2prod_no_such_module' is not installed here, "
         "so its version cannot be pinned: install it, or add 'nb2prod_no_such_module = "
         "DISTRIBUTION==VERSION' (empty value: leave it out) under [requirements] in "
         f"{tmp_path.as_posix()}/nb2prod.ini")]


# -- issue 12: optional imports, a mapping that works on a first split, local code ------------
def write_notebook(path: Path, *cells: tuple[list[str], str]) -> Path:
    nbformat = import_nbformat()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source, metadata={"tags": tags})
                for tags, source in cells]
    nbformat.write(nb, path)
    return path


def test_optional_import_is_pinned_when_installed_and_noted_when_not() -> None:
    result = resolve([Import("nb2prod_no_such_module", cell=3, file="nb.ipynb", optional=True),
                      Import("yaml", cell=3, optional=True)], "none", {})
    assert result.problems == ()
    assert result.lines == (installed("PyYAML"),)
    assert [str(n) for n in result.notes] == [
        ("nb.ipynb, cell 4: optional import 'nb2prod_no_such_module' is not installed here: "
         "left out of requirements.txt")]
    # imported for real somewhere else: required after all
    both = resolve([Import("nb2prod_no_such_module", optional=True),
                    Import("nb2prod_no_such_module", cell=5)], "none", {})
    assert len(both.problems) == 1 and both.notes == ()


def test_try_except_import_error_never_fails_check_or_split(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "nb.ipynb",
        (["train"], ("try:\n    import nb2prod_no_such_widgets as widgets\nexcept ImportError:\n"
                    "    widgets = None\nimport yaml\nx = 1")),
        (["stage:report"], "print(widgets, x)"))
    report = check_notebook(notebook)
    assert [str(w) for w in report.warnings] == [
        ("nb.ipynb, cell 1 (\"try:\"): optional import 'nb2prod_no_such_widgets' is not installed here: "
         "left out of requirements.txt")]
    assert installed("PyYAML") in report.rendered.requirements["train"]
    split = split_notebook(notebook)
    assert split.analysis.stage("report").inputs == {"x": "train"}  # widgets is no data



def test_a_conditional_import_of_a_missing_module_never_fails_check_or_split(
        tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "nb.ipynb",
        (["parameters"], "USE_GPU = False"),
        (["train"], ("if USE_GPU:\n    import nb2prod_no_such_cupy as xp\nelse:\n"
                    "    import yaml as xp\nx = 1")),
        (["stage:report"], "print(xp, x)"))
    report = check_notebook(notebook)
    assert [str(w) for w in report.warnings] == [
        ("nb.ipynb, cell 2 (\"if USE_GPU:\"): optional import 'nb2prod_no_such_cupy' is not "
         "installed here: left out of requirements.txt")]
    for stage in ("train", "report"):  # report gets the whole if/else, so yaml too
        assert installed("PyYAML") in report.rendered.requirements[stage]
    split = split_notebook(notebook)
    assert split.analysis.stage("report").inputs == {"x": "train"}  # xp is no data

def test_requirements_mapping_next_to_the_notebook_works_on_the_first_split(
        tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "nb.ipynb",
                              (["train"], "import nb2prod_no_such_module\nx = 1"))
    with pytest.raises(UserError) as info:
        split_notebook(notebook)
    message = str(info.value)
    assert f"under [requirements] in {tmp_path.as_posix()}/nb2prod.ini" in message
    assert not (tmp_path / "nb-pipeline").exists()
    # doing exactly what the message says makes the first split work
    (tmp_path / "nb2prod.ini").write_text(
        "[requirements]\nnb2prod_no_such_module = nosuch-dist==1.2.3\n")
    report = split_notebook(notebook)
    pipeline = tmp_path / "nb-pipeline"
    assert "nosuch-dist==1.2.3" in (pipeline / "stage-1-train/requirements.txt").read_text()
    assert "nb2prod_no_such_module = nosuch-dist==1.2.3" in (pipeline / "nb2prod.ini").read_text()
    assert report.kept_edits == []
    # the value follows the file next to the notebook: removed there, it is gone here
    (tmp_path / "nb2prod.ini").write_text("[requirements]\n")
    with pytest.raises(UserError):
        split_notebook(notebook, force=True)


def test_third_party_imports_inside_local_modules_count_for_the_importing_stage(
        tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text(
        "import os\nimport yaml\nfrom mypkg.features import scale\n\n"
        "def load():\n    import sklearn\n    return sklearn\n")
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg/__init__.py").write_text("")
    (tmp_path / "mypkg/features.py").write_text(
        "from . import util\ntry:\n    import nb2prod_no_such_speedup\nexcept ImportError:\n"
        "    nb2prod_no_such_speedup = None\n\ndef scale(v):\n    import numpy\n    return v\n")
    (tmp_path / "mypkg/util.py").write_text("X = 1\n")
    notebook = write_notebook(tmp_path / "nb.ipynb", (["train"], "import helpers\nx = 1"),
                              (["stage:other"], "y = 2"))
    report = check_notebook(notebook)
    train = {line.split("==")[0] for line in report.rendered.requirements["train"]}
    assert {"PyYAML", "scikit-learn", "numpy"} <= train
    other = {line.split("==")[0] for line in report.rendered.requirements["other"]}
    assert not {"PyYAML", "scikit-learn", "numpy"} & other
    assert [str(w) for w in report.warnings] == [
        ("mypkg/features.py: optional import 'nb2prod_no_such_speedup' (line 3) is not "
        "installed here: left out of requirements.txt")]
    files = set(report.rendered.files)
    assert {"stage-1-train/helpers.py", "stage-1-train/mypkg/features.py",
            "stage-1-train/mypkg/util.py"} <= files  # helpers imports mypkg: shipped too


def test_missing_import_inside_a_local_module_names_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("import json\nimport nb2prod_no_such_module\n")
    notebook = write_notebook(tmp_path / "nb.ipynb", (["train"], "import helpers\nx = 1"))
    with pytest.raises(UserError) as info:
        check_notebook(notebook)
    assert str(info.value).startswith(
        "helpers.py: import 'nb2prod_no_such_module' (line 2) is not installed here")
