"""The single node of the stand-in cluster and the knobs tests turn on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NODE_NAME = "standin-node"


@dataclass
class NodeConfig:
    """Mutable node settings shared by the scheduler and the process kubelet.

    Tests change these at run time (e.g. add an image to ``unpullable_images``)
    to provoke the failure modes a real cluster has.
    """

    capacity: dict[str, str] = field(default_factory=lambda: {"cpu": "8", "memory": "16Gi", "ephemeral-storage": "100Gi",
                                                                  "pods": "110"})
    labels: dict[str, str] = field(default_factory=lambda: {
        "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "node-role.kubernetes.io/worker": ""})
    unpullable_images: set[str] = field(default_factory=set)
    unschedulable: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    crash_backoff_seconds: float = 0.5
    crash_backoff_max_seconds: float = 5.0
    image_pull_retry_seconds: float = 0.5
    apiserver_port: int = 0


def node_object(config: NodeConfig) -> dict[str, Any]:
    """The Node resource describing the config (what ``kubectl get nodes`` would show)."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": dict(config.labels)},
        "spec": {"podCIDR": "127.1.0.0/16"},
        "status": {
            "capacity": dict(config.capacity), "allocatable": dict(config.capacity),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": NODE_NAME}],
            "nodeInfo": {"machineID": "standin", "systemUUID": "standin", "bootID": "standin",
                         "kernelVersion": "", "osImage": "process kubelet", "containerRuntimeVersion": "process://1",
                         "kubeletVersion": "v1.30.0-standin", "kubeProxyVersion": "v1.30.0-standin",
                         "operatingSystem": "linux", "architecture": "amd64"},
        },
    }
