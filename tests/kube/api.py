"""The apiserver's request semantics, independent of HTTP.

create / get / list / replace / patch / delete / scale with: defaulting,
admission (namespace lifecycle, service accounts), validation, optimistic
concurrency on resourceVersion, generation bumps on spec changes, the
/status split, deletion with finalizers and ownerReference propagation
(Orphan / Background / Foreground), graceful pod deletion, and dry run.

Controllers and the kubelet use the ``internal_*`` methods, which skip
validation and fault injection, as in-cluster components are trusted.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

from . import defaults, validation
from .errors import ApiError, already_exists, bad_request, conflict, forbidden, internal, not_found
from .patch import apply_patch
from .resources import BY_PLURAL, Resource
from .selectors import (
    fields_match,
    matches,
    parse_field_selector,
    parse_label_selector,
    selector_string,
)
from .store import Obj, Store
from .util import iso, random_suffix, utcnow

SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
TERMINAL = ("Succeeded", "Failed")
PLACEHOLDER_CA = "-----BEGIN CERTIFICATE-----\nc3RhbmRpbg==\n-----END CERTIFICATE-----\n"


def _status_success(res: Resource, obj: Obj) -> Obj:
    details = {"name": obj["metadata"]["name"], "kind": res.plural, "uid": obj["metadata"]["uid"]}
    if res.group:
        details["group"] = res.group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


class Api:
    """Apiserver semantics over a :class:`Store`."""

    def __init__(self, store: Store, root_ca_pem: str = PLACEHOLDER_CA) -> None:
        self.store = store
        # What the root-ca-cert-publisher puts in every namespace's kube-root-ca.crt.
        self.root_ca_pem = root_ca_pem
        # Set by the kubelet: called when a pod on the node is deleted gracefully.
        self.on_pod_terminating: Callable[[Obj], None] | None = None

    # ------------------------------------------------------------------ reads
    def get(self, res: Resource, ns: str, name: str) -> Obj:
        """GET one object (404 if absent)."""
        obj = self.store.get(res.plural, ns if res.namespaced else "", name)
        if obj is None:
            raise not_found(res.plural, res.group, name)
        return obj

    def list(self, res: Resource, ns: str | None, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None, cont: str | None = None) -> Obj:
        """LIST with selectors and limit/continue paging."""
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, res.plural)
        with self.store.lock:
            rv = self.store.resource_version
            items = [o for o in self.store.scan(res.plural, ns if res.namespaced else None)
                     if matches(labels, o["metadata"].get("labels")) and fields_match(fields, o)]
            items = [copy.deepcopy(o) for o in items]
        start = 0
        if cont:
            try:
                token = json.loads(base64.urlsafe_b64decode(cont.encode()))
                start = int(token["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise bad_request(f"continue key is not valid: {exc}") from exc
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and limit > 0 and start + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"start": start + limit}).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start:start + limit]
        else:
            items = items[start:]
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": items}

    # ------------------------------------------------------------------ create
    def _type_meta(self, res: Resource, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        if body.get("apiVersion", res.api_version) != res.api_version or body.get("kind", res.kind) != res.kind:
            raise bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the expected "
                              f"API version ({res.api_version})" if body.get("apiVersion") != res.api_version else
                              f"kind {body.get('kind')!r} does not match the expected kind {res.kind!r}")
        body["apiVersion"], body["kind"] = res.api_version, res.kind
        body.setdefault("metadata", {})
        return body

    def _check_namespace(self, res: Resource, ns: str, name: str) -> None:
        if not res.namespaced:
            return
        namespace = self.store.peek("namespaces", "", ns)
        if namespace is None:
            raise not_found("namespaces", "", ns)
        if namespace["metadata"].get("deletionTimestamp"):
            raise forbidden(res.plural, res.group, name, f"unable to create new content in namespace {ns} "
                            "because it is being terminated")

    def create(self, res: Resource, ns: str, body: Any, *, dry_run: bool = False, strict: bool = True) -> Obj:
        """POST: validate, default, admit and store a new object."""
        obj = self._type_meta(res, body)
        meta = obj["metadata"]
        if res.namespaced:
            if meta.get("namespace") not in (None, "", ns):
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise internal("resourceVersion should not be set on objects to be created")
        validation.check_schema(res, obj, strict)
        return self._create(res, obj, dry_run=dry_run)

    def _create(self, res: Resource, obj: Obj, *, dry_run: bool = False) -> Obj:
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        generated = not meta.get("name") and meta.get("generateName")
        if generated:
            meta["name"] = meta["generateName"] + random_suffix()
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                    "managedFields", "selfLink"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        self._check_namespace(res, ns, meta.get("name", ""))
        self._prepare_create(res, obj)
        defaults.apply(res.kind, obj)
        validation.validate(res, obj)
        meta["creationTimestamp"] = iso()
        if res.has_generation:
            meta["generation"] = 1
        with self.store.lock:
            if self.store.peek(res.plural, ns, meta["name"]) is not None:
                if generated:
                    meta.pop("name")
                    return self._create(res, obj, dry_run=dry_run)
                raise already_exists(res.plural, res.group, meta["name"])
            if dry_run:
                return obj
            created = self.store.write(res.plural, obj)
        if res.plural == "namespaces":
            self._ensure_default_sa(meta["name"])
        return created

    def _prepare_create(self, res: Resource, obj: Obj) -> None:
        """Kind-specific create logic: status reset, Job selectors, pod admission, Secret stringData."""
        if res.has_status:
            obj["status"] = {}
        kind = res.kind
        if kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        elif kind == "Pod":
            self._admit_pod(obj)
        elif kind == "Job":
            self._job_selector(obj)
        elif kind == "PersistentVolumeClaim":
            obj["status"] = {"phase": "Pending"}
        if kind == "Secret":
            _fold_string_data(obj)

    def _job_selector(self, job: Obj) -> None:
        spec = job.setdefault("spec", {})
        if spec.get("manualSelector"):
            return
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        if spec.get("selector"):
            raise validation.invalid("Job", "batch", name, [validation.inv(
                "spec.selector", spec["selector"], "`selector` not auto-generated")])
        generated = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                     "controller-uid": uid, "job-name": name}
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **generated}
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}

    def _admit_pod(self, pod: Obj) -> None:
        """ServiceAccount admission: default SA, existence check, API token volume."""
        spec = pod.setdefault("spec", {})
        ns, name = pod["metadata"]["namespace"], pod["metadata"].get("name", "")
        sa_name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = spec["serviceAccount"] = sa_name
        sa = self.store.peek("serviceaccounts", ns, sa_name)
        if sa is None:
            raise forbidden("pods", "", name, f"error looking up service account {ns}/{sa_name}: "
                            f'serviceaccount "{sa_name}" not found')
        automount = spec.get("automountServiceAccountToken", sa.get("automountServiceAccountToken", True))
        if automount is not False:
            vol_name = f"kube-api-access-{random_suffix()}"
            spec.setdefault("volumes", []).append({"name": vol_name, "projected": {
                "defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                        "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})
            for group in ("initContainers", "containers"):
                for c in spec.get(group) or []:
                    mounts = c.setdefault("volumeMounts", [])
                    if not any(m.get("mountPath") == SA_TOKEN_PATH for m in mounts):
                        mounts.append({"name": vol_name, "readOnly": True, "mountPath": SA_TOKEN_PATH})
        spec.setdefault("priority", 0)
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("tolerations", [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300}])
        pod["status"] = {"phase": "Pending", "qosClass": _qos(spec)}

    def _ensure_default_sa(self, ns: str) -> None:
        """What the serviceaccount and root-CA publisher controllers put in every namespace."""
        if self.store.peek("serviceaccounts", ns, "default") is None:
            self._create(BY_PLURAL["serviceaccounts"], {"apiVersion": "v1", "kind": "ServiceAccount",
                                                        "metadata": {"name": "default", "namespace": ns}})
        if self.store.peek("configmaps", ns, "kube-root-ca.crt") is None:
            self._create(BY_PLURAL["configmaps"], {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                "name": "kube-root-ca.crt", "namespace": ns, "annotations": {
                    "kubernetes.io/description": "Contains a CA bundle that can be used to verify the "
                    "kube-apiserver when using internal endpoints such as the internal service IP or "
                    "kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes "
                    "clusters."}},
                "data": {"ca.crt": self.root_ca_pem}})

    # ------------------------------------------------------------------ update
    def replace(self, res: Resource, ns: str, name: str, body: Any, *, subresource: str | None = None,
                dry_run: bool = False, strict: bool = True) -> Obj:
        """PUT (optionally on /status)."""
        body = self._type_meta(res, body)
        meta = body["metadata"]
        if meta.get("name") not in (None, name):
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                              f"({name})")
        if res.namespaced and meta.get("namespace") not in (None, "", ns):
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        validation.check_schema(res, body, strict)
        with self.store.lock:
            current = self.get(res, ns, name)
            rv = meta.get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise conflict(res.plural, res.group, name)
            return self._update(res, current, body, subresource, dry_run)

    def patch(self, res: Resource, ns: str, name: str, content_type: str, body: Any, *,
              subresource: str | None = None, dry_run: bool = False, strict: bool = True) -> Obj:
        """PATCH (JSON patch, merge patch, strategic merge patch), optionally on /status."""
        with self.store.lock:
            current = self.get(res, ns, name)
            patched = apply_patch(content_type, current, body)
            rv = (patched.get("metadata") or {}).get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise conflict(res.plural, res.group, name)
            patched = self._type_meta(res, patched)
            if patched["metadata"].get("name") != name:
                raise bad_request("metadata.name: the name of the object may not be changed by a patch")
            validation.check_schema(res, patched, strict)
            return self._update(res, current, patched, subresource, dry_run)

    def _update(self, res: Resource, current: Obj, new: Obj, subresource: str | None, dry_run: bool) -> Obj:
        if subresource == "status":
            merged = copy.deepcopy(current)
            merged["status"] = new.get("status") or {}
            new = merged
        elif res.has_status:
            new["status"] = copy.deepcopy(current.get("status") or {})
        meta, old_meta = new.setdefault("metadata", {}), current["metadata"]
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                    "namespace", "name", "resourceVersion"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        if res.kind == "Secret":
            _fold_string_data(new)
        if res.kind == "Service":
            for key in ("clusterIP", "clusterIPs"):
                if key in (current.get("spec") or {}) and not (new.get("spec") or {}).get(key):
                    new.setdefault("spec", {})[key] = current["spec"][key]
        defaults.apply(res.kind, new)
        if subresource != "status":
            validation.validate(res, new, current)
        if res.has_generation and new.get("spec") != current.get("spec"):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if new == current:
            return current
        if dry_run:
            return new
        return self._store_update(res, new)

    def _store_update(self, res: Resource, new: Obj) -> Obj:
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and res.plural not in ("pods",):
            return self.store.remove(res.plural, meta.get("namespace", ""), meta["name"]) or new
        return self.store.write(res.plural, new)

    # ------------------------------------------------------------------ scale
    def get_scale(self, res: Resource, ns: str, name: str) -> Obj:
        """GET .../scale as autoscaling/v1 Scale."""
        obj = self.get(res, ns, name)
        meta = obj["metadata"]
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": selector_string(obj["spec"].get("selector"))},
        }

    def update_scale(self, res: Resource, ns: str, name: str, body: Any, content_type: str | None = None,
                     dry_run: bool = False) -> Obj:
        """PUT/PATCH .../scale: only spec.replicas is taken."""
        with self.store.lock:
            scale = self.get_scale(res, ns, name)
            new_scale = apply_patch(content_type, scale, body) if content_type else body
            if not isinstance(new_scale, dict):
                raise bad_request("scale body must be an object")
            rv = (new_scale.get("metadata") or {}).get("resourceVersion")
            if rv and rv != scale["metadata"]["resourceVersion"]:
                raise conflict(res.plural, res.group, name)
            replicas = (new_scale.get("spec") or {}).get("replicas", 0)
            if not isinstance(replicas, int) or replicas < 0:
                raise validation.invalid("Scale", "autoscaling", name, [validation.inv(
                    "spec.replicas", replicas, "must be greater than or equal to 0")])
            current = self.get(res, ns, name)
            new = copy.deepcopy(current)
            new["spec"]["replicas"] = replicas
            self._update(res, current, new, None, dry_run)
            return self.get_scale(res, ns, name) if not dry_run else dict(scale, spec={"replicas": replicas})

    # ------------------------------------------------------------------ delete
    def delete(self, res: Resource, ns: str, name: str, options: Obj | None = None, *,
               dry_run: bool = False) -> Obj:
        """DELETE with preconditions, propagation policy and graceful pod termination."""
        options = options or {}
        ns = ns if res.namespaced else ""
        with self.store.lock:
            current = self.get(res, ns, name)
            meta = current["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise conflict(res.plural, res.group, name, f"Precondition failed: UID in precondition: "
                               f"{pre['uid']}, UID in object meta: {meta['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise conflict(res.plural, res.group, name, f"Precondition failed: ResourceVersion in "
                               f"precondition: {pre['resourceVersion']}, ResourceVersion in object meta: "
                               f"{meta['resourceVersion']}")
            policy = options.get("propagationPolicy")
            if policy is None and options.get("orphanDependents") is not None:
                policy = "Orphan" if options["orphanDependents"] else "Background"
            if policy is None:
                # batch/v1 Jobs still default to orphaning their pods, as on a real cluster.
                policy = "Orphan" if res.kind == "Job" else "Background"
            if policy not in ("Orphan", "Background", "Foreground"):
                raise validation.invalid("DeleteOptions", "meta.k8s.io", "", [validation.unsupported(
                    "propagationPolicy", policy, ["Foreground", "Background", "Orphan"])])
            if dry_run:
                return current if res.kind == "Pod" else _status_success(res, current)
            if res.kind == "Namespace":
                return self._delete_namespace(current)
            if res.kind == "Pod":
                return self._delete_pod(current, options)
            if meta.get("deletionTimestamp"):
                return current
            if policy == "Orphan":
                self._orphan_dependents(meta["uid"])
            finalizers = list(meta.get("finalizers") or [])
            if policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if finalizers:
                current["metadata"]["deletionTimestamp"] = iso()
                current["metadata"]["finalizers"] = finalizers
                if res.has_generation:
                    meta["generation"] = int(meta.get("generation", 1)) + 1
                return self.store.write(res.plural, current)
            self.store.remove(res.plural, ns, name)
            return _status_success(res, current)

    def _delete_namespace(self, ns_obj: Obj) -> Obj:
        if not ns_obj["metadata"].get("deletionTimestamp"):
            ns_obj["metadata"]["deletionTimestamp"] = iso()
            ns_obj["status"] = {"phase": "Terminating"}
            return self.store.write("namespaces", ns_obj)
        return ns_obj

    def _delete_pod(self, pod: Obj, options: Obj) -> Obj:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        phase = (pod.get("status") or {}).get("phase")
        running = bool(spec.get("nodeName")) and phase not in TERMINAL
        if running and grace > 0 and not meta.get("finalizers"):
            if meta.get("deletionTimestamp") and meta.get("deletionGracePeriodSeconds", grace) <= grace:
                return pod
            meta["deletionTimestamp"] = iso(utcnow() + dt.timedelta(seconds=grace))
            meta["deletionGracePeriodSeconds"] = grace
            written = self.store.write("pods", pod)
            if self.on_pod_terminating is not None:
                self.on_pod_terminating(written)
            return written
        if meta.get("finalizers"):
            meta.setdefault("deletionTimestamp", iso())
            meta["deletionGracePeriodSeconds"] = 0
            return self.store.write("pods", pod)
        return self.store.remove("pods", meta["namespace"], meta["name"]) or pod

    def _orphan_dependents(self, uid: str) -> None:
        for plural, obj in self.store.all_objects():
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                def strip(o: Obj) -> None:
                    kept = [r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                    if kept:
                        o["metadata"]["ownerReferences"] = kept
                    else:
                        o["metadata"].pop("ownerReferences", None)
                self.store.mutate(plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], strip)

    def delete_collection(self, res: Resource, ns: str | None, label_selector: str | None,
                          field_selector: str | None, options: Obj | None, dry_run: bool) -> Obj:
        """DELETE on a collection: delete every match, return them as a list."""
        listed = self.list(res, ns, label_selector, field_selector)
        for item in listed["items"]:
            meta = item["metadata"]
            try:
                self.delete(res, meta.get("namespace", ""), meta["name"], options, dry_run=dry_run)
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return listed

    # ------------------------------------------------------------------ internal (controllers, kubelet)
    def internal_create(self, res: Resource, obj: Obj) -> Obj:
        """Create on behalf of a controller: full admission/defaulting, no schema check."""
        return self._create(res, copy.deepcopy(obj))

    def internal_update(self, res: Resource, ns: str, name: str, fn: Callable[[Obj], None]) -> Obj | None:
        """Mutate spec/metadata of a stored object (generation bump, finalizer completion)."""
        with self.store.lock:
            current = self.store.peek(res.plural, ns, name)
            if current is None:
                return None
            new = copy.deepcopy(current)
            fn(new)
            if new == current:
                return current
            if res.has_generation and new.get("spec") != current.get("spec"):
                new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
            return self._store_update(res, new)

    def internal_status(self, res: Resource, ns: str, name: str, fn: Callable[[Obj], None]) -> Obj | None:
        """Mutate ``status`` of a stored object (write skipped if nothing changed)."""
        return self.store.mutate(res.plural, ns, name, fn)

    def internal_delete(self, res: Resource, ns: str, name: str, policy: str = "Background",
                        grace: int | None = None) -> None:
        """Delete on behalf of a controller; a missing object is fine."""
        options: Obj = {"propagationPolicy": policy}
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        try:
            self.delete(res, ns, name, options)
        except ApiError as exc:
            if exc.code != 404:
                raise

    def record_event(self, involved: Obj, reason: str, message: str, etype: str = "Normal",
                     component: str = "standin") -> None:
        """Create a core/v1 Event about ``involved`` (best effort, like the real recorders)."""
        meta = involved["metadata"]
        ns = meta.get("namespace") or "default"
        if self.store.peek("namespaces", "", ns) is None:
            return
        now = iso()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": etype, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "source": {"component": component},
            "reportingComponent": component, "reportingInstance": "",
        }
        try:
            self._create(BY_PLURAL["events"], event)
        except ApiError:
            return


def _fold_string_data(secret: Obj) -> None:
    """Secrets: ``stringData`` is write-only and merged into base64 ``data``."""
    string_data = secret.pop("stringData", None)
    if string_data:
        data = secret.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _qos(spec: Obj) -> str:
    containers = spec.get("containers") or []
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get("cpu") and (r.get("limits") or {}).get("memory")
        and (r.get("requests") or {}).get("cpu", r["limits"]["cpu"]) == r["limits"]["cpu"]
        and (r.get("requests") or {}).get("memory", r["limits"]["memory"]) == r["limits"]["memory"]
        for r in resources)
    return "Guaranteed" if guaranteed else "Burstable"
