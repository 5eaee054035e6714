"""Pods from a controller's pod template, shared by the Job and ReplicaSet controllers."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from .errors import ApiError
from .resources import BY_PLURAL
from .util import owner_ref

if TYPE_CHECKING:
    from .api import Api
    from .store import Obj


def pod_from_template(owner: Obj, extra_annotations: dict[str, str] | None = None) -> Obj:
    """A Pod for ``owner.spec.template``, named ``<owner>-<random>``, controlled by ``owner``.

    Labels and annotations come from the template (``extra_annotations`` added);
    an empty ``annotations`` map is left out.
    """
    template = owner["spec"].get("template") or {}
    tmeta = template.get("metadata") or {}
    meta: Obj = {"generateName": f"{owner['metadata']['name']}-", "namespace": owner["metadata"]["namespace"],
                 "labels": dict(tmeta.get("labels") or {})}
    annotations = {**(tmeta.get("annotations") or {}), **(extra_annotations or {})}
    if annotations:
        meta["annotations"] = annotations
    meta["ownerReferences"] = [owner_ref(owner)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template.get("spec") or {})}


def create_pod(api: Api, owner: Obj, component: str, extra_annotations: dict[str, str] | None = None) -> Obj:
    """Create a pod from ``owner``'s template and record the event a controller records.

    ``SuccessfulCreate`` on success; on failure ``FailedCreate`` (Warning) and the
    :class:`ApiError` is raised again.
    """
    try:
        created = api.internal_create(BY_PLURAL["pods"], pod_from_template(owner, extra_annotations))
    except ApiError as exc:
        api.record_event(owner, "FailedCreate", f"Error creating: {exc.message}", "Warning", component)
        raise
    api.record_event(owner, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}",
                     component=component)
    return created
