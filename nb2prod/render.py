"""Render an `Analysis` into the files of a pipeline directory (pure: no writes).

The result is `{relative path: bytes}` plus the config values that went into
each `.ini`, so `split` can write atomically, compare for `--check`, and keep
the user's edits on the next split.  Output is deterministic: the same
notebook and environment give byte-identical files.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nb2prod import __version__, dag, files, workdir
from nb2prod.analysis import Analysis, Stage
from nb2prod.dataflow import CellFlow, analyze_cell
from nb2prod.errors import Problem, UserError
from nb2prod.files import FilePlan
from nb2prod.localcode import LocalCode
from nb2prod.requirements import Import, needed_libraries, resolve
from nb2prod.runtime.serializers import serializer_libraries
from nb2prod.runtime_copy import runtime_files
from nb2prod.sample import FittedSample, fitted_sample, literal_request
from nb2prod.templates import environment, render_template

Config = dict[str, dict[str, str]]

#: Keys that always follow the notebook, whatever the user wrote.
DERIVED_KEYS = {
    "project": {"NAME", "NOTEBOOK", "SOURCE_SHA256"},
    "workflow": {"DAG"},
    "default": {"NAME", "PIPELINE", "STAGE_TYPE", "EXECUTABLE", "INPUTS", "OUTPUTS", "METRICS",
                "FILES"},
}

STAGE_DEFAULTS: Config = {
    "batch": {"MAX_COMPLETION_TIME_SECONDS": "1800", "RETRIES": "2"},
    "service": {
        "REPLICAS": "2", "PORT": "8080", "MAX_STARTUP_TIME_SECONDS": "120", "ROUTE": "/predict",
        "ENTRYPOINT": "predict", "WORKERS": "2", "MAX_REQUEST_BYTES": "1048576", "INGRESS": "false",
    },
}


@dataclass
class Rendered:
    """Every generated file, and the config values behind the `.ini` files."""

    files: dict[str, bytes] = field(default_factory=dict)
    configs: dict[str, Config] = field(default_factory=dict)  # relative path -> values
    generated: dict[str, Config] = field(default_factory=dict)  # the same, before user edits
    requirements: dict[str, list[str]] = field(default_factory=dict)  # stage -> lines
    file_plan: FilePlan = field(default_factory=FilePlan)  # input files per stage, warnings
    warnings: list[Problem] = field(default_factory=list)  # e.g. optional imports left out


def pipeline_name(notebook: Path) -> str:
    """The notebook stem as a DNS-1123 label prefix, usable in Kubernetes names."""
    name = re.sub(r"[^a-z0-9-]+", "-", notebook.stem.lower()).strip("-")
    return (name or "pipeline")[:40].rstrip("-")


def render(
    analysis: Analysis,
    output: Path,
    user_configs: dict[str, Config] | None = None,
    templates: Path | None = None,
    settings: Config | None = None,
) -> Rendered:
    """Render all files; `user_configs` are values the user edited (kept); `settings`
    is the nb2prod.ini next to the notebook (it works on a first split, too)."""
    env = environment(templates)
    user_configs = user_configs or {}
    nb = analysis.notebook
    name = pipeline_name(nb.path)
    out = Rendered()
    out.generated["nb2prod.ini"] = _merge(_top_config(analysis, name, output), settings or {})
    top = _merge(out.generated["nb2prod.ini"], user_configs.get("nb2prod.ini", {}))
    out.configs["nb2prod.ini"] = top
    overrides = dict(top.get("requirements", {}))
    local = LocalCode(nb.path.parent, ignore=[output])
    out.file_plan = file_plan(analysis, output, top.get("files", {}))
    problems: list[Problem] = []
    literal = literal_request(analysis, "predict")
    sample = None if literal else fitted_sample(analysis, "predict")
    for stage in analysis.stages:
        reqs = _stage_requirements(analysis, stage, overrides, local, problems, out.warnings)
        out.requirements[stage.name] = reqs
        base = stage.directory
        ctx = {"stage": stage, "pipeline": name, "version": __version__}
        generated = _stage_config(stage, name)
        generated["default"]["FILES"] = ", ".join(out.file_plan.inputs.get(stage.name, []))
        if stage.type == "service":
            generated["service"]["SAMPLE_REQUEST"] = literal
        out.generated[f"{base}/config.ini"] = generated
        config = _merge(generated, user_configs.get(f"{base}/config.ini", {}))
        out.configs[f"{base}/config.ini"] = config
        out.files[f"{base}/config.ini"] = _text(env, "config.ini.j2", config=config, **ctx)
        out.files[f"{base}/requirements.txt"] = _text(
            env, "requirements.txt.j2", requirements=reqs, **ctx)
        notebook = stage_notebook(analysis, stage, env,
                                  sample if sample and sample.stage == stage.name else None)
        out.files[f"{base}/{stage.name}.ipynb"] = _notebook_bytes(notebook)
        out.files[f"{base}/{stage.name}.py"] = _percent_script(notebook)
        if stage.type == "service":
            service = config["service"]
            out.files[f"{base}/app.py"] = _text(
                env, "app.py.j2", pipeline=name, stage=stage.name,
                executable=f"{stage.name}.ipynb", route=service["ROUTE"],
                entrypoint=service["ENTRYPOINT"], nb2prod_version=__version__)
        for module in local.closure(site.module for site in _loading_imports(analysis, stage)):
            for rel, data in module.files.items():
                out.files[f"{base}/{rel}"] = data
    if problems:
        raise UserError(nb.locate(problems))
    out.files.update(runtime_files())  # once per pipeline, beside the stage directories
    out.files["nb2prod.ini"] = _text(
        env, "nb2prod.ini.j2", config=top, version=__version__, notebook=nb.path.name,
        parameter_names=sorted(_parameter_names(analysis)))
    return out


# -- config values ---------------------------------------------------------------
def _top_config(analysis: Analysis, name: str, output: Path) -> Config:
    nb_path = analysis.notebook.path.resolve()
    try:
        rel = Path(_relpath(nb_path, output.resolve()))
    except ValueError:
        rel = nb_path
    edges = analysis.edges
    order = [s.name for s in analysis.stages]
    return {
        "project": {"NAME": name, "NOTEBOOK": rel.as_posix(),
                    "SOURCE_SHA256": analysis.notebook.sha256},
        "workflow": {"DAG": dag.format_dag(order, edges)},
        "artifacts": {"STORE": "file://.nb2prod/artifacts"},
        "kubernetes": {"IMAGE": "python:3.11-slim", "NAMESPACE": ""},
        "parameters": {},
        "promotion": {},
        "files": {},
        "requirements": {},
        "secrets": {},
        "schedule": {},
    }


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target, start)


def _stage_config(stage: Stage, pipeline: str) -> Config:
    hints = stage.hints
    cpu = hints.get("CPU_REQUEST", "0.5")
    memory = hints.get("MEMORY_REQUEST_MB", "500")
    default = {
        "NAME": stage.name,
        "PIPELINE": pipeline,
        "STAGE_TYPE": stage.type,
        "EXECUTABLE": f"{stage.name}.ipynb",
        "CPU_REQUEST": cpu,
        "MEMORY_REQUEST_MB": memory,
        "CPU_LIMIT": f"{max(float(cpu), 1.0):g}",
        "MEMORY_LIMIT_MB": str(max(int(memory), 1000)),
        "GPU": hints.get("GPU", "0"),
        "IMAGE": hints.get("IMAGE", ""),
        "INPUTS": ", ".join(stage.inputs),
        "OUTPUTS": ", ".join(stage.outputs),
        "METRICS": ", ".join(stage.metrics),
    }
    config: Config = {"default": default, stage.type: dict(STAGE_DEFAULTS[stage.type])}
    if stage.type == "batch" and hints.get("CACHE"):
        config["batch"]["CACHE"] = hints["CACHE"]  # the no-cache tag
    config["secrets"] = {env: f"{secret}:{key}" for secret, key, env in stage.secrets}
    return config


def _merge(generated: Config, user: Config) -> Config:
    """Generated values, overridden by the user's edits except for derived keys."""
    merged = {section: dict(items) for section, items in generated.items()}
    for section, items in user.items():
        target = merged.setdefault(section, {})
        for key, value in items.items():
            if key in DERIVED_KEYS.get(section, ()):
                continue
            target[key] = value
    return merged


