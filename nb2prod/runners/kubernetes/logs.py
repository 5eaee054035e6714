"""`nb2prod logs`: a stage's pod logs, whichever way it ran.

A stage's pods are a deploy's Job pods of one run, a service's pods, or the
one pod of an in-cluster run where the stage is an init container (found by
the pod's container -> stage annotation).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from nb2prod import k8s_retry, manifests
from nb2prod.manifests import Obj
from nb2prod.runners.kubernetes.cluster import Kube
from nb2prod.runners.kubernetes.streams import LogFollower, response_lines


def stage_pods(kube: Kube, pipeline: str, namespace: str, stage: str, run_id: str | None
               ) -> tuple[list[Obj], str | None]:
    """Pods of a stage (oldest first): a batch stage's pods of one run, or a service's pods."""
    sel = (f"app.kubernetes.io/managed-by=nb2prod,app.kubernetes.io/instance={pipeline},"
           f"{manifests.STAGE_LABEL}={stage}")
    pods = kube.list("Pod", namespace, sel)
    if not pods or (run_id and not any(
            (p["metadata"].get("labels") or {}).get(manifests.RUN_ID_LABEL) == run_id
            for p in pods)):
        in_cluster = run_pods(kube, pipeline, namespace, stage, run_id)
        if in_cluster:
            return in_cluster, run_id or (in_cluster[-1]["metadata"].get("labels") or {}).get(
                "job-name")
    runs = sorted({(p["metadata"].get("labels") or {}).get(manifests.RUN_ID_LABEL)
                   for p in pods} - {None})
    chosen = run_id
    if runs:
        chosen = run_id or runs[-1]
        pods = [p for p in pods if (p["metadata"].get("labels") or {}).get(
            manifests.RUN_ID_LABEL) == chosen]
    elif run_id:  # service pods: the run they serve
        pods = [p for p in pods if (p["metadata"].get("annotations") or {}).get(
            manifests.MODEL_RUN_ID) == run_id]
    pods.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                             p["metadata"]["name"]))
    return pods, chosen


def run_pods(kube: Kube, pipeline: str, namespace: str, stage: str, run_id: str | None
             ) -> list[Obj]:
    """Pods of in-cluster runs (one container per batch stage) that ran `stage`, oldest first."""
    sel = (f"app.kubernetes.io/managed-by=nb2prod,app.kubernetes.io/instance={pipeline},"
           "app.kubernetes.io/component=run")
    pods = [p for p in kube.list("Pod", namespace, sel) if stage_container(p, stage)]
    if run_id:
        pods = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == run_id]
    pods.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                             p["metadata"]["name"]))
    return pods if run_id else pods[-1:]


def stage_container(pod: Obj, stage: str) -> str | None:
    """The container of `pod` that runs `stage` (the only one, for a stage's own pods)."""
    from nb2prod.retrain import STAGES_ANNOTATION

    names = (pod["metadata"].get("annotations") or {}).get(STAGES_ANNOTATION)
    if names is None:
        return pod["spec"]["containers"][0]["name"]
    return next((c for c, s in json.loads(names).items() if s == stage), None)


def logs(pipeline: str, namespace: str, stage: str, *, run_id: str | None = None,
         follow: bool = False, context: str | None = None,
         echo: Callable[[str], None] = print) -> int:
    """Print a stage's logs; returns the number of pods shown (0 when none exist)."""
    kube = Kube(context)
    pods, _chosen = stage_pods(kube, pipeline, namespace, stage, run_id)
    if not pods:
        return 0
    many = len(pods) > 1
    followers = []
    for pod in pods:
        name = pod["metadata"]["name"]
        container = stage_container(pod, stage) or pod["spec"]["containers"][0]["name"]
        prefix = f"[{stage} {name}] " if many else f"[{stage}] "
        if follow:
            follower = LogFollower(kube, namespace, name, container, prefix, echo)
            follower.start()
            followers.append(follower)
            continue
        try:
            resp = k8s_retry.call(kube.core.read_namespaced_pod_log, name, namespace,
                                  container=container, _preload_content=False,
                                  _request_timeout=(10, 60))
            for line in response_lines(resp):
                echo(prefix + line)
        except Exception as exc:  # noqa: BLE001 - a pod without a log yet: say so and go on
            echo(f"{prefix}(no log: {k8s_retry.message_of(exc)})")
    for follower in followers:
        while follower.is_alive():
            follower.join(timeout=0.5)
    return len(pods)


