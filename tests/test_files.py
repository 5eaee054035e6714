"""Input files, file edges and local code found at split (DESIGN.md "Files and local code")."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest

from nb2prod import files
from nb2prod.files import Entry, cell_paths
from nb2prod.localcode import LocalCode
from nb2prod.notebook import import_nbformat
from nb2prod.split import split_notebook

nbformat = import_nbformat()


# -- literals in one cell ------------------------------------------------------------
@pytest.mark.parametrize("source, path", [
    ('df = pd.read_csv("data/train.csv")', "data/train.csv"),
    ("labels = json.load(open('labels.json'))", "labels.json"),
    ('p = Path("data", "train.csv")', "data/train.csv"),
    ('p = Path("data") / "raw" / "train.csv"', "data/raw/train.csv"),
    ('p = os.path.join("data", "train.csv")', "data/train.csv"),
    ('p = f"data/train.csv"', "data/train.csv"),
    ('p = f"data/{split}.csv"', "data"),
    ('p = os.path.join("data", name)', "data"),
    ('p = "./data//train.csv"', "data/train.csv"),
    ("%time df = pd.read_csv('data/train.csv')", "data/train.csv"),
])
def test_each_literal_form_names_its_path(source: str, path: str) -> None:
    assert path in cell_paths(source).reads


@pytest.mark.parametrize("source", [
    'x = "."', 'x = ""', 'u = "https://example.com/data.csv"', 'x = "a\\nb"',
    'x = "/etc/passwd"', 'x = "~/data.csv"', 'x = "../other/data.csv"',
])
def test_what_is_never_a_relative_input(source: str) -> None:
    assert cell_paths(source).reads == set()


@pytest.mark.parametrize("source, path", [
    ('df.to_csv("clean.csv", index=False)', "clean.csv"),
    ('joblib.dump(model, "model.joblib")', "model.joblib"),
    ('plt.savefig("plots/roc.png")', "plots/roc.png"),
    ('np.save("x.npy", x)', "x.npy"),
    ('torch.save(net, "net.pt")', "net.pt"),
    ('open("out.txt", "w").write(s)', "out.txt"),
    ('with open("out.bin", mode="wb") as fh: pickle.dump(m, fh)', "out.bin"),
    ('pickle.dump(m, open("m.pkl", "wb"))', "m.pkl"),
    ('Path("notes.txt").write_text(s)', "notes.txt"),
    ('Path("models").mkdir(exist_ok=True)', "models"),
    ('os.makedirs("out/figs", exist_ok=True)', "out/figs"),
    ('booster.save_model(f"models/xgb.json")', "models/xgb.json"),
])
def test_writers_write_their_path_argument(source: str, path: str) -> None:
    found = cell_paths(source)
    assert path in found.writes
    assert path not in found.reads


def test_a_separator_argument_of_a_writer_is_not_a_written_path() -> None:
    assert cell_paths('df.to_csv("clean.csv", sep=";")').writes == {"clean.csv"}


# -- the notebook: inputs, edges, warnings ------------------------------------------
def fake_tree(entries: dict[str, int]) -> files.Lookup:
    """A lookup over relative paths -> sizes (a path ending in '/' is a directory)."""
    def lookup(rel: str) -> Entry | None:
        if rel in entries:
            return Entry(rel, False, entries[rel])
        if rel + "/" in entries:
            return Entry(rel, True, entries[rel + "/"])
        return None
    return lookup


def cells(*items: tuple[str, str]) -> files.StageCells:
    return [(stage, i, cell_paths(source)) for i, (stage, source) in enumerate(items)]


def test_inputs_are_the_existing_paths_each_stage_names() -> None:
    tree = fake_tree({"data/train.csv": 10, "labels.json": 3, "data/": 13})
    found = files.plan(cells(("train", 'df = pd.read_csv("data/train.csv")'),
                             ("train", 'cols = ["a", "b"]; x = df["a"]'),
                             ("serve", 'labels = json.load(open("labels.json"))')), tree)
    assert found.inputs == {"train": ["data/train.csv"], "serve": ["labels.json"]}
    assert found.edges == [] and found.warnings == []


def test_a_directory_input_covers_the_files_inside_it() -> None:
    tree = fake_tree({"data/": 20, "data/a.csv": 10})
    found = files.plan(cells(("train", 'a = pd.read_csv("data/a.csv"); p = f"data/{x}.csv"')),
                       tree)
    assert found.inputs == {"train": ["data/"]}


def test_a_path_written_by_one_stage_and_read_by_a_later_one_is_an_edge() -> None:
    tree = fake_tree({"clean.csv": 5})  # left over from running the notebook: not an input
    found = files.plan(cells(("prep", 'df.to_csv("clean.csv")'),
                             ("train", 'df = pd.read_csv("clean.csv")'),
                             ("report", 'print(open("clean.csv").read())')), tree)
    assert found.edges == [("prep", "train", "clean.csv"), ("prep", "report", "clean.csv")]
    assert found.inputs == {"prep": [], "train": [], "report": []}


def test_a_file_under_a_written_directory_is_an_edge_too() -> None:
    found = files.plan(cells(("train", 'os.makedirs("models"); joblib.dump(m, "models/m.joblib")'),
                             ("evaluate", 'm = joblib.load(Path("models") / "m.joblib")')))
    assert found.edges == [("train", "evaluate", "models/m.joblib")]


def test_a_service_writing_a_file_provides_nothing() -> None:
    found = files.plan(cells(("serve", 'df.to_csv("log.csv")'), ("serve", "x = 1")),
                       services={"serve"})
    assert found.edges == []


def test_include_adds_to_every_stage_and_exclude_removes() -> None:
    tree = fake_tree({"data/train.csv": 10, "data/big.parquet": 10, "notes.md": 1})
    found = files.plan(cells(("train", 'a = pd.read_csv("data/train.csv")'),
                             ("score", 'b = pd.read_parquet("data/big.parquet")')), tree,
                       include=["notes.md", "data/big.parquet"], exclude=["*.parquet"])
    assert found.inputs == {"train": ["data/train.csv", "notes.md"], "score": ["notes.md"]}


def test_absolute_home_and_outside_paths_warn_naming_the_cell() -> None:
    found = files.plan(cells(("train", "x = 1"),
                             ("train", 'df = pd.read_csv("/home/ann/data/train.csv")'),
                             ("train", 'm = joblib.load("~/models/m.joblib")'),
                             ("train", 'y = open("../shared/labels.json")')),
                       exists=lambda text: False)
    assert [(w.cell, w.message.split("'")[1]) for w in found.warnings] == [
        (1, "/home/ann/data/train.csv"), (2, "~/models/m.joblib"), (3, "../shared/labels.json")]
    assert "absolute path" in found.warnings[0].message
    assert "relative path" in found.warnings[0].message


@pytest.mark.parametrize("source", [
    'p = Path().absolute().parents[1] / "data" / "x.csv"',
    "root = Path.cwd().parent",
    "root = pathlib.Path('.').resolve().parent",
    "root = Path(os.getcwd()).parent",
])
def test_paths_computed_above_the_working_directory_warn(source: str) -> None:
    [warning] = files.plan(cells(("train", "x = 1"), ("train", source))).warnings
    assert warning.cell == 1 and "leaves the notebook's directory" in warning.message


def test_a_route_or_separator_is_not_warned_about_unless_it_exists() -> None:
    source = 'ROUTE = "/predict"; parts = s.split("/")'
    assert files.plan(cells(("serve", source))).warnings == []
    warned = files.plan(cells(("serve", 'p = "/srv/data.csv"')),
                        exists=lambda text: text == "/srv/data.csv").warnings
    assert [w.cell for w in warned] == [0]


def test_large_inputs_warn_once() -> None:
    tree = fake_tree({"data/": files.LARGE_INPUT_BYTES + 1})
    found = files.plan(cells(("a", 'p = "data/"'), ("b", 'q = Path("data")')), tree)
    assert found.inputs == {"a": ["data/"], "b": ["data/"]}
    [warning] = found.warnings
    assert "MB" in warning.message and "store" in warning.message


# -- split: FILES in config.ini, warnings, local code ----------------------------------
def notebook(path: Path, *cells_: tuple[list[str], str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for tags, src in cells_]
    nbformat.write(nb, path)
    return path


def stage_ini(pipeline: Path, directory: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(pipeline / directory / "config.ini")
    return parser


def test_split_lists_files_per_stage_and_adds_the_file_edge(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("x,y\n1,2\n")
    (tmp_path / "labels.json").write_text("{}")
    nb = notebook(tmp_path / "nb.ipynb",
                  (["imports"], "import pandas as pd\nimport json"),
                  (["stage:prep"], 'df = pd.read_csv("data/train.csv")\ndf.to_csv("clean.csv")'),
                  (["train"], ('clean = pd.read_csv("clean.csv")\n'
                               'names = json.load(open("labels.json"))')),
                  (["stage:other"], 'print("/predict")'))
    report = split_notebook(nb)
    out = report.output
    assert out is not None
    assert stage_ini(out, "stage-1-prep")["default"]["FILES"] == "data/train.csv"
    assert stage_ini(out, "stage-2-train")["default"]["FILES"] == "labels.json"
    assert stage_ini(out, "stage-3-other")["default"]["FILES"] == ""
    assert ("prep", "train") in report.analysis.edges
    data = report.to_dict()
    train = next(s for s in data["stages"] if s["name"] == "train")
    assert train["file_inputs"] == {"clean.csv": "prep"}
    assert data["warnings"] == []


def test_a_path_in_the_parameters_cell_is_an_input_of_the_stages_reading_it(
        tmp_path: Path) -> None:
    # Every stage runs the parameters cell; only those reading the parameter (directly,
    # or through a functions cell's def they call) open the file.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wine.csv").write_text("a,target\n1,0\n")
    (tmp_path / "labels.json").write_text("{}")
    nb = notebook(tmp_path / "nb.ipynb",
                  (["imports"], "import os\nimport json\nimport pandas as pd"),
                  (["parameters"], ('DATA_DIR = os.environ.get("WINE_DATA_DIR", "data")\n'
                                    'LABELS = "labels.json"\nSEED = 3')),
                  (["functions"], "def labels():\n    return json.load(open(LABELS))"),
                  (["stage:prep"], 'wine = pd.read_csv(os.path.join(DATA_DIR, "wine.csv"))'),
                  (["train"], "n = len(wine) + SEED"),
                  (["stage:report"], "print(labels(), n)"))
    out = split_notebook(nb).output
    assert out is not None
    assert stage_ini(out, "stage-1-prep")["default"]["FILES"] == "data/"
    assert stage_ini(out, "stage-2-train")["default"]["FILES"] == ""
    assert stage_ini(out, "stage-3-report")["default"]["FILES"] == "labels.json"


def test_split_warns_about_an_absolute_path_naming_the_cell(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    from nb2prod.cli import main

    notebook(tmp_path / "nb.ipynb", (["train"], "x = 1"),
             ([], 'import pandas as pd\ndf = pd.read_csv("/data/train.csv")'))
    assert main(["split", str(tmp_path / "nb.ipynb")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and 'cell 2 ("import pandas as pd")' in err and "/data/train.csv" in err


def test_files_include_and_exclude_from_nb2prod_ini(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for name in ("a.csv", "b.csv", "c.tmp"):
        (tmp_path / "data" / name).write_text(name)
    nb = notebook(tmp_path / "nb.ipynb", (["train"], 'import os\nfiles = os.listdir("data")'))
    out = split_notebook(nb).output
    assert out is not None
    assert stage_ini(out, "stage-1-train")["default"]["FILES"] == "data/"
    ini = (out / "nb2prod.ini").read_text()
    assert "; INCLUDE = " in ini
    (out / "nb2prod.ini").write_text(ini.replace("[files]\n", "[files]\nINCLUDE = extra/*.txt\n"
                                                 "EXCLUDE = data/*.tmp, data/b.csv\n"))
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "n.txt").write_text("n")
    split_notebook(nb, force=True)
    assert stage_ini(out, "stage-1-train")["default"]["FILES"] == "data/, extra/n.txt"
    from nb2prod.workdir import expand
    listed = expand(tmp_path, ["data/", "extra/n.txt"], ["data/*.tmp", "data/b.csv"])
    assert list(listed) == ["data/a.csv", "extra/n.txt"]


def test_the_pipeline_dir_and_caches_are_never_inputs(tmp_path: Path) -> None:
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "x.csv").write_text("1")
    nb = notebook(tmp_path / "nb.ipynb", (["train"], 'a = "nb-pipeline"\nb = ".ipynb_checkpoints"'))
    out = split_notebook(nb).output
    assert out is not None
    split_notebook(nb, force=True)  # now nb-pipeline/ exists
    assert stage_ini(out, "stage-1-train")["default"]["FILES"] == ""


def test_local_package_and_what_it_imports_are_copied(tmp_path: Path) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "features.py").write_text(
        "import json\nimport helpers\nfrom .util import twice\n\ndef f(x):\n"
        "    return helpers.inc(twice(x))\n")
    (tmp_path / "mypkg" / "util.py").write_text("def twice(x):\n    return 2 * x\n")
    (tmp_path / "helpers.py").write_text("import numpy as np\n\ndef inc(x):\n    return x + 1\n")
    (tmp_path / "unused.py").write_text("x = 1\n")
    (tmp_path / "nspkg").mkdir()  # a namespace package (no __init__.py)
    (tmp_path / "nspkg" / "tools.py").write_text("def g():\n    return 3\n")
    nb = notebook(tmp_path / "nb.ipynb",
                  (["train"], "from mypkg.features import f\ny = f(1)"),
                  (["stage:other"], "from nspkg.tools import g\nz = g()"))
    out = split_notebook(nb).output
    assert out is not None
    train = out / "stage-1-train"
    assert sorted(p.relative_to(train).as_posix() for p in train.rglob("*.py")
                  if p.name != "train.py") == [
        "helpers.py", "mypkg/__init__.py", "mypkg/features.py", "mypkg/util.py"]
    assert (out / "stage-2-other" / "nspkg" / "tools.py").is_file()
    assert not (out / "stage-2-other" / "helpers.py").exists()


def test_local_code_reports_third_party_imports_inside_local_modules(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("import numpy as np\nimport inner\n")
    (tmp_path / "inner.py").write_text("from sklearn.linear_model import Ridge\nimport os\n")
    local = LocalCode(tmp_path)
    assert [m.name for m in local.closure(["helpers", "pandas"])] == ["helpers", "inner"]
    assert [(i.module, i.file) for i in local.third_party_imports(["helpers"])] == [
        ("numpy", "helpers.py"), ("sklearn", "inner.py"), ("os", "inner.py")]


def test_report_json_is_serializable(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "nb.ipynb", (["train"], "x = 1"))
    json.dumps(split_notebook(nb).to_dict())


# -- the runtime: record what a stage wrote, restore it downstream ----------------------
def test_runtime_records_written_files_and_restores_them_for_later_stages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nb2prod import artifacts, workdir

    assert workdir.FILES_PLAN == artifacts.FILES_PLAN
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    monkeypatch.setenv("NB2PROD_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("NB2PROD_PIPELINE", "p")
    monkeypatch.setenv("NB2PROD_RUN_ID", "r1")
    monkeypatch.setenv("NB2PROD_STAGE", "a")
    monkeypatch.setenv("NB2PROD_FILES_PLAN", str(tmp_path / "none.json"))
    work_a = tmp_path / "a"
    (work_a / "data").mkdir(parents=True)
    (work_a / "data" / "in.csv").write_text("input, unchanged")
    before = artifacts.prepare_workdir(work_a, stage_dir)
    (work_a / "out").mkdir()
    (work_a / "out" / "clean.csv").write_text("x\n1\n")
    (work_a / "__pycache__").mkdir()
    (work_a / "__pycache__" / "m.pyc").write_bytes(b"\0")
    recorded = artifacts.record_files(work_a, before)
    assert list(recorded) == ["out/clean.csv"]
    assert recorded["out/clean.csv"]["bytes"] == 4
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"files": {}, "upstream": ["a"]}))
    monkeypatch.setenv("NB2PROD_FILES_PLAN", str(plan))
    monkeypatch.setenv("NB2PROD_STAGE", "b")
    work_b = tmp_path / "b"
    snap = artifacts.prepare_workdir(work_b, stage_dir)
    assert (work_b / "out" / "clean.csv").read_text() == "x\n1\n"
    assert list(snap) == ["out/clean.csv"]
    assert artifacts.record_files(work_b, snap) == {}  # restored, not written by b


def test_runtime_refuses_unsafe_or_corrupt_files(tmp_path: Path) -> None:
    import hashlib

    from nb2prod import artifacts
    from nb2prod.runtime import files as runtime_files

    store = artifacts.open_store((tmp_path / "store").as_uri())
    data = b"payload"
    sha = hashlib.sha256(data).hexdigest()
    store.write_bytes(artifacts.files_key("p", sha), data)
    for rel in ("../evil", "/etc/x", "a/../../b", ""):
        with pytest.raises(artifacts.ArtifactIntegrityError):
            runtime_files._fetch_file(store, "p", rel, {"sha256": sha}, tmp_path / "w", "file")
    store.write_bytes(artifacts.files_key("p", sha), b"tampered")
    with pytest.raises(artifacts.ArtifactIntegrityError, match="integrity"):
        runtime_files._fetch_file(store, "p", "ok.txt", {"sha256": sha}, tmp_path / "w", "file")
    with pytest.raises(artifacts.ArtifactIntegrityError):
        artifacts.files_key("p", "not-a-digest")


def test_a_missing_restored_file_is_a_warning_not_a_failure(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from nb2prod import artifacts

    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="written by stage 'prep'.*run stage 'prep' first"):
        assert artifacts.expect_file("clean.csv", producer="prep") is False
    (tmp_path / "clean.csv").write_text("x")
    assert artifacts.expect_file("clean.csv", producer="prep") is True


def test_a_symlinked_data_folder_ships_under_its_own_name(tmp_path: Path) -> None:
    from nb2prod.workdir import expand, lookup

    elsewhere = tmp_path / "datasets"
    elsewhere.mkdir()
    (elsewhere / "train.csv").write_text("x\n1\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "data").symlink_to(elsewhere, target_is_directory=True)
    entry = lookup(project)("data/train.csv")
    assert entry is not None and entry.path == "data/train.csv"
    assert list(expand(project, ["data/"])) == ["data/train.csv"]


def test_split_warns_when_inputs_are_over_100_mb(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "big.bin", "wb") as fh:  # sparse: no disk used
        fh.truncate(files.LARGE_INPUT_BYTES + 1)
    nb = notebook(tmp_path / "nb.ipynb", (["train"], 'blob = open("data/big.bin", "rb").read(1)'))
    warnings = [w.message for w in split_notebook(nb).warnings]
    assert any(w.startswith("input files total 100 MB") and "store" in w for w in warnings), \
        warnings


@pytest.mark.parametrize("source", [
    'c = c.replace("/", "_")', 'parts = s.split("/")', 'ok = s.startswith("/")',
    'p = "/".join(parts)', 's = s.strip("/")', 'name = re.sub("/", "_", name)',
    'df.columns = df.columns.str.replace("/", "_")',
])
def test_string_method_arguments_are_text_not_paths(source: str) -> None:
    # "/" exists on every machine: only a literal used as a path may be warned about.
    assert files.plan(cells(("train", source)), exists=lambda text: True).warnings == []
    assert cell_paths(source).literals == ()


@pytest.mark.parametrize(("source", "texts"), [
    ('os.replace("clean.tmp", "clean.csv")', ["clean.tmp", "clean.csv"]),  # renames a file
    ('Path("a.txt").replace("b.txt")', ["a.txt", "b.txt"]),
    ('f = open(name.replace("raw", "clean"))', []),
    ('df = pd.read_csv("data/{}.csv".format(split))', ["data/{}.csv"]),
])
def test_methods_of_paths_and_modules_keep_their_path_literals(source: str,
                                                                 texts: list[str]) -> None:
    assert [literal.text for literal in cell_paths(source).literals] == texts
