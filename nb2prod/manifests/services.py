"""The objects of a service stage: Deployment (gunicorn, as `nb2prod run` serves it), Service,
NetworkPolicy, Ingress.
"""

from __future__ import annotations

import re
import shlex

from nb2prod import serve
from nb2prod.errors import Problem, UserError
from nb2prod.manifests.code import StageCode
from nb2prod.manifests.env import pod_env
from nb2prod.manifests.names import CODE_HASH, MODEL_RUN_ID, Obj, labels, meta, service_name
from nb2prod.manifests.options import Options
from nb2prod.manifests.paths import WORK_DIR
from nb2prod.manifests.pods import pod_spec, resources
from nb2prod.manifests.startup import extra_installs, startup_script
from nb2prod.pipeline import Pipeline, StageSpec

#: gunicorn's drain time after SIGTERM (the local server's); the pod's grace period exceeds it.
GRACEFUL_TIMEOUT = serve.GRACEFUL_TIMEOUT


def _port(stage: StageSpec) -> int:
    port = stage.integer("service", "PORT", 8080)
    if not 1024 <= port <= 65535:
        raise UserError(Problem(f"[service] PORT = {port}: use 1024-65535 (pods run as non-root)",
                                file=str(stage.directory / "config.ini")))
    return port


def route(stage: StageSpec) -> str:
    value = stage.value("service", "ROUTE", "/predict") or "/predict"
    return value if value.startswith("/") else "/" + value


def deployment(pipeline: Pipeline, stage: StageSpec, code: StageCode, opts: Options,
               model_run_id: str) -> Obj:
    """Deployment serving `model_run_id` with gunicorn; rolling update that never drops capacity."""
    name = service_name(pipeline, stage.name)
    port = _port(stage)
    workers = stage.integer("service", "WORKERS", 2)
    replicas = stage.integer("service", "REPLICAS", 2)
    startup = stage.integer("service", "MAX_STARTUP_TIME_SECONDS", 120)
    where = str(stage.directory / "config.ini")
    if workers < 1 or replicas < 0 or startup < 1:
        raise UserError(Problem("[service] WORKERS and MAX_STARTUP_TIME_SECONDS must be >= 1, "
                                "REPLICAS >= 0", file=where))
    threads = stage.integer("service", "THREADS", serve.THREADS)  # as `nb2prod run` serves
    if threads < 1:
        raise UserError(Problem("[service] THREADS must be >= 1", file=where))
    # The settings of `nb2prod run` (gthread: a slow or stuck client holds one thread, not
    # the worker, so probes and other clients are still answered), bound to every address.
    server = serve.gunicorn_options(port, workers, "0.0.0.0", threads=threads,
                                    version=_pinned(code, "gunicorn"), shm=True)
    final = " ".join(["python -m gunicorn --chdir", WORK_DIR, *map(shlex.quote, server), "app:app"])
    script = startup_script(final, opts, install=extra_installs(opts))
    env = pod_env(pipeline, stage.name, opts, {"MODEL_RUN_ID": model_run_id,
                                               "NB2PROD_WORKERS": str(workers)}, stage)
    container = {
        "name": "serve",
        "command": ["sh", "-c", script],
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": resources(stage),
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"},
                           "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3},
        # A TCP check of gunicorn's listening socket (held by the master): a worker busy
        # with a long predict is not "dead" (gunicorn's own --timeout handles hung
        # workers).  Generous delay: without --image the container pip-installs first.
        "livenessProbe": {"tcpSocket": {"port": "http"},
                          "initialDelaySeconds": startup, "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 3},
    }
    select = {"app.kubernetes.io/instance": pipeline.name,
              "app.kubernetes.io/component": stage.name}
    lbls = labels(pipeline, stage.name, stage.name)
    spec = pod_spec(pipeline, code, opts, stage=stage,
                    container=container, restart="Always")
    spec["terminationGracePeriodSeconds"] = GRACEFUL_TIMEOUT + 10
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(name, opts.namespace, lbls),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": select},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "progressDeadlineSeconds": startup,
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": lbls,
                             "annotations": {MODEL_RUN_ID: model_run_id, CODE_HASH: code.digest}},
                "spec": spec,
            },
        },
    }


def _pinned(code: StageCode, distribution: str) -> tuple[int, ...] | None:
    """The version `requirements.txt` pins `distribution` to (what the pod will run)."""
    text = code.files.get("requirements.txt", b"").decode("utf-8", "replace")
    found = re.search(rf"(?im)^{re.escape(distribution)}==([0-9][0-9.]*)", text)
    return tuple(int(p) for p in found.group(1).split(".") if p) if found else None


def network_policy(pipeline: Pipeline, stage: StageSpec, namespace: str) -> Obj | None:
    """Only the serving port may reach the stage's pods (`[kubernetes] NETWORK_POLICY = false`
    turns this off, e.g. for a sidecar that must be reached on another port)."""
    if pipeline.value("kubernetes", "NETWORK_POLICY", "true").lower() in ("false", "0", "no", "off"):
        return None
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(service_name(pipeline, stage.name), namespace,
                             labels(pipeline, stage.name, stage.name)),
            "spec": {"podSelector": {"matchLabels": {
                         "app.kubernetes.io/instance": pipeline.name,
                         "app.kubernetes.io/component": stage.name}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"protocol": "TCP", "port": _port(stage)}]}]}}


def service_objects(pipeline: Pipeline, stage: StageSpec, deployment_obj: Obj,
                    namespace: str) -> list[Obj]:
    """[Deployment, Service, (NetworkPolicy), (Ingress)] of one service stage."""
    extra = [network_policy(pipeline, stage, namespace), ingress(pipeline, stage, namespace)]
    return [deployment_obj, service(pipeline, stage, namespace), *(o for o in extra if o)]


def service(pipeline: Pipeline, stage: StageSpec, namespace: str) -> Obj:
    """ClusterIP Service on port 80 in front of the stage's pods."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(service_name(pipeline, stage.name), namespace,
                         labels(pipeline, stage.name, stage.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/instance": pipeline.name,
                         "app.kubernetes.io/component": stage.name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def ingress(pipeline: Pipeline, stage: StageSpec, namespace: str) -> Obj | None:
    """An Ingress for ROUTE when `[service] INGRESS = true` (INGRESS_HOST / INGRESS_CLASS optional)."""
    if not stage.flag("service", "INGRESS"):
        return None
    name = service_name(pipeline, stage.name)
    rule: Obj = {"http": {"paths": [{
        "path": route(stage), "pathType": "Prefix",
        "backend": {"service": {"name": name, "port": {"name": "http"}}},
    }]}}
    host = stage.value("service", "INGRESS_HOST")
    if host:
        rule["host"] = host
    spec: Obj = {"rules": [rule]}
    klass = stage.value("service", "INGRESS_CLASS")
    if klass:
        spec["ingressClassName"] = klass
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": meta(name, namespace, labels(pipeline, stage.name, stage.name)),
            "spec": spec}


def service_url(pipeline: Pipeline, stage: StageSpec, namespace: str) -> str:
    return (f"http://{service_name(pipeline, stage.name)}.{namespace}.svc.cluster.local"
            f"{route(stage)}")
