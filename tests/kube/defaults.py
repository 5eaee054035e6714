"""Server-side defaulting, as the apiserver applies it before validation and storage.

Client code often reads fields it never set (a Deployment's strategy, a Job's
backoffLimit, a Service's clusterIP), so the stand-in must fill them in the way
a real cluster does, or tests would pass against data a cluster never returns.
"""

from __future__ import annotations

import itertools
from typing import Any

_cluster_ips = itertools.count(10)
_node_ports = itertools.count(30080)


def _probe(probe: dict[str, Any] | None) -> None:
    if not probe:
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    if probe.get("httpGet") is not None:
        probe["httpGet"].setdefault("path", "/")
        probe["httpGet"].setdefault("scheme", "HTTP")


def _container(c: dict[str, Any]) -> None:
    image = c.get("image", "")
    tag = image.rsplit("/", 1)[-1]
    latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
    c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for env in c.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef")
        if field_ref is not None:
            field_ref.setdefault("apiVersion", "v1")
    for name in ("livenessProbe", "readinessProbe", "startupProbe"):
        _probe(c.get(name))


def pod_spec(spec: dict[str, Any], restart_policy: str = "Always") -> None:
    """Defaults of a PodSpec (direct pods and every template)."""
    spec.setdefault("restartPolicy", restart_policy)
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            _container(c)
    for vol in spec.get("volumes") or []:
        for source in ("configMap", "secret"):
            if vol.get(source) is not None:
                vol[source].setdefault("defaultMode", 420)


def _template(spec: dict[str, Any], restart_policy: str = "Always") -> None:
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {})
    pod_spec(template.setdefault("spec", {}), restart_policy)


def apply(kind: str, obj: dict[str, Any]) -> None:
    """Fill defaults in place for an object of ``kind`` (create and update alike)."""
    spec = obj.get("spec")
    if kind == "Pod" and spec is not None:
        pod_spec(spec)
    elif kind == "Deployment" and spec is not None:
        spec.setdefault("replicas", 1)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        _template(spec)
    elif kind == "ReplicaSet" and spec is not None:
        spec.setdefault("replicas", 1)
        _template(spec)
    elif kind == "Job" and spec is not None:
        if spec.get("completions") is None and spec.get("parallelism") is None:
            spec["completions"] = 1
        spec.setdefault("parallelism", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        _template(spec, "Never")
    elif kind == "CronJob" and spec is not None:
        spec.setdefault("concurrencyPolicy", "Allow")
        spec.setdefault("suspend", False)
        spec.setdefault("successfulJobsHistoryLimit", 3)
        spec.setdefault("failedJobsHistoryLimit", 1)
        job_template = spec.setdefault("jobTemplate", {})
        job_template.setdefault("metadata", {})
        _template(job_template.setdefault("spec", {}), "Never")
    elif kind == "Service":
        _service(obj.setdefault("spec", {}))
    elif kind == "Secret":
        obj.setdefault("type", "Opaque")
    elif kind == "PersistentVolumeClaim" and spec is not None:
        spec.setdefault("volumeMode", "Filesystem")
    elif kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]


def _service(spec: dict[str, Any]) -> None:
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP"):
            n = next(_cluster_ips)
            spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
        if spec["type"] in ("NodePort", "LoadBalancer"):
            port.setdefault("nodePort", next(_node_ports))
