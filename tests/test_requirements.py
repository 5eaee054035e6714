"""Unit tests of nb2prod/requirements.py: imports → pinned distributions from metadata."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from nb2prod.analysis import analyze
from nb2prod.errors import UserError
from nb2prod.notebook import Cell, Notebook, import_nbformat
from nb2prod.render import render
from nb2prod.requirements import RUNTIME_REQUIREMENTS, is_stdlib, pin, resolve

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
    assert str(problem).startswith("nb.ipynb, cell 7: import 'nb2prod_no_such_module' is not "
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
        ("nb.ipynb, cell 2: import 'nb2prod_no_such_module' is not installed here, so its "
        "version cannot be pinned; install it or map it under [requirements] in nb2prod.ini")]
