"""Stage caching: a batch stage whose inputs did not change is not run again.

A stage's cache key is the sha256 over what decides its outputs: its code (the
stage notebook's code cells and the other files of its directory: local
modules and the runtime, `.py`), the parameter values it sees (for a default
read from the environment, the variable's value where the stage runs;
a default known only when the parameters cell runs makes the stage
uncacheable: `stage_environment`), the sha256 of every
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
import os
import re
from collections.abc import Mapping
from pathlib import Path

from nb2prod import artifacts
from nb2prod.pipeline import Pipeline, StageSpec, notebook_parameters
from nb2prod.runtime.cache import (
    CACHE_PLAN,
    LINKERS,
    SCHEMA,
    cache_key,
    data_digests,
    link,
    lookup,
    plan_key,
    remember,
    reuse,
)
from nb2prod.runtime.contents import shared_memo
from nb2prod.runtime_copy import pipeline_runtime
from nb2prod.workdir import sha256_file

__all__ = ["CACHE_PLAN", "LINKERS", "SCHEMA", "cache_key", "cache_plan", "enabled",
           "job_environ", "key_for", "link", "lookup", "remember", "reuse", "uncacheable"]


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


def _stage_notebook(stage: StageSpec) -> dict:
    try:
        nb = json.loads((stage.directory / stage.executable).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return nb if isinstance(nb, dict) else {}


def _is_parameters(cell: dict) -> bool:
    return "parameters" in (cell.get("metadata", {}).get("tags") or [])


def _parameters_cell(stage: StageSpec) -> str:
    return next(("".join(c.get("source", "")) for c in _stage_notebook(stage).get("cells", [])
                 if c.get("cell_type") == "code" and _is_parameters(c)), "")


def _mentioned(stage: StageSpec) -> set[str]:
    """Every word of the stage's code outside its parameters cell."""
    words: set[str] = set()
    for cell in _stage_notebook(stage).get("cells", []):
        if cell.get("cell_type") == "code" and not _is_parameters(cell):
            words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", "".join(cell.get("source", ""))))
    return words


def stage_params(stage: StageSpec, params: dict[str, object]) -> dict[str, object]:
    """The parameter values the stage sees, for the names its own code mentions.

    Every stage gets the whole parameters cell, so a stage that never names
    `n_estimators` must not re-run when only it changes; a mention anywhere
    outside the parameters cell (even in a string) counts, to stay on the safe side.
    A default that is no literal counts as None here: what it is made of enters
    the key through `stage_environment` (or the stage is not cached).
    """
    words = _mentioned(stage)
    return {k: params.get(k, v) for k, v in notebook_parameters(stage).items() if k in words}


#: Variables nb2prod itself sets for each run: a parameter made from one differs every run.
RUN_VARIABLES = ("NB2PROD_", "MODEL_RUN_ID")


def stage_environment(pipeline: Pipeline, stage: StageSpec, params: dict[str, object]
                      ) -> tuple[list[str], str | None]:
    """(the environment variables the stage's parameter values are made from, why the
    stage cannot be cached or None).

    For each parameter the stage mentions and the run does not override
    (`--param`, `[parameters]`: papermill then injects the value), the parameters
    cell's default (`analysis.parameters`): `os.environ.get("DATA_DIR", "data")`
    puts DATA_DIR's value in the run's environment into the key; a default known
    only when the cell runs (`datetime.now()`), a variable nb2prod sets per run
    (`NB2PROD_RUN_ID`) or a `[secrets]` one (its value must not shape a key kept
    in the store) makes the stage uncacheable: it always runs.
    """
    from nb2prod.analysis.parameters import parameter_defaults

    source = _parameters_cell(stage)
    words = _mentioned(stage)
    env: set[str] = set()
    secrets = {**pipeline.secrets, **stage.secrets}
    for name, default in sorted(parameter_defaults(source).items()):
        if name not in words or name in params:
            continue
        if default.unkeyable:
            return [], f"parameter {name} is known only when its cell runs ({default.unkeyable})"
        for variable in sorted(default.env):
            if variable.startswith(RUN_VARIABLES):
                return [], f"parameter {name} reads ${variable}, which nb2prod sets for each run"
            if variable in secrets:
                return [], f"parameter {name} reads the secret ${variable}"
        env |= default.env
    return sorted(env), None


def data_spec(stage: StageSpec, params: dict[str, object]) -> dict:
    """What the runtime needs to find the data behind the stage's path parameters
    where it runs (`runtime.cache.data_digests`): the parameters cell, the names the
    stage uses, the run's overrides of them, the absolute paths its code reads."""
    from nb2prod.analysis.parameters import parameter_defaults

    source = _parameters_cell(stage)
    words = _mentioned(stage)
    names = sorted(n for n in {*parameter_defaults(source), *params} if n in words)
    return {"cell": source, "names": names,
            "overrides": {n: params[n] for n in names if n in params},
            "literals": _absolute_reads(stage)}


def _absolute_reads(stage: StageSpec) -> list[str]:
    """Absolute (or `~`) path literals the stage's own code reads as files
    (`pd.read_csv("/mnt/data/wine.csv")`): split warns about them and no FILES entry
    holds them, so their content enters the key like a path parameter's."""
    from nb2prod.files import cell_paths

    found: set[str] = set()
    for cell in _stage_notebook(stage).get("cells", []):
        if cell.get("cell_type") == "code" and not _is_parameters(cell):
            found.update(x.text for x in cell_paths("".join(cell.get("source", ""))).literals
                         if x.file_context and not x.write and x.text.startswith(("/", "~")))
    return sorted(found)


