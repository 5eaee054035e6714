"""In-cluster runs: one Job that trains, gates, promotes and rolls (pure objects, no I/O).

`nb2prod schedule` (a CronJob) and `nb2prod deploy --no-wait` (one Job now)
run the pipeline without the deploying machine and without any nb2prod image.
The Job's pod is the DAG, serialised:

* one **init container per batch stage**, in topological order.  Each mounts
  only its own stage's code ConfigMap, has its own requests/limits, its own
  part of the pod's scratch volumes, and runs
  ``timeout MAX_COMPLETION_TIME_SECONDS python -m nb2prod_runtime run-stage --retries RETRIES``
  (retries re-run the notebook in a fresh kernel).  Init containers run one
  after the other and the pod (restartPolicy Never, backoffLimit 0) fails at
  the first one that fails: nothing after it runs.
* a **last container** runs ``nb2prod_roller.py`` (:mod:`nb2prod.roller`): the
  promotion gate, ``latest.json``, then a JSON patch of each service
  Deployment to the new run id, waiting for the rollout and patching the old
  template back if it does not become available.  Only this container mounts
  the service-account token; the account's Role may get and patch the named
  Deployments and nothing else.

The run id is the Job's name (the pod learns it from its ``job-name`` label),
so CronJob-created runs get ids without anything computed at schedule time,
and ``kubectl get job RUN_ID`` finds a run.  Each container leaves a JSON
verdict as its termination message; ``nb2prod history`` reads those.
Parallel branches of the DAG run one after the other here; `nb2prod deploy`
(waiting) runs them as parallel Jobs.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from nb2prod import manifests
from nb2prod.errors import Problem, UserError
from nb2prod.manifests import Obj, Options, StageCode
from nb2prod.pipeline import Pipeline, StageSpec
from nb2prod.roller import RUN_ID_PLACEHOLDER

RUN = "run"                    # component label of run Jobs
SCHEDULE = "schedule"          # component label of the CronJob
FINISH = "promote-and-roll"    # the last container
ROLL_DIR = "/nb2prod/roll"     # roller script + roll.json (ConfigMap)
API_DIR = "/nb2prod/api"       # service-account token + cluster CA (projected)
TERMINATION_LOG = "/dev/termination-log"
STAGES_ANNOTATION = "nb2prod.io/containers"   # container name -> stage name (JSON)
INSTALL_SLACK = 600            # pip install time per container, on top of its deadline
ROLLER_SOURCE = Path(__file__).with_name("roller.py")


def cronjob_name(pipeline: Pipeline) -> str:
    """`<pipeline>-retrain`; at most 52 characters, as CronJob names must be."""
    return f"{manifests.check_pipeline_name(pipeline)}-retrain"


def run_job_name(pipeline: Pipeline, run_id: str) -> str:
    """Name of a run started now (`deploy --no-wait`); it is also the run id."""
    return manifests.fit_name(f"{manifests.k8s_name(pipeline.name)}-{run_id}")


def container_names(pipeline: Pipeline) -> dict[str, str]:
    """Batch stage -> init container name (DNS labels, distinct, not the finish step's)."""
    names: dict[str, str] = {}
    for stage in pipeline.batch:
        name = manifests.fit_name(manifests.k8s_name(stage))
        if name == FINISH or name in names.values():
            raise UserError(Problem(f"stage '{stage}' would share the container name '{name}' "
                                    "in the in-cluster run; rename the stage",
                                    file=str(pipeline.root / "nb2prod.ini")))
        names[stage] = name
    return names


def _env(pipeline: Pipeline, stage: str, opts: Options, extra: dict[str, str],
         spec: StageSpec | None) -> list[Obj]:
    """pod_env plus the run id (the Job's name) and namespace from the downward API."""
    env = manifests.pod_env(pipeline, stage, opts, {
        "NB2PROD_TERMINATION_LOG": TERMINATION_LOG, **extra}, spec)
    dynamic = [
        {"name": "NB2PROD_RUN_ID",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}},
        {"name": "NB2PROD_NAMESPACE",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return dynamic + env


def stage_container(pipeline: Pipeline, stage: str, container: str, opts: Options) -> Obj:
    """Init container running one batch stage with its resources, retries and time limit."""
    spec = pipeline.stages[stage]
    retries, deadline = manifests.batch_limits(spec)
    final = (f"timeout {deadline} python -m nb2prod_runtime run-stage --retries {retries} "
             f"--timeout {deadline}")
    script = manifests.startup_script(final, opts, install=manifests.extra_installs(opts))
    env = _env(pipeline, stage, opts,
               {"NB2PROD_PARAMS": json.dumps(opts.params, sort_keys=True)}, spec)
    mounts = [{"name": f"code-{container}", "mountPath": manifests.CODE_DIR, "readOnly": True},
              manifests.RUNTIME_VOLUME_MOUNT, *manifests.scratch_mounts(opts, container)]
    return manifests.harden(pipeline, spec, opts, {
        "name": container, "command": ["sh", "-c", script], "env": env,
        "resources": manifests.resources(spec)}, mounts)


def finish_container(pipeline: Pipeline, first: str, opts: Options) -> Obj:
    """The promote-and-roll step: gate, latest.json, then roll the Deployments."""
    args = ["python", f"{ROLL_DIR}/nb2prod_roller.py", "--pipeline", pipeline.name,
            "--plan", f"{ROLL_DIR}/roll.json", "--credentials", API_DIR,
            *manifests.promotion_args(pipeline)]
    final = " ".join(shlex.quote(a) for a in args) + ' --run-id "$NB2PROD_RUN_ID"'
    script = manifests.startup_script(final, opts, install=manifests.extra_installs(opts),
                                      requirements=False)
    mounts = [{"name": "code-" + first, "mountPath": manifests.CODE_DIR, "readOnly": True},
              manifests.RUNTIME_VOLUME_MOUNT,
              {"name": "roll", "mountPath": ROLL_DIR, "readOnly": True},
              *manifests.scratch_mounts(opts, FINISH)]
    if pipeline.services:
        mounts.append({"name": "api", "mountPath": API_DIR, "readOnly": True})
    env = _env(pipeline, pipeline.batch[0], opts, {}, None)
    return manifests.harden(pipeline, None, opts, {
        "name": FINISH, "command": ["sh", "-c", script], "env": env,
        "resources": manifests.PROMOTE_RESOURCES}, mounts)


def roll_plan(pipeline: Pipeline, codes: dict[str, StageCode], opts: Options) -> dict[str, Obj]:
    """Deployment name -> the pod template (serving the placeholder run id) and replicas."""
    plan: dict[str, Obj] = {}
    for name in pipeline.services:
        dep = manifests.deployment(pipeline, pipeline.stages[name], codes[name], opts,
                                   RUN_ID_PLACEHOLDER)
        plan[dep["metadata"]["name"]] = {
            "template": dep["spec"]["template"], "replicas": dep["spec"]["replicas"],
            "progressDeadlineSeconds": dep["spec"]["progressDeadlineSeconds"]}
    return plan


def roll_configmap(pipeline: Pipeline, plan: dict[str, Obj], namespace: str) -> Obj:
    """Immutable, content-named ConfigMap with the roller and what it should roll."""
    data = {"nb2prod_roller.py": ROLLER_SOURCE.read_text(encoding="utf-8"),
            "roll.json": json.dumps(plan, indent=1, sort_keys=True) + "\n"}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    name = f"{manifests.k8s_name(pipeline.name)}-roll-{digest[:10]}"
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": manifests.meta(name, namespace, manifests.labels(pipeline, "roll"),
                                       {manifests.CODE_HASH: digest}),
            "immutable": True, "data": data}


