"""The pipeline DAG as a picture: one graph model, several text and image formats.

`nb2prod graph` and the JupyterLab pipeline panel draw the same thing, so the
model (`build_graph`: stages, the names passed along each edge, and what a run
did to each stage) is a pure function of plain data; reading a pipeline
directory or a run record happens in the small adapters below it, and each
output format is one formatter in `FORMATS`, chosen by the file's suffix.
SVG and PNG need Graphviz's `dot` program; Mermaid and DOT are text and always
work.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nb2prod.errors import Problem, UserError


@dataclass(frozen=True)
class StageInfo:
    """What the graph needs of one stage: its kind and where its inputs come from."""

    name: str
    kind: str  # batch | service
    inputs: dict[str, str] = field(default_factory=dict)  # variable -> producing stage
    files: dict[str, str] = field(default_factory=dict)  # relative path -> producing stage


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    state: str | None = None  # done | failed | skipped | running | waiting | cached | stopped; None: no run
    seconds: float | None = None
    cached_from: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class GraphEdge:
    source: str
    target: str
    names: tuple[str, ...] = ()  # variables passed
    files: tuple[str, ...] = ()  # files passed


@dataclass(frozen=True)
class Graph:
    pipeline: str
    nodes: list[Node]
    edges: list[GraphEdge]
    run_id: str | None = None
    run_status: str | None = None

    def to_dict(self) -> dict:
        """JSON-able form (the JupyterLab panel's wire format)."""
        return asdict(self)


_STATE_ALIASES = {"succeeded": "done"}  # in-cluster result.json says succeeded


def build_graph(pipeline: str, stages: list[StageInfo], edges: list[tuple[str, str]],
                run: dict | None = None, metrics: dict[str, dict] | None = None) -> Graph:
    """The graph of `stages` in the given order, with `run` (a run.json record) applied.

    Edges are the DAG's (explicit `after:` edges carry no names); each one is
    labelled with the variables and files its target loads from its source.
    `metrics` is `{stage: {name: number}}`; it defaults to the run's own.
    """
    by_name = {s.name: s for s in stages}
    run_stages = (run or {}).get("stages") or {}
    metrics = metrics if metrics is not None else ((run or {}).get("metrics") or {})
    nodes = []
    for stage in stages:
        record = run_stages.get(stage.name) or {}
        state = record.get("status")
        seconds = record.get("seconds")
        if seconds is None and isinstance(record.get("started"), (int, float)) and isinstance(
                record.get("finished"), (int, float)):
            seconds = record["finished"] - record["started"]
        numbers = {k: v for k, v in (metrics.get(stage.name) or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        nodes.append(Node(stage.name, stage.kind, _STATE_ALIASES.get(state, state),
                          round(seconds, 1) if isinstance(seconds, (int, float)) else None,
                          record.get("cached_from"), numbers,
                          record.get("message") or record.get("reason") or ""))
    graph_edges = []
    for source, target in edges:
        consumer = by_name.get(target)
        names = tuple(n for n, p in (consumer.inputs if consumer else {}).items() if p == source)
        files = tuple(f for f, p in (consumer.files if consumer else {}).items() if p == source)
        graph_edges.append(GraphEdge(source, target, names, files))
    run_id = (run or {}).get("run_id")
    return Graph(pipeline, nodes, graph_edges, run_id, (run or {}).get("status"))


# -- adapters (I/O) ------------------------------------------------------------------
def stage_inputs(notebook_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(variables, files) a generated stage notebook loads, each mapped to its producer.

    Read from the calls of the generated cells, `_nb2prod.load("x",
    producer="train")` and, for files, `_nb2prod.expect_file("clean.csv",
    producer="prepare")` (any other `_nb2prod.*` call naming a producer).
    """
    try:
        nb = json.loads(notebook_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, {}
    variables: dict[str, str] = {}
    files: dict[str, str] = {}
    for cell in nb.get("cells", []):
        source = "".join(cell.get("source", "")) if cell.get("cell_type") == "code" else ""
        if "_nb2prod." not in source:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and isinstance(call.func.value, ast.Name)
                    and call.func.value.id == "_nb2prod"):
                continue
            producer = next((k.value.value for k in call.keywords if k.arg == "producer"
                             and isinstance(k.value, ast.Constant)), None)
            if not isinstance(producer, str):
                continue
            target = variables if call.func.attr == "load" else files
            for arg in call.args:
                for const in ast.walk(arg):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        target[const.value] = producer
    return variables, files


def pipeline_stages(pipeline) -> list[StageInfo]:
    """StageInfo of every stage of a split pipeline directory, in DAG order."""
    found = []
    for name in pipeline.order:
        spec = pipeline.stages[name]
        variables, files = stage_inputs(spec.directory / spec.executable)
        found.append(StageInfo(name, spec.type, variables, files))
    return found


def analysis_stages(analysis) -> list[StageInfo]:
    """StageInfo from an in-memory analysis (a notebook that was not split to disk)."""
    return [StageInfo(s.name, s.type, dict(s.inputs), dict(s.file_inputs))
            for s in analysis.stages]



def graph_for(target: Path, run_id: str | None = None, store: str | None = None,
              analysis=None) -> Graph:
    """The graph of a pipeline directory, or of a notebook (analysed in memory, nothing
    written), with the state of run `run_id` (default: the newest run, if any).

    A notebook's runs are those of its default pipeline directory
    (NOTEBOOK-pipeline), which `nb2prod run NOTEBOOK` uses.  `analysis` is the
    notebook's analysis when the caller has it already (the JupyterLab panel).
    """
    from nb2prod import artifacts
    from nb2prod.pipeline import load_pipeline

    target = Path(target)
    if target.is_file():
        from nb2prod.render import pipeline_name
        from nb2prod.split import check_notebook, default_output

        analysis = analysis if analysis is not None else check_notebook(target).analysis
        stages, edges = analysis_stages(analysis), list(analysis.edges)
        directory = default_output(target)
        pipeline = load_pipeline(directory) if (directory / "nb2prod.ini").is_file() else None
        name = pipeline.name if pipeline is not None else pipeline_name(target)
    else:
        pipeline = load_pipeline(target)
        stages, edges, name = pipeline_stages(pipeline), list(pipeline.edges), pipeline.name
    if pipeline is None:
        if run_id is not None:
            raise UserError(Problem(f"--run {run_id}: the notebook was not run yet (no "
                                    "pipeline directory)", file=str(target)))
        return build_graph(name, stages, edges)
    st = artifacts.open_store(pipeline.store_uri(store))
    run = find_run(artifacts.list_runs(st, name), run_id)
    metrics = None
    if run is not None and not run.get("metrics"):
        metrics = artifacts.read_run_metrics(st, name, run["run_id"])
    return build_graph(name, stages, edges, run, metrics)


def find_run(runs: list[dict], run_id: str | None) -> dict | None:
    """The run record to draw: `run_id`, else the newest run; None when there is none."""
    if run_id is None:
        return runs[-1] if runs else None
    for record in runs:
        if record.get("run_id") == run_id:
            return record
    known = ", ".join(r.get("run_id", "?") for r in runs[-5:]) or "none"
    raise UserError(Problem(f"--run {run_id}: no such run (newest: {known})"))


# -- formats -----------------------------------------------------------------------------
_STATE_COLOURS = {"done": "#c8e6c9", "cached": "#bbdefb", "failed": "#ffcdd2",
                  "skipped": "#eeeeee", "running": "#b2ebf2", "waiting": "#ffffff",
                  "stopped": "#ffe0b2"}


def node_lines(node: Node) -> list[str]:
    """The text of a node: name, kind and state, then one line per metric."""
    lines = [node.name]
    if node.state is None:
        lines.append(node.kind)
    elif node.state == "cached" or node.cached_from:
        lines.append(f"cached (run {node.cached_from})" if node.cached_from else "cached")
    else:
        took = f" {node.seconds:.1f}s" if node.seconds is not None else ""
        lines.append(f"{node.state}{took}")
    lines.extend(f"{k}={v:.4g}" for k, v in sorted(node.metrics.items()))
    return lines


def _display_state(node: Node) -> str | None:
    return "cached" if node.cached_from else node.state


def edge_label(edge: GraphEdge) -> str:
    return ", ".join(edge.names + edge.files)


def _title(graph: Graph) -> str:
    if graph.run_id is None:
        return graph.pipeline
    return f"{graph.pipeline} · run {graph.run_id}" + (
        f" ({graph.run_status})" if graph.run_status else "")


def to_dot(graph: Graph) -> str:
    """Graphviz DOT: batch stages are boxes, service stages ellipses; fill = state."""
    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [f"digraph {quote(graph.pipeline)} {{",
             f'  label={quote(_title(graph))}; labelloc=t; rankdir=LR; fontname="Helvetica";',
             '  node [fontname="Helvetica"]; edge [fontname="Helvetica", fontsize=10];']
    for node in graph.nodes:
        shape = "box" if node.kind == "batch" else "ellipse"
        style = "rounded,filled" if node.kind == "batch" else "filled"
        fill = _STATE_COLOURS.get(_display_state(node) or "", "#ffffff")
        lines.append(f"  {quote(node.name)} [label={quote(chr(10).join(node_lines(node)))}, "
                     f"shape={shape}, style={quote(style)}, fillcolor={quote(fill)}];")
    for edge in graph.edges:
        label = edge_label(edge)
        attrs = f" [label={quote(label)}]" if label else " [style=dashed]"
        lines.append(f"  {quote(edge.source)} -> {quote(edge.target)}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(graph: Graph) -> str:
    """Mermaid flowchart: batch stages are rectangles, service stages stadiums."""
    def text(value: str) -> str:
        return '"' + value.replace('"', "#quot;") + '"'

    ids = {node.name: f"s{i}" for i, node in enumerate(graph.nodes)}
    lines = ["---", f"title: {_title(graph)}", "---", "flowchart LR"]
    for node in graph.nodes:
        label = text("<br/>".join(node_lines(node)))
        lines.append(f"  {ids[node.name]}[{label}]" if node.kind == "batch"
                     else f"  {ids[node.name]}([{label}])")
    for edge in graph.edges:
        if edge.source not in ids or edge.target not in ids:
            continue
        label = edge_label(edge)
        arrow = f" -->|{text(label)}| " if label else " -.-> "
        lines.append(f"  {ids[edge.source]}{arrow}{ids[edge.target]}")
    for state, colour in _STATE_COLOURS.items():
        members = [ids[n.name] for n in graph.nodes if _display_state(n) == state]
        if members:
            lines.append(f"  classDef {state} fill:{colour}")
            lines.append(f"  class {','.join(members)} {state}")
    return "\n".join(lines) + "\n"


def graphviz_image(fmt: str) -> Callable[[Graph], bytes]:
    """A formatter rendering the DOT text with Graphviz's `dot -T<fmt>`."""
    def render(graph: Graph) -> bytes:
        dot = shutil.which("dot")
        if dot is None:
            raise UserError(Problem(
                f"{fmt.upper()} needs Graphviz's `dot` program (Debian/Ubuntu: apt-get install "
                "graphviz; macOS: brew install graphviz); .mmd and .dot work without it"))
        done = subprocess.run([dot, f"-T{fmt}"], input=to_dot(graph).encode(),
                              capture_output=True, check=False)
        if done.returncode != 0:
            first = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[0]
            raise UserError(Problem(f"dot -T{fmt} failed: {first}"))
        return done.stdout
    return render


FORMATS: dict[str, Callable[[Graph], str | bytes]] = {
    ".mmd": to_mermaid,
    ".dot": to_dot,
    ".gv": to_dot,
    ".svg": graphviz_image("svg"),
    ".png": graphviz_image("png"),
}


def format_for(path: Path) -> Callable[[Graph], str | bytes]:
    """The formatter for an output file's suffix; UserError naming the file otherwise."""
    formatter = FORMATS.get(path.suffix.lower())
    if formatter is None:
        raise UserError(Problem(f"unknown picture format {path.suffix or '(none)'!r}; use "
                                + ", ".join(sorted(FORMATS)), file=str(path)))
    return formatter