def _parameter_names(analysis: Analysis) -> set[str]:
    names: set[str] = set()
    for index in analysis.prelude["parameters"]:
        flow = analysis.flows.get(index)
        if flow:
            names |= flow.writes
    return names


# -- requirements ----------------------------------------------------------------
def _stage_imports(analysis: Analysis, stage: Stage) -> list[Import]:
    """The imports a stage runs: the prelude's, its own cells', and the copied ones."""
    file = analysis.notebook.path.name
    cells = [i for role in ("parameters", "imports", "functions") for i in analysis.prelude[role]]
    found = []
    for i in cells + stage.cells:
        flow = _pruned_flow(stage.pruned[i]) if i in stage.pruned else analysis.flows[i]
        found += [Import(module, cell=i, file=file, optional=module in flow.optional_imports)
                  for module, _ in flow.imports]
    for definition in stage.copied.values():
        found += [Import(module, cell=stage.cells[0], file=file, optional=definition.optional)
                  for module in definition.modules]
    if stage.inputs or stage.outputs:
        found += [Import(module, cell=stage.cells[0], file=file, optional=True)
                  for module in sorted(_artifact_libraries(analysis, stage))]
    return found


def _artifact_libraries(analysis: Analysis, stage: Stage) -> set[str]:
    """What the serializers of a stage's values write with (numpy for an ndarray, pandas
    and numpy for a DataFrame), also where the stage never imports them: its imports
    cells' modules count before pruning (`X = df.to_numpy()` names no `np`), and so do
    the libraries of every stage it loads from (an output may be an input passed on)."""
    modules = {module for i in analysis.prelude["imports"] + stage.cells
               for module, _ in analysis.flows[i].imports}
    modules |= {m for d in stage.copied.values() for m in d.modules}
    found = needed_libraries(modules, serializer_libraries())
    for producer in set(stage.inputs.values()):
        found |= _artifact_libraries(analysis, analysis.stage(producer))
    return found