#: Where the stages whose `uncacheable` lines are wanted run: here (`run`), in pods the
#: deploying machine keys (`deploy`), in pods that key themselves (`schedule`).
WHERE = ("here", "deploy", "pod")


def uncacheable(pipeline: Pipeline, stages: list[str], params: dict[str, object],
                where: str = "here") -> list[str]:
    """One line per reason the cache-enabled batch stages among `stages` cannot be cached,
    naming them (`run`, `deploy` and `schedule` print it once: they always run).

    Besides the parameters' defaults (`stage_environment`), the data behind path
    parameters (`runtime.cache.data_digests`): unreadable here, or (`deploy`) on the
    pods' file system; a pod (`where="pod"`) hashes its own and logs why not.
    """
    assert where in WHERE, where
    stages_by_reason: dict[str, list[str]] = {}
    for name in stages:
        stage = pipeline.stages[name]
        if stage.type != "batch" or not enabled(stage):
            continue
        reason = stage_environment(pipeline, stage, params)[1]
        if reason is None and where != "pod":
            reason = data_digests(data_spec(stage, params), os.environ if where == "here"
                                  else {}, here=where == "here")[1]
        if reason is not None:
            stages_by_reason.setdefault(reason, []).append(name)
    return [f"not cached, always run: {', '.join(names)}: {reason}"
            for reason, names in stages_by_reason.items()]


def input_files(pipeline: Pipeline, stage: StageSpec) -> dict[str, str]:
    """{path: sha256} of the stage's `FILES` (directories file by file, `[files] EXCLUDE`
    applied), from the notebook's directory; a missing one is marked, not raised."""
    from nb2prod import workdir
    from nb2prod.errors import UserError

    base = pipeline.notebook.parent if pipeline.notebook else pipeline.root.parent
    memo = shared_memo()  # a big data directory is read once, not on every run
    exclude = workdir.split_list(pipeline.value("files", "EXCLUDE"))
    found: dict[str, str] = {}
    for entry in workdir.split_list(stage.value("default", "FILES")):
        try:
            paths = workdir.expand(base, [entry], exclude)
        except UserError:
            found[entry] = "missing"
            continue
        found.update((rel, memo.digest(os.path.abspath(path), path.stat()))
                     for rel, path in paths.items())
    memo.save()
    return found



def stage_loads(pipeline: Pipeline, stage: StageSpec) -> tuple[dict[str, str], list[str]]:
    """What the stage reads from earlier stages: {artifact: producer} (its load cell) and
    the stages whose written files it gets (its ancestors and file edges)."""
    from nb2prod import dag, graph

    variables, files = graph.stage_inputs(stage.directory / stage.executable)
    return dict(variables), sorted(dag.ancestors(stage.name, pipeline.edges) | set(files.values()))


def cache_plan(pipeline: Pipeline, stage: StageSpec, params: dict[str, object],
               described: dict[str, dict] | None = None) -> dict | None:
    """The key's parts known before the run, and what to read when it runs: the input
    run's manifests, the environment variables (`env`, values as the stage's process
    sees them); an in-cluster stage gets it as `nb2prod_cache.json` (`CACHE_PLAN`).
    None for a stage that cannot be cached (`stage_environment`).

    `described`: the stage's FILES as deploy described them (`{rel: {sha256, bytes}}`),
    so a deploy hashes each input file once; else they are hashed here.
    """
    env, reason = stage_environment(pipeline, stage, params)
    if reason is not None:
        return None
    requirements = stage.directory / "requirements.txt"
    files = input_files(pipeline, stage) if described is None else {
        rel: entry["sha256"] for rel, entry in described.items()}
    loads, producers = stage_loads(pipeline, stage)
    return {"schema": SCHEMA,
            "parts": {"code": stage_code(stage), "params": stage_params(stage, params),
                      "files": files,
                      "requirements": requirements.read_text() if requirements.is_file() else ""},
            "loads": loads, "file_producers": producers, "env": env,
            "data": data_spec(stage, params)}


def key_for(store: artifacts.Store, pipeline: Pipeline, stage: StageSpec,
            params: dict[str, object], input_run: str,
            described: dict[str, dict] | None = None,
            environ: Mapping[str, str | None] | None = None, here: bool = True) -> str | None:
    """The stage's cache key now (its inputs must be in `input_run`), or None.

    `environ`: the environment the stage will run in (default: this process's,
    which `nb2prod run` passes on to its stages; `deploy`: `job_environ`, with
    `here=False`: the stage's paths are a pod's).
    """
    plan = cache_plan(pipeline, stage, params, described)
    return None if plan is None else plan_key(store, pipeline.name, input_run, plan, environ,
                                              here)


def job_environ(job: dict) -> dict[str, str | None]:
    """The environment of a Job's stage container as the deploying machine knows it:
    plain `value`s, None (unknown: no key) for a `valueFrom` (a Secret, the downward API)."""
    containers = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    return {e["name"]: e.get("value") for c in containers[:1] for e in c.get("env", [])
            if isinstance(e, dict) and "name" in e}