def run_job_spec(pipeline: Pipeline, codes: dict[str, StageCode], roll_name: str,
                 opts: Options) -> Obj:
    """The Job spec of one in-cluster run (shared by the CronJob and `deploy --no-wait`)."""
    if not pipeline.batch:
        raise UserError(Problem("the pipeline has no batch stages: there is nothing to "
                                "(re)train", file=str(pipeline.root / "nb2prod.ini")))
    names = container_names(pipeline)
    inits = [stage_container(pipeline, stage, names[stage], opts) for stage in pipeline.batch]
    finish = finish_container(pipeline, names[pipeline.batch[0]], opts)
    volumes = [manifests.code_volume(f"code-{names[s]}", pipeline, codes[s])
               for s in pipeline.batch]
    volumes.append(manifests.runtime_volume(pipeline))
    volumes.append({"name": "roll", "configMap": {"name": roll_name, "defaultMode": 0o444}})
    # One set of emptyDirs for the pod, a subPath per container: sized for the largest stage.
    volumes += manifests.scratch_volumes(opts, max(
        manifests.ephemeral_storage(pipeline.stages[s])[1] for s in pipeline.batch))
    account = manifests.stages_account(pipeline)
    if pipeline.services:
        account = manifests.roller_account(pipeline)
        volumes.append({"name": "api", "projected": {"defaultMode": 0o444, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
            {"configMap": {"name": "kube-root-ca.crt",
                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}})
    pod = {**manifests.pod_base(account, "Never"), "initContainers": inits,
           "containers": [finish], "volumes": volumes}
    deadline = sum(manifests.batch_limits(pipeline.stages[s])[1] + INSTALL_SLACK
                   for s in pipeline.batch)
    deadline += INSTALL_SLACK + sum(
        2 * pipeline.stages[s].integer("service", "MAX_STARTUP_TIME_SECONDS", 120) + 240
        for s in pipeline.services)
    lbls = manifests.labels(pipeline, RUN)
    notes = {STAGES_ANNOTATION: json.dumps({names[s]: s for s in pipeline.batch}),
             manifests.CODE_HASH: hashlib.sha256("".join(
                 codes[s].digest for s in pipeline.order).encode()).hexdigest()}
    return {
        # Retries are per stage, inside its container: a retry of the whole pod would
        # re-run every stage before the one that failed.
        "backoffLimit": 0,
        "activeDeadlineSeconds": deadline,
        "template": {"metadata": {"labels": lbls, "annotations": notes}, "spec": pod},
    }


@dataclass
class RetrainPlan:
    """What `schedule`, `deploy --no-wait` and `render --cron` create."""

    namespace: Obj
    setup: list[Obj]                 # RBAC, code ConfigMaps, the roll ConfigMap
    job_spec: Obj                    # the run Job's spec
    services: dict[str, list[Obj]]   # service stage -> manifests.service_objects()

    def run_job(self, pipeline: Pipeline, run_id: str, namespace: str) -> Obj:
        """A Job running the pipeline now, named (and identified) by `run_id`."""
        name = run_job_name(pipeline, run_id)
        lbls = {**manifests.labels(pipeline, RUN), manifests.RUN_ID_LABEL: name}
        spec = {**self.job_spec, "ttlSecondsAfterFinished": manifests.JOB_TTL_SECONDS}
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": manifests.meta(name, namespace, lbls), "spec": spec}


def schedule_settings(pipeline: Pipeline) -> dict[str, int]:
    """`[schedule]` limits of nb2prod.ini, checked (defaults in parentheses in the README)."""
    where = str(pipeline.root / "nb2prod.ini")
    settings = {}
    for key, default, lowest in (("STARTING_DEADLINE_SECONDS", 600, 10),
                                 ("SUCCESSFUL_RUNS_KEPT", 5, 0), ("FAILED_RUNS_KEPT", 5, 0)):
        raw = pipeline.value("schedule", key, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise UserError(Problem(f"[schedule] {key} = {raw!r} is not a whole number",
                                    file=where)) from None
        if value < lowest:
            raise UserError(Problem(f"[schedule] {key} = {value} must be at least {lowest}",
                                    file=where))
        settings[key] = value
    return settings


def cronjob(pipeline: Pipeline, plan: RetrainPlan, namespace: str, cron: str,
            time_zone: str | None, suspend: bool) -> Obj:
    """`batch/v1` CronJob: Forbid overlaps, bounded history, a starting deadline."""
    settings = schedule_settings(pipeline)
    spec: Obj = {
        "schedule": " ".join(cron.split()),
        "concurrencyPolicy": "Forbid",
        "suspend": suspend,
        "startingDeadlineSeconds": settings["STARTING_DEADLINE_SECONDS"],
        "successfulJobsHistoryLimit": settings["SUCCESSFUL_RUNS_KEPT"],
        "failedJobsHistoryLimit": settings["FAILED_RUNS_KEPT"],
        "jobTemplate": {"metadata": {"labels": manifests.labels(pipeline, RUN)},
                        "spec": plan.job_spec},
    }
    if time_zone:
        spec["timeZone"] = time_zone
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": manifests.meta(cronjob_name(pipeline), namespace,
                                       manifests.labels(pipeline, SCHEDULE)),
            "spec": spec}


def cache_setting(pipeline: Pipeline) -> bool:
    """`[schedule] CACHE` of nb2prod.ini: in-cluster runs use the stage cache (default no)."""
    return pipeline.value("schedule", "CACHE", "false").lower() in ("1", "true", "yes", "on")


def with_cache_plans(pipeline: Pipeline, codes: dict[str, StageCode], opts: Options
                     ) -> dict[str, StageCode]:
    """Each cacheable batch stage's code plus its cache plan (`nb2prod_cache.json`).

    The pod decides (`run-stage`): only the inputs' sha256s are unknown before
    the run, so everything else of the key is computed here, by the code `run`
    and `deploy` use (`nb2prod.cache.cache_plan`), and shipped with the stage.
    A stage tagged `no-cache` gets no plan, and always runs; so does one whose
    parameters cannot be keyed (`cache.stage_environment`).
    """
    from nb2prod import cache

    found = dict(codes)
    for name in pipeline.batch:
        stage = pipeline.stages[name]
        if not cache.enabled(stage):
            continue
        plan = cache.cache_plan(pipeline, stage, dict(opts.params), opts.files.get(name))
        if plan is None:  # a parameter known only when it runs: `cache.uncacheable` says
            continue
        text = json.dumps(plan, indent=1, sort_keys=True, default=repr) + "\n"
        # stage_code again (not a copy with one more file): the ConfigMap size check counts it
        found[name] = manifests.stage_code(stage, {**codes[name].files,
                                                   cache.CACHE_PLAN: text.encode()})
    return found


def plan(pipeline: Pipeline, opts: Options, *, serving: str | None = None,
         use_cache: bool = True) -> RetrainPlan:
    """Every object an in-cluster run needs besides the Job or CronJob itself.

    Deployments are given as they should be created when absent: serving
    `serving` (``"latest"`` for `render --cron`, for GitOps; the promoted run
    when `schedule` or `deploy --no-wait` could read it from the store) with
    their replicas, or, when None, with zero replicas until the first run
    rolls them.  Existing Deployments are never replaced by these: only a
    passing run changes what is served.  With `[schedule] CACHE = true` (and
    `use_cache`: not `deploy --no-wait --no-cache`) the stages use the stage cache.
    """
    manifests.check_pipeline_name(pipeline)
    manifests.store_mount(opts.store)
    codes = manifests.all_stage_code(pipeline, opts)
    if use_cache and cache_setting(pipeline):
        codes = with_cache_plans(pipeline, codes, opts)
    rolls = roll_plan(pipeline, codes, opts)
    roll_cm = roll_configmap(pipeline, rolls, opts.namespace)
    setup = manifests.rbac_objects(pipeline, opts.namespace)
    setup.append(manifests.code_configmap(pipeline, manifests.runtime_code(pipeline),
                                          opts.namespace))
    setup += [manifests.code_configmap(pipeline, codes[n], opts.namespace) for n in pipeline.order]
    setup.append(roll_cm)
    job_spec = run_job_spec(pipeline, codes, roll_cm["metadata"]["name"], opts)
    services: dict[str, list[Obj]] = {}
    for name in pipeline.services:
        stage = pipeline.stages[name]
        dep = manifests.deployment(pipeline, stage, codes[name], opts, serving or "latest")
        if serving is None:
            dep["spec"]["replicas"] = 0
        services[name] = manifests.service_objects(pipeline, stage, dep, opts.namespace)
    return RetrainPlan(manifests.namespace_object(pipeline, opts.namespace), setup, job_spec,
                       services)
