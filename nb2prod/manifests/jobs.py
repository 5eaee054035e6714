"""The Jobs of a run: one per batch stage, then promote (and `record` for a roll-out's outcome)."""

from __future__ import annotations

import json
import shlex

from nb2prod.errors import Problem, UserError
from nb2prod.manifests.code import StageCode
from nb2prod.manifests.env import pod_env
from nb2prod.manifests.names import (
    AFTER,
    CODE_HASH,
    PROMOTE,
    RECORD,
    RUN_ID_LABEL,
    Obj,
    job_name,
    k8s_name,
    labels,
    meta,
    promote_job_name,
    short_hash,
)
from nb2prod.manifests.options import Options
from nb2prod.manifests.pods import pod_spec, resources
from nb2prod.manifests.startup import extra_installs, startup_script
from nb2prod.pipeline import Pipeline, StageSpec

#: Finished Jobs (and their pods, i.e. their logs) are kept this long for `nb2prod logs`.
JOB_TTL_SECONDS = 7 * 24 * 3600

#: Exit code of `python -m nb2prod_runtime promote` when the gate is not passed.
PROMOTE_NOT_PASSED = 3

PROMOTE_RESOURCES: Obj = {
    "requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "256Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "1Gi"}}


def batch_limits(stage: StageSpec) -> tuple[int, int]:
    """`[batch] RETRIES` and `MAX_COMPLETION_TIME_SECONDS`, checked."""
    retries = stage.integer("batch", "RETRIES", 2)
    deadline = stage.integer("batch", "MAX_COMPLETION_TIME_SECONDS", 1800)
    where = str(stage.directory / "config.ini")
    if retries < 0:
        raise UserError(Problem(f"[batch] RETRIES = {retries} must not be negative", file=where))
    if deadline <= 0:
        raise UserError(Problem(f"[batch] MAX_COMPLETION_TIME_SECONDS = {deadline} must be "
                                "positive", file=where))
    return retries, deadline


def batch_job(pipeline: Pipeline, stage: StageSpec, code: StageCode, opts: Options) -> Obj:
    """The Job running one batch stage for `opts.run_id`."""
    name = job_name(pipeline, stage.name, opts.run_id)
    lbls = {**labels(pipeline, stage.name, stage.name), RUN_ID_LABEL: opts.run_id}
    after = ",".join(p for p in pipeline.predecessors(stage.name)
                     if pipeline.stages[p].type == "batch")
    annotations = {CODE_HASH: code.digest, **({AFTER: after} if after else {})}
    env = pod_env(pipeline, stage.name, opts, {
        "NB2PROD_RUN_ID": opts.run_id,
        "NB2PROD_PARAMS": json.dumps(opts.params, sort_keys=True),
    }, stage)
    script = startup_script("python -m nb2prod_runtime run-stage", opts,
                            install=extra_installs(opts))
    container = {"name": "stage", "command": ["sh", "-c", script], "env": env,
                 "resources": resources(stage)}
    spec = pod_spec(pipeline, code, opts, stage=stage,
                    container=container, restart="Never")
    retries, deadline = batch_limits(stage)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": meta(name, opts.namespace, lbls, annotations),
        "spec": {
            "backoffLimit": retries,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {"metadata": {"labels": lbls, "annotations": {CODE_HASH: code.digest}},
                         "spec": spec},
        },
    }


def promotion_args(pipeline: Pipeline) -> list[str]:
    """`--metric M --min X` for the runtime's promote command, from `[promotion]`."""
    args: list[str] = []
    metric = pipeline.value("promotion", "METRIC")
    minimum = pipeline.value("promotion", "MIN")
    if metric:
        args += ["--metric", metric]
    if minimum:
        try:
            float(minimum)
        except ValueError:
            raise UserError(Problem(f"[promotion] MIN = {minimum!r} is not a number",
                                    file=str(pipeline.root / "nb2prod.ini"))) from None
        args += ["--min", minimum]
    return args


def promote_job(pipeline: Pipeline, code: StageCode, opts: Options) -> Obj:
    """The last Job of a run: apply `[promotion]` in-cluster and move latest.json.

    It runs where the store is reachable with the stages' credentials, so the
    deploying machine needs no store access.  Exit code 3 means "gate not
    passed"; the runner reads it from the pod and stops there.  (A podFailurePolicy
    could fail the Job on exit 3 without a retry, but the 1.28 schema rejects an
    onExitCodes-only rule, and promote is idempotent, so one retry is harmless.)
    """
    return _runtime_job(pipeline, code, opts, PROMOTE, promote_job_name(pipeline, opts.run_id),
                        ["promote", *promotion_args(pipeline)], {AFTER: ",".join(pipeline.batch)})


def record_job(pipeline: Pipeline, code: StageCode, opts: Options, values: Obj) -> Obj:
    """A Job that merges `values` (the roll-out's outcome) into the run's run.json.

    The store keeps what the cluster forgets, and only pods can reach it with the
    stages' credentials (a pvc:// claim, or S3 credentials that live in a Secret).
    """
    name = f"{k8s_name(pipeline.name)[:20].rstrip('-')}-record-{short_hash(opts.run_id, RECORD)}"
    job = _runtime_job(pipeline, code, opts, RECORD, name,
                       ["record", "--values", json.dumps(values, sort_keys=True, default=str)])
    job["spec"]["ttlSecondsAfterFinished"] = 3600
    return job


def _runtime_job(pipeline: Pipeline, code: StageCode, opts: Options, component: str, name: str,
                 command: list[str], annotations: dict[str, str] | None = None) -> Obj:
    """A Job running `python -m nb2prod_runtime COMMAND --pipeline P --run-id R` from `code`."""
    args = ["python", "-m", "nb2prod_runtime", command[0], "--pipeline", pipeline.name,
            "--run-id", opts.run_id, *command[1:]]
    final = " ".join(shlex.quote(a) for a in args)
    script = startup_script(final, opts, install=extra_installs(opts), requirements=False)
    lbls = {**labels(pipeline, component), RUN_ID_LABEL: opts.run_id}
    env = pod_env(pipeline, code.stage, opts, {"NB2PROD_RUN_ID": opts.run_id}, None)
    container = {"name": component, "command": ["sh", "-c", script], "env": env,
                 "resources": PROMOTE_RESOURCES}
    spec = pod_spec(pipeline, code, opts, stage=None,
                    container=container, restart="Never")
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": meta(name, opts.namespace, lbls, annotations),
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": 900,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {"metadata": {"labels": lbls}, "spec": spec},
        },
    }