def _loading_imports(analysis: Analysis, stage: Stage) -> list[Import]:
    """A stage's own imports plus those of the stages it loads from (variables or files):
    unpickling their data needs their modules, third-party and local alike (an object of
    a class from a local package needs that package in the loading stage too)."""
    imports = _stage_imports(analysis, stage)
    for producer in sorted(set(stage.inputs.values()) | set(stage.file_inputs.values())):
        imports += _stage_imports(analysis, analysis.stage(producer))
    return imports


@functools.lru_cache(maxsize=256)
def _pruned_flow(source: str) -> CellFlow:
    return analyze_cell(source)


def _stage_requirements(analysis: Analysis, stage: Stage, overrides: dict[str, str],
                        local: LocalCode, problems: list[Problem],
                        notes: list[Problem]) -> list[str]:
    """Its own imports, those inside the local modules it imports, plus the imports of
    the stages it loads from, variables or files (to unpickle their data)."""
    imports = _loading_imports(analysis, stage)
    names = {site.module for site in imports}
    reached = {module.name for module in local.closure(names)}
    imports += local.third_party_imports(names)
    settings = (analysis.notebook.path.parent / "nb2prod.ini").as_posix()
    result = resolve(imports, stage.type, overrides, reached, settings_file=settings)
    problems += [p for p in result.problems if p not in problems]
    seen = {(note.file, note.message) for note in notes}  # once, at the first stage noting it
    notes += [n for n in result.notes if (n.file, n.message) not in seen]
    return list(result.lines)


def file_plan(analysis: Analysis, output: Path, settings: dict[str, str]) -> FilePlan:
    """Input files per stage (DESIGN.md "Files and local code"), looked up beside the notebook."""
    directory = analysis.notebook.path.parent.resolve()
    ignore = [Path(output)]
    include = workdir.expand_globs(directory, workdir.split_list(settings.get("INCLUDE", "")),
                                   ignore)
    cells = analysis.file_cells()

    def exists(text: str) -> bool:
        return (directory / os.path.expanduser(text)).exists()

    return files.plan(cells, workdir.lookup(directory, ignore), exists, include,
                      workdir.split_list(settings.get("EXCLUDE", "")),
                      services={s.name for s in analysis.stages if s.type == "service"},
                      file=analysis.notebook.path.name)


