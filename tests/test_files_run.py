"""Files and local code at run time: `nb2prod run` with data next to the notebook.

A notebook in the style real ones have: `pd.read_csv("data/train.csv")`, a
cleaned CSV written by one stage and read by the next, a model saved with
`joblib.dump(..., "models/model.joblib")` and loaded by the service, a
`labels.json` beside the notebook and a local package `mypkg/`.  No variable
crosses a stage: the DAG comes from the files alone.  The pipeline's metric
must equal the whole notebook's under papermill, and the service must answer
what `predict` answered in the notebook.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

from nb2prod.notebook import import_nbformat
from tests.test_run_e2e import clean_env, nb2prod

nbformat = import_nbformat()
pytestmark = pytest.mark.timeout(600)

PAYLOAD = {"a": 3.0, "b": 1.0}
CELLS = [
    (["imports"], "import os\nimport json\nimport joblib\nimport pandas as pd"),
    (["stage:prep"], ('raw = pd.read_csv("data/train.csv")\nraw = raw.dropna()\n'
                     'raw.to_csv("clean.csv", index=False)')),
    (["train"], ("from sklearn.linear_model import LogisticRegression\n"
                "from mypkg.features import featurize\n"
                'df = pd.read_csv("clean.csv")\n'
                "X = [featurize({'a': a, 'b': b}) for a, b in zip(df.x1, df.x2)]\n"
                "model = LogisticRegression().fit(X, df.y)\n"
                "accuracy = float(model.score(X, df.y))\n"
                'os.makedirs("models", exist_ok=True)\n'
                'joblib.dump(model, os.path.join("models", "model.joblib"))')),
    (["metrics"], "print(accuracy)"),
    (["serve"], ("from mypkg.features import featurize\n"
                'clf = joblib.load("models/model.joblib")\n'
                'with open("labels.json") as fh:\n    labels = json.load(fh)\n\n'
                "def predict(payload):\n"
                "    label = int(clf.predict([featurize(payload)])[0])\n"
                "    return {'label': labels[str(label)], 'proba': float(clf.predict_proba("
                "[featurize(payload)])[0][label])}")),
    ([], f"print(json.dumps(predict({PAYLOAD!r})))"),
]


def write_project(root: Path) -> Path:
    """The notebook, data/train.csv, labels.json and mypkg/ (features imports scale)."""
    rng = random.Random(7)
    rows = ["x1,x2,y"]
    for _ in range(60):
        a, b = rng.uniform(0, 4), rng.uniform(0, 4)
        rows.append(f"{a:.3f},{b:.3f},{int(a + rng.gauss(0, 0.6) > b)}")
    rows.append("1.0,,1")  # dropped by dropna()
    (root / "data").mkdir()
    (root / "data" / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "labels.json").write_text(json.dumps({"0": "low", "1": "high"}))
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "features.py").write_text(
        "from mypkg.scale import SCALE\n\n\ndef featurize(p):\n"
        "    return [p['a'] * SCALE, p['b'] * SCALE]\n")
    (root / "mypkg" / "scale.py").write_text("SCALE = 0.5\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for tags, src in CELLS]
    path = root / "churn.ipynb"
    nbformat.write(nb, path)
    return path


def whole_notebook(path: Path) -> tuple[float, dict]:
    """Run the unsplit notebook with papermill in its own directory: accuracy, predict()."""
    import papermill

    out = path.with_name("executed.ipynb")
    papermill.execute_notebook(str(path), str(out), cwd=str(path.parent), kernel_name="python3",
                               progress_bar=False)
    executed = json.loads(out.read_text())
    texts = ["".join(o["text"]) for c in executed["cells"] for o in c.get("outputs", [])
             if o["output_type"] == "stream" and o["name"] == "stdout"]
    return float(texts[0]), json.loads(texts[-1])


def test_files_local_package_and_file_edges_run_like_the_notebook(tmp_path: Path) -> None:
    notebook = write_project(tmp_path)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    split = nb2prod("split", notebook, cwd=tmp_path)
    assert split.returncode == 0, split.stderr
    pipeline = tmp_path / "churn-pipeline"
    ini = (pipeline / "nb2prod.ini").read_text()
    assert "prep >> train" in ini and "train >> serve" in ini  # from the files alone
    assert "FILES = data/train.csv" in (pipeline / "stage-1-prep" / "config.ini").read_text()
    assert "FILES = labels.json" in (pipeline / "stage-3-serve" / "config.ini").read_text()
    for stage in ("stage-2-train", "stage-3-serve"):
        assert (pipeline / stage / "mypkg" / "scale.py").is_file()
    # the service unpickles the model file train wrote: it needs train's libraries
    assert "scikit-learn==" in (pipeline / "stage-3-serve" / "requirements.txt").read_text()
    graph = nb2prod("graph", pipeline, "-o", tmp_path / "dag.mmd", cwd=tmp_path)
    assert graph.returncode == 0, graph.stderr
    assert '-->|"clean.csv"|' in (tmp_path / "dag.mmd").read_text()
    (tmp_path / "dag.mmd").unlink()

    run = nb2prod("run", pipeline, "--smoke", "--port", str(_free_port()), cwd=tmp_path,
                  env=clean_env(NB2PROD_WORKERS="1"))
    assert run.returncode == 0, run.stdout + run.stderr
    run_id = re.search(r"run (\S+) succeeded", run.stdout + run.stderr)
    assert run_id, run.stdout + run.stderr
    runs = pipeline / ".nb2prod" / "artifacts" / "churn" / "runs" / run_id.group(1)
    record = json.loads((runs / "run.json").read_text())
    prep = json.loads((runs / "prep" / "manifest.json").read_text())
    train = json.loads((runs / "train" / "manifest.json").read_text())
    assert list(prep["files"]) == ["clean.csv"]
    assert list(train["files"]) == ["models/model.joblib"]
    store_files = pipeline / ".nb2prod" / "artifacts" / "churn" / "files"
    assert (store_files / train["files"]["models/model.joblib"]["sha256"]).is_file()
    answer = re.search(r"POST /predict .* -> 200 (\{.*\})", run.stdout + run.stderr)
    assert answer, run.stdout + run.stderr
    # stages ran in working directories of their own: nothing was written beside the notebook
    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                   if not p.relative_to(tmp_path).as_posix().startswith("churn-pipeline"))
    assert after == before

    # one stage alone: the files it reads come from the latest run's earlier stages
    again = nb2prod("run", pipeline, "--stage", "train", "--no-serve", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr

    accuracy, predicted = whole_notebook(notebook)
    assert record["metrics"]["train"]["accuracy"] == accuracy
    assert json.loads(answer.group(1)) == predicted
    assert predicted["label"] in ("low", "high")


def test_a_missing_input_file_is_one_line_naming_it(tmp_path: Path) -> None:
    notebook = write_project(tmp_path)
    assert nb2prod("split", notebook, cwd=tmp_path).returncode == 0
    (tmp_path / "labels.json").unlink()
    run = nb2prod("run", tmp_path / "churn-pipeline", "--no-serve", cwd=tmp_path)
    assert run.returncode == 2
    assert "labels.json" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def _free_port() -> int:
    from tests.test_run_e2e import free_port

    return free_port()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_stage_loading_an_object_of_a_local_class_gets_its_package(tmp_path: Path) -> None:
    """`enc` is an object of a class from the local package `kit/`; the stage that loads
    it never imports `kit`, yet unpickling needs it there (seen in a real notebook whose
    service loaded a fitted encoder)."""
    (tmp_path / "kit").mkdir()
    (tmp_path / "kit" / "__init__.py").write_text("")
    (tmp_path / "kit" / "encode.py").write_text(
        "class Scale:\n    def fit(self, xs):\n        self.top = max(xs)\n        return self\n\n"
        "    def apply(self, xs):\n        return [x / self.top for x in xs]\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for tags, src in [
        (["stage:prep"], "from kit.encode import Scale\nenc = Scale().fit([1.0, 4.0])"),
        (["stage:use"], "scaled = enc.apply([2.0])\nprint(scaled)\nshare = scaled[0]"),
        (["metrics"], "share"),
    ]]
    nbformat.write(nb, tmp_path / "enc.ipynb")
    done = nb2prod("run", "enc.ipynb", "--no-serve", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    pipeline = tmp_path / "enc-pipeline"
    assert (pipeline / "stage-2-use" / "kit" / "encode.py").is_file()
    [run] = [p for p in (pipeline / ".nb2prod" / "artifacts").glob("*/runs/*") if p.is_dir()]
    metrics = json.loads((run / "use" / "metrics.json").read_text())
    assert metrics["share"] == 0.5
