"""GET /nb2prod/pipeline: everything the JupyterLab Pipeline panel draws for a notebook.

One answer holds the stages (cells, inputs, outputs, files, requirements,
resource hints, the service stages' ports), the problems and warnings with their cell
positions, the roles
of untagged cells (`inferred_roles`: what their markers show), and the
DAG as `nb2prod.graph` models it (the same nodes, edges and states that
`nb2prod graph` draws), with the newest run of the notebook's default
pipeline directory applied.  A notebook with errors is a normal state for the
panel, so problems come back in a 200 answer, never as an HTTP error.

POST /nb2prod/roles analyses the notebook's *unsaved* content (sent in the
request by the browser after edits settle) for `inferred_roles` only: the
markers follow what the user typed without a save, and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tornado import web

from nb2prod.errors import UserError
from nb2prod.jupyter.handlers import Nb2prodHandler, authorized, problem_dict, refuse


def stage_entries(report: dict[str, Any], analysis: Any) -> list[dict[str, Any]]:
    """The report's stages plus what the panel shows besides: positions, hints, secrets."""
    by_name = {s.name: s for s in analysis.stages}
    entries = []
    for stage in report["stages"]:
        spec = by_name[stage["name"]]
        entries.append({
            **stage,
            "positions": [i + 1 for i in stage["cells"]],
            "resources": dict(spec.hints),
            "secrets": [f"{name}:{key}:{env}" for name, key, env in spec.secrets],
        })
    return entries


def inferred_roles(analysis: Any) -> list[dict[str, Any]]:
    """Cells the analysis gives a role although they carry no role tag of their own, so
    the cell markers can show it: an untagged cell that only imports or defines after
    an `imports`/`functions`/`parameters` cell joins that cell's block (every stage gets
    it), and an untagged imports-only cell before the first stage is no stage's but
    lends each stage the imports it uses.  `id` lets the browser find the cell again
    after cells were inserted above it."""
    from nb2prod.analysis import IMPORTS_ONLY
    from nb2prod.tags import parse_tags

    cells = {cell.index: cell for cell in analysis.notebook.cells}
    found: dict[int, tuple[str, str, str]] = {}
    for role, indices in analysis.prelude.items():
        for index in indices:
            if parse_tags(list(cells[index].tags)).role is None:
                why = f"untagged: joins the {role} cell above (it only imports or defines)"
                found[index] = (role, "every stage", why)
    for index, why in analysis.unassigned.items():
        if why == IMPORTS_ONLY:
            why = "untagged, before the first stage: imports only; each stage gets the ones it uses"
            found[index] = ("imports", "where used", why)
    return [{"cell": i, "id": cells[i].cell_id, "position": i + 1, "role": role,
             "scope": scope, "why": why} for i, (role, scope, why) in sorted(found.items())]


def service_ports(pipeline_dir: Path, stages: list[dict[str, Any]]) -> dict[str, int]:
    """{service stage: the port `nb2prod run` gives it without --port}: its config.ini
    PORT once split (the user may have edited it), else the PORT a split writes.  The
    panel's Port field shows it as its placeholder."""
    from nb2prod.pipeline import load_pipeline
    from nb2prod.render import STAGE_DEFAULTS

    ports = {s["name"]: int(STAGE_DEFAULTS["service"]["PORT"]) for s in stages
             if s.get("type") == "service"}
    if not (pipeline_dir / "nb2prod.ini").is_file():
        return ports
    try:
        pipeline = load_pipeline(pipeline_dir, validate=False)
    except UserError:
        return ports  # the split dir is broken: the run will say why
    for name in ports.keys() & pipeline.stages.keys():
        try:
            ports[name] = pipeline.stages[name].integer("service", "PORT", ports[name])
        except ValueError:
            pass  # not a number: the run refuses it and names the key
    return ports


def panel_answer(notebook: Path, relative: Any) -> dict[str, Any]:
    """The panel's JSON for `notebook` (blocking: analysis, store listing)."""
    from nb2prod.graph import graph_for
    from nb2prod.split import check_notebook, default_output

    pipeline_dir = default_output(notebook)
    answer: dict[str, Any] = {"notebook": relative(notebook), "pipeline_dir": relative(
        pipeline_dir), "split": (pipeline_dir / "nb2prod.ini").is_file(), "stages": [],
        "dag": [], "problems": [], "warnings": [], "no_stage": [], "inferred_roles": [],
        "graph": None, "service_ports": {}}
    try:
        report = check_notebook(notebook)
    except UserError as exc:
        answer["problems"] = [problem_dict(p) for p in exc.problems]
        return answer
    data = report.to_dict()
    answer.update(stages=stage_entries(data, report.analysis), dag=data["dag"],
                  warnings=[problem_dict(p) for p in report.warnings],
                  no_stage=[{**n, "position": n["cell"] + 1} for n in data["no_stage"]],
                  inferred_roles=inferred_roles(report.analysis))
    answer["service_ports"] = service_ports(pipeline_dir, answer["stages"])
    try:
        answer["graph"] = graph_for(notebook, analysis=report.analysis).to_dict()
    except UserError as exc:  # e.g. an unreadable nb2prod.ini beside it: still show stages
        answer["warnings"].extend(problem_dict(p) for p in exc.problems)
    return answer


def content_roles(notebook: Path, content: dict[str, Any]) -> dict[str, Any]:
    """`inferred_roles` (and problems) of `content`, the notebook JSON the browser holds
    for `notebook` (whose directory and name the analysis uses); blocking, writes nothing."""
    from nb2prod.analysis import analyze
    from nb2prod.notebook import parse_notebook

    data = json.dumps(content).encode("utf-8")
    try:
        analysis = analyze(parse_notebook(notebook, data, as_json=True))
    except UserError as exc:  # mid-edit: the panel shows problems on the next check
        return {"inferred_roles": [], "problems": [problem_dict(p) for p in exc.problems]}
    return {"inferred_roles": inferred_roles(analysis), "problems": []}


class RolesHandler(Nb2prodHandler):
    """POST /nb2prod/roles {"path": NB, "content": notebook JSON}: the roles of untagged
    cells in the unsaved content (`content_roles`); the path must be an existing
    notebook inside the root, as for every handler; nothing is saved or written."""

    @web.authenticated
    @authorized("read")
    async def post(self) -> None:
        async def run() -> None:
            data = self.body()
            path = self.notebook(data)
            content = data.get("content")
            if not isinstance(content, dict) or not isinstance(content.get("cells"), list):
                raise refuse(400, "'content' must be the notebook's JSON (an object with "
                             "'cells')", data.get("path"))
            answer = await self.guarded(lambda: content_roles(path, content))
            self.finish(json.dumps(answer, default=str))

        await self.answer(run)


class PipelineHandler(Nb2prodHandler):
    """GET /nb2prod/pipeline?path=NB: stages, problems and the DAG of a notebook."""

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        async def run() -> None:
            path = self.notebook({"path": self.get_query_argument("path", "")})
            answer = await self.guarded(lambda: panel_answer(path, self.relative))
            self.finish(json.dumps(answer, default=str))

        await self.answer(run)
