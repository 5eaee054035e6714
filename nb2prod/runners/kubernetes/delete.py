"""`nb2prod delete`: remove a pipeline's objects (by label) and, on request, its artifacts.

Kinds are deleted in dependency order (CronJob before the Jobs it would
create, Deployments before their ReplicaSets and pods) and the command waits
until they are gone, so a deploy right after starts clean.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from nb2prod import k8s_retry, manifests
from nb2prod.errors import PipelineFailure, Problem, UserError
from nb2prod.pipeline import Pipeline
from nb2prod.runners.kubernetes.cluster import Kube

DELETE_ORDER = ("CronJob", "Job", "Deployment", "ReplicaSet", "Ingress", "NetworkPolicy",
                "Service", "Pod",
                "ConfigMap", "RoleBinding", "Role", "ServiceAccount")


def delete(pipeline: Pipeline, namespace: str, *, context: str | None = None,
           purge_artifacts: bool = False, store: str | None = None, timeout: float = 120.0,
           echo: Callable[[str], None] = print) -> dict[str, int]:
    """Delete every object labelled as this pipeline's in `namespace`; wait until gone.

    The namespace itself is kept (other pipelines may live there).  Artifacts
    are kept unless `purge_artifacts`.
    """
    kube = Kube(context)
    sel = manifests.selector(pipeline)
    counts: dict[str, int] = {}
    for kind in DELETE_ORDER:
        try:
            items = kube.list(kind, namespace, sel)
        except Exception as exc:
            if k8s_retry.status_of(exc) in (403, 404):
                continue
            raise
        for item in items:
            kube.delete(kind, namespace, item["metadata"]["name"])
        if items:
            counts[kind] = len(items)
    deadline = time.monotonic() + timeout
    remaining: list[str] = []
    while time.monotonic() < deadline:
        remaining = [f"{kind}/{item['metadata']['name']}" for kind in DELETE_ORDER
                     for item in kube.list(kind, namespace, sel)]
        if not remaining:
            break
        time.sleep(0.3)
    if remaining:
        raise PipelineFailure(f"still present after {timeout:.0f}s: {', '.join(remaining[:5])}")
    if purge_artifacts:
        counts["artifacts"] = purge(pipeline, pipeline.store_uri(store))
        echo(f"deleted {counts['artifacts']} artifact file(s) of {pipeline.name} from "
             f"{pipeline.store_uri(store)}")
    return counts


def purge(pipeline: Pipeline, uri: str) -> int:
    """Remove `<store>/<pipeline>/` (s3:// or file://); the count of files removed."""
    import shutil

    from nb2prod import artifacts

    if uri.startswith("pvc://"):
        raise UserError(Problem(f"--purge-artifacts: {uri} is a volume in the cluster; delete "
                                f"{pipeline.name}/ on the claim yourself"))
    store = artifacts.open_store(uri)
    keys = store.list(f"{pipeline.name}/")
    if isinstance(store, artifacts.FileStore):
        shutil.rmtree(store.root / pipeline.name, ignore_errors=True)
        return len(keys)
    if isinstance(store, artifacts.S3Store):
        client = store.client
        full = [store._key(k) for k in keys]
        for start in range(0, len(full), 1000):
            client.delete_objects(Bucket=store.bucket, Delete={
                "Objects": [{"Key": k} for k in full[start:start + 1000]], "Quiet": True})
        return len(keys)
    raise UserError(Problem(f"--purge-artifacts: cannot delete from {uri}"))
