"""`nb2prod graph`: the graph model, each output format, runs drawn on it, no Graphviz.

The wine example is split once per module (no stage runs here: run states come from a
run record written into the pipeline's store the way the local runner writes it;
tests/test_cache.py draws a real cached run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nb2prod import artifacts, graph
from nb2prod.pipeline import load_pipeline
from tests.test_run_e2e import EXAMPLES, clean_env, nb2prod

WINE_EDGES = {("prepare", "train_forest"): ("X_train", "y_train"),
              ("prepare", "train_logreg"): ("X_train", "y_train"),
              ("prepare", "evaluate"): ("X_test", "y_test"),
              ("prepare", "serve"): ("classes",),
              ("train_forest", "evaluate"): ("forest",),
              ("train_logreg", "evaluate"): ("logreg",),
              ("evaluate", "serve"): ("best_model", "best_name")}
HAS_DOT = shutil.which("dot") is not None


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("graph")
    shutil.copy(EXAMPLES / "wine_parallel.ipynb", work)
    done = nb2prod("split", "wine_parallel.ipynb", "-o", "wine", cwd=work)
    assert done.returncode == 0, done.stderr
    return work / "wine"


@pytest.fixture()
def wine_run(wine: Path) -> str:
    """A run record (one stage cached, one failed, one skipped) plus its metrics."""
    pipeline = load_pipeline(wine)
    store = artifacts.open_store(pipeline.store_uri())
    run_id = artifacts.new_run_id()
    prefix = artifacts.run_prefix(pipeline.name, run_id)
    artifacts.write_json(store, f"{prefix}/run.json", {
        "run_id": run_id, "pipeline": pipeline.name, "status": "failed", "started": 1.0e9,
        "stages": {
            "prepare": {"status": "done", "seconds": 0.2, "cached_from": "20261130t010101-abcd"},
            "train_forest": {"status": "done", "seconds": 7.25},
            "train_logreg": {"status": "failed", "seconds": 3.0, "message": "boom"},
            "evaluate": {"status": "skipped", "seconds": 0.0}}})
    artifacts.write_json(store, f"{prefix}/train_forest/metrics.json", {"oob": 0.9375})
    yield run_id
    shutil.rmtree(Path(pipeline.store_uri()[len("file://"):]) / pipeline.name / "runs" / run_id)


def test_model_has_every_stage_kind_and_the_names_along_each_edge(wine: Path) -> None:
    g = graph.graph_for(wine)
    assert [(n.name, n.kind) for n in g.nodes] == [
        ("prepare", "batch"), ("train_forest", "batch"), ("train_logreg", "batch"),
        ("evaluate", "batch"), ("serve", "service")]
    assert {(e.source, e.target): e.names for e in g.edges} == WINE_EDGES
    assert g.run_id is None and all(n.state is None for n in g.nodes)
    # The notebook itself, analysed in memory, gives the same picture and writes nothing.
    from_notebook = graph.graph_for(wine.parent / "wine_parallel.ipynb")
    assert from_notebook.nodes == g.nodes
    assert {(e.source, e.target): e.names for e in from_notebook.edges} == WINE_EDGES
    assert not (wine.parent / "wine_parallel-pipeline").exists()


def test_build_graph_is_pure_and_marks_explicit_edges_without_names() -> None:
    stages = [graph.StageInfo("load", "batch"),
              graph.StageInfo("fit", "batch", {"df": "load"}, {"data/clean.csv": "load"}),
              graph.StageInfo("api", "service", {"model": "fit"})]
    run = {"run_id": "r1", "status": "succeeded", "stages": {
        "load": {"status": "succeeded", "started": 10.0, "finished": 12.5},
        "fit": {"status": "done", "seconds": 1.0, "cached_from": "r0"}},
        "metrics": {"fit": {"r2": 0.5, "flag": True, "name": "x"}}}
    g = graph.build_graph("p", stages, [("load", "fit"), ("fit", "api"), ("load", "api")], run)
    assert [(e.names, e.files) for e in g.edges] == [
        (("df",), ("data/clean.csv",)), (("model",), ()), ((), ())]
    load, fit, api = g.nodes
    assert (load.state, load.seconds) == ("done", 2.5)  # in-cluster "succeeded" reads as done
    assert fit.cached_from == "r0" and fit.metrics == {"r2": 0.5}  # numbers only
    assert api.state is None
    assert graph.node_lines(fit) == ["fit", "cached (run r0)", "r2=0.5"]
    assert json.loads(json.dumps(g.to_dict()))["edges"][0]["files"] == ["data/clean.csv"]
    mermaid = graph.to_mermaid(g)
    assert 's0 -->|"df, data/clean.csv"| s1' in mermaid
    assert "s0 -.-> s2" in mermaid  # no names: a dashed edge
    assert "digraph" in graph.to_dot(g) and '"load" -> "api" [style=dashed];' in graph.to_dot(g)


def test_mermaid_on_stdout_and_in_a_file(wine: Path) -> None:
    shown = nb2prod("graph", wine, cwd=wine)
    assert shown.returncode == 0, shown.stderr
    written = nb2prod("graph", wine, "-o", wine.parent / "wine.mmd", cwd=wine)
    assert written.returncode == 0, written.stderr
    text = (wine.parent / "wine.mmd").read_text()
    assert text == shown.stdout
    lines = text.splitlines()
    assert "flowchart LR" in lines
    ids = {name: f"s{i}" for i, name in enumerate(
        ["prepare", "train_forest", "train_logreg", "evaluate", "serve"])}
    assert f'  {ids["prepare"]}["prepare<br/>batch"]' in lines
    assert f'  {ids["serve"]}(["serve<br/>service"])' in lines  # a service is a stadium
    for (a, b), names in WINE_EDGES.items():
        assert f'  {ids[a]} -->|"{", ".join(names)}"| {ids[b]}' in lines


def test_dot_text(wine: Path) -> None:
    done = nb2prod("graph", wine, "-o", wine.parent / "wine.dot", cwd=wine)
    assert done.returncode == 0, done.stderr
    text = (wine.parent / "wine.dot").read_text()
    assert text.startswith('digraph "wine-parallel" {')
    assert '"prepare" [label="prepare\\nbatch", shape=box' in text
    assert '"serve" [label="serve\\nservice", shape=ellipse' in text
    for (a, b), names in WINE_EDGES.items():
        assert f'"{a}" -> "{b}" [label="{", ".join(names)}"];' in text


def svg_texts(path: Path) -> list[str]:
    tree = ET.parse(path)
    return [t.text or "" for t in tree.iter("{http://www.w3.org/2000/svg}text")]


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed (Debian: graphviz)")
def test_svg_and_png_with_a_run_drawn_on_them(wine: Path, wine_run: str) -> None:
    svg = wine.parent / "pics" / "wine.svg"
    done = nb2prod("graph", wine, "-o", svg, cwd=wine)  # default: the newest run
    assert done.returncode == 0, done.stderr
    texts = svg_texts(svg)
    assert f"wine-parallel · run {wine_run} (failed)" in texts
    assert "cached (run 20261130t010101-abcd)" in texts
    assert "done 7.2s" in texts and "oob=0.9375" in texts
    assert "failed 3.0s" in texts and "skipped 0.0s" in texts
    assert "service" in texts  # serve is not part of a batch run
    assert "X_train, y_train" in texts and "best_model, best_name" in texts
    png = wine.parent / "wine.png"
    done = nb2prod("graph", wine, "-o", png, "--run", wine_run, cwd=wine)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_run_and_unknown_format_are_bad_input(wine: Path, wine_run: str) -> None:
    done = nb2prod("graph", wine, "--run", "nope", cwd=wine)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"nb2prod: error: --run nope: no such run (newest: {wine_run})"]
    done = nb2prod("graph", wine, "-o", wine.parent / "wine.jpeg", cwd=wine)
    assert done.returncode == 2 and "unknown picture format '.jpeg'" in done.stderr
    assert not (wine.parent / "wine.jpeg").exists()


def test_without_graphviz_images_exit_2_with_a_hint_and_text_still_works(wine: Path,
                                                                          tmp_path: Path) -> None:
    env = clean_env(PATH=str(tmp_path))  # no `dot` anywhere on PATH
    done = subprocess.run([sys.executable, "-m", "nb2prod", "graph", str(wine), "-o",
                           str(tmp_path / "wine.svg")], env=env, capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs Graphviz's `dot` program" in lines[0], done.stderr
    assert "apt-get install graphviz" in lines[0]
    assert not (tmp_path / "wine.svg").exists()
    for suffix in (".mmd", ".dot"):
        done = subprocess.run([sys.executable, "-m", "nb2prod", "graph", str(wine), "-o",
                               str(tmp_path / f"wine{suffix}")], env=env, capture_output=True,
                              text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "best_model, best_name" in (tmp_path / f"wine{suffix}").read_text()


def test_a_file_one_stage_writes_and_the_next_reads_labels_their_edge(tmp_path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for tags, src in [
        (["stage:clean"], "rows = [1, 2]\nopen('clean.csv', 'w').write(str(rows))"),
        (["stage:count"], "n = len(open('clean.csv').read())\nprint(n)")]]
    nbformat.write(nb, tmp_path / "files.ipynb")
    from_notebook = graph.graph_for(tmp_path / "files.ipynb")
    assert [(e.source, e.target, e.names, e.files) for e in from_notebook.edges] == [
        ("clean", "count", (), ("clean.csv",))]
    done = nb2prod("split", "files.ipynb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    from_dir = graph.graph_for(tmp_path / "files-pipeline")
    assert from_dir.edges == from_notebook.edges
    assert '-->|"clean.csv"|' in graph.to_mermaid(from_dir)