# -- the stage notebook ----------------------------------------------------------
def stage_notebook(analysis: Analysis, stage: Stage, env,
                   sample: FittedSample | None = None) -> dict:
    """nbformat-4 JSON of the stage notebook, in the order DESIGN.md fixes.

    `sample`: this stage fits the served model; it records a sample request (nb2prod.sample).
    """
    by_index = {c.index: c for c in analysis.notebook.cells}
    params = analysis.prelude["parameters"]
    cells: list[tuple[dict, int | None]] = []  # (cell, index in the source notebook)
    before = {n: d for n, d in stage.copied.items() if n in stage.before_parameters}
    if before:  # imports the parameters cell reads (`os.environ.get(...)`)
        cells.append(_generated(env, "copied", "nb2prod-copied-before-parameters",
                                copied=before, why="imports the parameters cell reads: "
                                "it runs first (papermill sets the values after it)"))
    if len(params) == 1:
        cells.append(_original(by_index[params[0]], tags=["parameters"]))
    else:
        source = "\n\n".join(by_index[i].source for i in params)
        cells.append((_cell("nb2prod-parameters", source, ["parameters"]), None))
    first = {n: d for n, d in stage.copied.items() if n in stage.before_prelude}
    if first:  # imports the functions cells need (`@functools.lru_cache`)
        cells.append(_generated(env, "copied", "nb2prod-copied-before-prelude", copied=first))
    for role in ("imports", "functions"):
        cells += [_original(by_index[i], source=stage.pruned.get(i))
                  for i in analysis.prelude[role]]
    # copied defs/classes come before the load (unpickling a notebook class needs it),
    # unless defining them reads a loaded name (`def f(x, k=K)` with K an input)
    late = {n: d for n, d in stage.copied.items() if d.definition_reads & set(stage.inputs)}
    early = {n: d for n, d in stage.copied.items()
             if n not in late and n not in first and n not in before}
    if early:
        cells.append(_generated(env, "copied", copied=early))
    if stage.inputs:
        cells.append(_generated(env, "load", inputs=stage.inputs))
    if stage.file_inputs:
        cells.append(_generated(env, "files", files=dict(sorted(stage.file_inputs.items()))))
    if late:
        cells.append(_generated(env, "copied", "nb2prod-copied-after-load", copied=late))
    cells += [_original(by_index[i]) for i in stage.cells]
    if stage.outputs:
        cells.append(_generated(env, "save", outputs=stage.outputs))
    if stage.metrics:
        cells.append(_generated(env, "metrics", metrics=stage.metrics))
    if sample is not None:
        cells.append(_generated(env, "sample", sample=sample))
    return {
        "cells": [cell for cell, _ in cells],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "jupytext": {"formats": "ipynb,py:percent"},
            "nb2prod": {"stage": stage.name, "type": stage.type,
                        "source_cells_by_id": {c["id"]: i for c, i in cells if i is not None}},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _original(cell, tags: list[str] | None = None,
              source: str | None = None) -> tuple[dict, int]:
    cell_id = cell.cell_id or f"cell-{cell.index}"
    return _cell(cell_id, cell.source if source is None else source,
                 tags if tags is not None else list(cell.tags)), cell.index


def _generated(env, kind: str, cell_id: str | None = None, **values) -> tuple[dict, None]:
    source = render_template(env, f"cells/{kind}.py.j2", **values).rstrip("\n")
    return _cell(cell_id or f"nb2prod-{kind}", source), None


def _cell(cell_id: str, source: str, tags: list[str] | None = None) -> dict:
    metadata: dict = {"tags": tags} if tags else {}
    return {"cell_type": "code", "execution_count": None, "id": cell_id,
            "metadata": metadata, "outputs": [], "source": source}


def _text(env, name: str, **values) -> bytes:
    return render_template(env, name, **values).encode("utf-8")


def _notebook_bytes(notebook: dict) -> bytes:
    return (json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _percent_script(notebook: dict) -> bytes:
    """The jupytext percent rendering, paired with the .ipynb for review and diffs."""
    from nb2prod.notebook import import_nbformat

    nbformat = import_nbformat()  # first: jupytext would import it the slow way
    import jupytext

    nb = nbformat.from_dict(notebook)
    return jupytext.writes(nb, fmt="py:percent").encode("utf-8")
