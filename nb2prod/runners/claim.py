"""Reading a `pvc://CLAIM/path` store from the deploying machine: `nb2prod runs --store pvc://`.

A claim is a volume inside the cluster; the deploying machine cannot open it.
A short-lived pod mounts it read-only, prints the store's small run records
(``latest.json``, each run's ``run.json`` and stages' ``result.json``, plus the
list of keys) as one JSON line, and is deleted.  :class:`SnapshotStore` serves
that snapshot to :func:`nb2prod.artifacts.list_runs`, so `runs` shows a pvc://
store exactly as it shows a local or S3 one.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any

from nb2prod import artifacts, k8s_retry, manifests
from nb2prod.errors import PipelineFailure
from nb2prod.manifests import Obj
from nb2prod.pipeline import Pipeline

#: The pod's program (standard library only): walk the pipeline's directory of the store.
READER = """\
import json, os, sys
store, pipeline = sys.argv[1], sys.argv[2]
keys, files = [], {}
for top, dirs, names in os.walk(os.path.join(store, pipeline)):
    dirs.sort()
    for name in sorted(names):
        path = os.path.join(top, name)
        key = os.path.relpath(path, store)
        keys.append(key)
        if name in ("latest.json", "run.json", "result.json") and os.path.getsize(path) < 2**20:
            with open(path, encoding="utf-8", errors="replace") as fh:
                files[key] = fh.read()
print(json.dumps({"keys": keys, "files": files}))
"""
READ_TIMEOUT = 180.0
COMPONENT = "store-reader"


class SnapshotStore(artifacts.Store):
    """A read-only store over the keys and small files a reader pod printed."""

    def __init__(self, uri: str, keys: list[str], files: dict[str, str]) -> None:
        self.uri = uri
        self.keys = sorted(keys)
        self.files = files

    def read_bytes(self, key: str) -> bytes:
        if key not in self.files:
            raise FileNotFoundError(self.url(key))
        return self.files[key].encode("utf-8")

    def exists(self, key: str) -> bool:
        return key in self.keys

    def list(self, prefix: str = "") -> list[str]:
        return [k for k in self.keys if k.startswith(prefix)]


def reader_pod(pipeline: Pipeline, opts: manifests.Options) -> Obj:
    """The pod that reads the claim: restricted, read-only mount, no API token, 2 minutes."""
    mount = manifests.store_mount(opts.store)
    image = manifests.image_for(pipeline, None, opts)
    root = mount.uri.removeprefix("file://")
    container = {
        "name": "read", "image": image,
        "imagePullPolicy": manifests.pull_policy(pipeline, image),
        "command": ["python", "-c", READER, root, pipeline.name],
        "resources": manifests.PROMOTE_RESOURCES,
        "securityContext": copy.deepcopy(manifests.CONTAINER_SECURITY),
        "volumeMounts": [{"name": "store", "mountPath": manifests.STORE_DIR, "readOnly": True}],
    }
    name = f"{manifests.k8s_name(pipeline.name)[:30]}-store-reader-{uuid.uuid4().hex[:6]}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": manifests.meta(name, opts.namespace,
                                   manifests.labels(pipeline, COMPONENT)),
        "spec": {**manifests.pod_base("default", "Never"), "activeDeadlineSeconds": 120,
                 "containers": [container],
                 "volumes": [{"name": "store", "persistentVolumeClaim": {
                     "claimName": mount.claim, "readOnly": True}}]},
    }


def snapshot(pipeline: Pipeline, opts: manifests.Options, context: str | None = None,
             timeout: float = READ_TIMEOUT) -> SnapshotStore:
    """Run the reader pod in `opts.namespace` and return what it found (always deletes it)."""
    from nb2prod.roller import stuck_reason
    from nb2prod.runners.kubernetes.apply import check_claim
    from nb2prod.runners.kubernetes.cluster import Kube

    kube = Kube(context)
    check_claim(kube, opts)
    pod = reader_pod(pipeline, opts)
    name = pod["metadata"]["name"]
    kube.create(pod)
    try:
        deadline = time.monotonic() + timeout
        while True:
            current = kube.read("Pod", opts.namespace, name) or {}
            phase = (current.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            stuck = stuck_reason(current) if current else None
            if stuck:
                raise PipelineFailure(f"reading {opts.store}: pod {name} cannot start: {stuck}")
            if time.monotonic() > deadline:
                raise PipelineFailure(f"reading {opts.store}: pod {name} did not finish within "
                                      f"{timeout:.0f}s")
            time.sleep(0.5)
        resp = k8s_retry.call(kube.core.read_namespaced_pod_log, name, opts.namespace,
                              _preload_content=False, _request_timeout=(10, 60))
        text = resp.data.decode("utf-8", "replace")
    finally:
        k8s_retry.delete(kube.core.delete_namespaced_pod, name, opts.namespace,
                         grace_period_seconds=0, _preload_content=False,
                         _request_timeout=(10, 60))
    return parse(opts.store, phase, text)


def parse(uri: str, phase: str | None, text: str) -> SnapshotStore:
    """The reader's JSON line as a store; its last log line as the error otherwise."""
    lines = [line for line in text.splitlines() if line.strip()]
    data: Any = None
    if phase == "Succeeded" and lines:
        try:
            data = json.loads(lines[-1])
        except ValueError:
            data = None
    if not isinstance(data, dict):
        why = lines[-1] if lines else f"the reader pod ended {phase} without output"
        raise PipelineFailure(f"reading {uri}: {why}")
    return SnapshotStore(uri, list(data.get("keys") or []), dict(data.get("files") or {}))
