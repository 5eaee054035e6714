"""Stage caching: a batch stage whose inputs did not change is not run again.

A stage's cache key is the sha256 over what decides its outputs: its code (the
stage notebook's code cells and the other files of its directory: local
modules and the runtime, `.py`), the parameter values it sees, the sha256 of every
artifact it loads and of every input file it names (`FILES`, relative to the
notebook's directory), and its pinned requirements.  Inputs enter by their
sha256 as recorded in the producers' manifests, so a re-run upstream stage
whose outputs came out byte-identical leaves every downstream key unchanged.

This module reads the key's parts from a stage directory (`cache_plan`); the
key itself, the index in the store, verifying a hit and reusing it are the
runtime's (`nb2prod.runtime.cache`, re-exported here), because in-cluster runs
decide in the pod, where only the runtime is installed: one definition, so
`run`, `deploy` and scheduled runs agree on every key.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from nb2prod import artifacts
from nb2prod.pipeline import Pipeline, StageSpec, notebook_parameters
from nb2prod.runtime.cache import (
    CACHE_PLAN,
    LINKERS,
    SCHEMA,
    cache_key,
    link,
    lookup,
    plan_key,
    remember,
    reuse,
)
from nb2prod.runtime_copy import pipeline_runtime
from nb2prod.workdir import sha256_file

__all__ = ["CACHE_PLAN", "LINKERS", "SCHEMA", "cache_key", "cache_plan", "enabled", "key_for",
           "link", "lookup", "remember", "reuse"]


def enabled(stage: StageSpec) -> bool:
    """False for a stage tagged `no-cache` (config.ini `[batch] CACHE = false`)."""
    return stage.value("batch", "CACHE", "true").lower() not in ("0", "false", "no", "off")


# -- the key's parts (read from the stage directory and the store) -----------------------
def _code_cells(notebook: Path) -> str:
    """The code cells' sources only: outputs, ids and metadata do not change results."""
    try:
        nb = json.loads(notebook.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return sha256_file(notebook)
    sources = ["".join(c.get("source", "")) for c in nb.get("cells", [])
               if c.get("cell_type") == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def stage_code(stage: StageSpec) -> dict[str, str]:
    """{relative path: sha256} of the stage's code: notebook code cells, local modules,
    the pipeline's `nb2prod_runtime/`.

    Only `.py` files count besides the notebook: a stage runs in its directory,
    so files it writes there (models, CSVs) must not make the next run a miss.
    """
    executable = stage.directory / stage.executable
    twin = executable.with_suffix(".py")  # jupytext rendering, for review only
    code = {stage.executable: _code_cells(executable)}
    for path in sorted(stage.directory.rglob("*.py")):
        if path != twin and path.is_file() and "__pycache__" not in path.parts:
            code[path.relative_to(stage.directory).as_posix()] = sha256_file(path)
    # The pipeline's runtime runs the stage too (save/load, serializers): a new one misses.
    for rel, data in pipeline_runtime(stage.directory.parent).items():
        code[rel] = hashlib.sha256(data).hexdigest()
    return code


def stage_params(stage: StageSpec, params: dict[str, object]) -> dict[str, object]:
    """The parameter values the stage sees, for the names its own code mentions.

    Every stage gets the whole parameters cell, so a stage that never names
    `n_estimators` must not re-run when only it changes; a mention anywhere
    outside the parameters cell (even in a string) counts, to stay on the safe side.
    """
    try:
        nb = json.loads((stage.directory / stage.executable).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        nb = {}
    words = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" not in (
                cell.get("metadata", {}).get("tags") or []):
            words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", "".join(cell.get("source", ""))))
    return {k: params.get(k, v) for k, v in notebook_parameters(stage).items() if k in words}


def input_files(pipeline: Pipeline, stage: StageSpec) -> dict[str, str]:
    """{path: sha256} of the stage's `FILES` (directories file by file, `[files] EXCLUDE`
    applied), from the notebook's directory; a missing one is marked, not raised."""
    from nb2prod import workdir
    from nb2prod.errors import UserError

    base = pipeline.notebook.parent if pipeline.notebook else pipeline.root.parent
    exclude = workdir.split_list(pipeline.value("files", "EXCLUDE"))
    found: dict[str, str] = {}
    for entry in workdir.split_list(stage.value("default", "FILES")):
        try:
            paths = workdir.expand(base, [entry], exclude)
        except UserError:
            found[entry] = "missing"
            continue
        found.update((rel, workdir.sha256_file(path)) for rel, path in paths.items())
    return found



def stage_loads(pipeline: Pipeline, stage: StageSpec) -> tuple[dict[str, str], list[str]]:
    """What the stage reads from earlier stages: {artifact: producer} (its load cell) and
    the stages whose written files it gets (its ancestors and file edges)."""
    from nb2prod import dag, graph

    variables, files = graph.stage_inputs(stage.directory / stage.executable)
    return dict(variables), sorted(dag.ancestors(stage.name, pipeline.edges) | set(files.values()))


def cache_plan(pipeline: Pipeline, stage: StageSpec, params: dict[str, object],
               described: dict[str, dict] | None = None) -> dict:
    """The key's parts known before the run, and what to read from the input run's
    manifests; an in-cluster stage gets it as `nb2prod_cache.json` (`CACHE_PLAN`).

    `described`: the stage's FILES as deploy described them (`{rel: {sha256, bytes}}`),
    so a deploy hashes each input file once; else they are hashed here.
    """
    requirements = stage.directory / "requirements.txt"
    files = input_files(pipeline, stage) if described is None else {
        rel: entry["sha256"] for rel, entry in described.items()}
    loads, producers = stage_loads(pipeline, stage)
    return {"schema": SCHEMA,
            "parts": {"code": stage_code(stage), "params": stage_params(stage, params),
                      "files": files,
                      "requirements": requirements.read_text() if requirements.is_file() else ""},
            "loads": loads, "file_producers": producers}


def key_for(store: artifacts.Store, pipeline: Pipeline, stage: StageSpec,
            params: dict[str, object], input_run: str,
            described: dict[str, dict] | None = None) -> str | None:
    """The stage's cache key now (its inputs must be in `input_run`), or None."""
    return plan_key(store, pipeline.name, input_run,
                    cache_plan(pipeline, stage, params, described))
