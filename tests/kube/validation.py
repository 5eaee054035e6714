"""Apiserver-style validation of incoming objects.

Two layers, as on a real cluster:

1. Decoding: the object must match the OpenAPI schema of its kind for
   :data:`SCHEMA_VERSION` (``kubernetes-validate`` strict schemas). Unknown
   fields are a 400 ``strict decoding error``, any other schema violation
   (wrong type, missing required field) a 422 naming the field.
2. Semantic rules the schemas miss: DNS-1123/1035 names per kind, label and
   annotation syntax, container/volume/env rules, cron syntax and time zones,
   selector/template agreement, immutable fields, immutable ConfigMaps and
   Secrets, and the 1 MiB ConfigMap/Secret size limit.

Every failure names the field in ``details.causes[].field``, because tests
(and users) need to know *which* manifest line a cluster would reject.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import zoneinfo
from typing import Any

import jsonschema
from kubernetes_validate import utils as kv_utils
from referencing import Registry
from referencing import Resource as RefResource

from . import cron
from .errors import ApiError, bad_request, invalid
from .resources import Resource

SCHEMA_VERSION = "1.30"
MAX_CONFIG_SIZE = 1024 * 1024
Cause = tuple[str, str, str]  # (field, message, reason)

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_DNS1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_ENV_NAME = r"[-._a-zA-Z][-._a-zA-Z0-9]*"
_CONFIG_KEY = r"[-._a-zA-Z0-9]+"
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][-+]?[0-9]+)?$")
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}

LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
             "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
             f"validation is '{_LABEL}')")
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                 f"validation is '{_SUBDOMAIN}')")
DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
               "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
               f"regex used for validation is '{_DNS1035}')")


def go_repr(value: Any) -> str:
    """Render a value for 'Invalid value: ...' the way the apiserver quotes it."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def inv(field: str, value: Any, msg: str) -> Cause:
    """An ``Invalid value`` cause."""
    return field, f"Invalid value: {go_repr(value)}: {msg}", "FieldValueInvalid"


def req(field: str, detail: str = "") -> Cause:
    """A ``Required value`` cause."""
    return field, "Required value" + (f": {detail}" if detail else ""), "FieldValueRequired"


def unsupported(field: str, value: Any, allowed: list[str]) -> Cause:
    """An ``Unsupported value`` cause."""
    opts = ", ".join(f'"{a}"' for a in allowed)
    return field, f"Unsupported value: {go_repr(value)}: supported values: {opts}", "FieldValueNotSupported"


def forbidden(field: str, msg: str) -> Cause:
    """A ``Forbidden`` cause."""
    return field, f"Forbidden: {msg}", "FieldValueForbidden"


def parse_quantity(text: Any) -> float:
    """Kubernetes resource quantity (``500m``, ``1Gi``, ``2``) as a float; ValueError if malformed."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise ValueError(f"quantities must match the regular expression '{_QUANTITY.pattern}'")
    number, suffix = float(m.group(1)), m.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * 10 ** int(suffix[1:])
    return number * _SUFFIX[suffix]


# --------------------------------------------------------------------------- schema layer

_validators: dict[tuple[str, str, bool], Any] = {}
_validators_lock = threading.Lock()


def _schema_dir(strict: bool) -> str:
    versions = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) == SCHEMA_VERSION]
    return f"v{versions[-1]}-local" + ("-strict" if strict else "")


def _validator(api_version: str, kind: str, strict: bool) -> Any:
    """Build (once) a jsonschema validator for a kind; loading schemas costs ~20 ms each."""
    key = (api_version, kind, strict)
    with _validators_lock:
        if key not in _validators:
            folder = _schema_dir(strict)
            group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
            schema = kv_utils.schema_contents(
                f"kubernetes-json-schema/{folder}/{kind.lower()}-{group_version}.json", SCHEMA_VERSION)
            defs = kv_utils.schema_contents(f"kubernetes-json-schema/{folder}/_definitions.json", SCHEMA_VERSION)
            registry: Registry = RefResource.from_contents(schema) @ Registry()
            registry = RefResource.from_contents(defs) @ registry
            _validators[key] = jsonschema.Draft202012Validator(schema, registry=registry)
        return _validators[key]


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def check_schema(res: Resource, obj: dict[str, Any], strict: bool = True) -> None:
    """Decode-time check: unknown fields -> 400 strict decoding error; other violations -> 422."""
    validator = _validator(res.api_version, res.kind, strict)
    unknown: list[str] = []
    causes: list[Cause] = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(err.absolute_path)
        if err.validator == "additionalProperties":
            for name in re.findall(r"'([^']+)'", err.message.split("(")[-1]):
                unknown.append(f"{where}.{name}" if where else name)
        elif err.validator == "required":
            missing = re.findall(r"^'([^']+)'", err.message)
            causes.append(req(f"{where}.{missing[0]}" if where and missing else (missing[0] if missing else where)))
        elif err.validator == "enum" and where in ("apiVersion", "kind"):
            raise bad_request(f"the API version in the data ({obj.get('apiVersion')}) does not match the expected "
                              f"API version ({res.api_version}) or kind {obj.get('kind')!r} is not {res.kind!r}")
        else:
            causes.append(inv(where or "<root>", err.instance, err.message))
    if unknown:
        fields = ", ".join(f'unknown field "{u}"' for u in unknown)
        raise bad_request(f"strict decoding error: {fields}",
                          {"causes": [{"reason": "FieldValueInvalid", "message": "field not declared in schema",
                                       "field": u} for u in unknown]})
    if causes:
        raise invalid(res.kind, res.group, (obj.get("metadata") or {}).get("name", ""), causes)


# --------------------------------------------------------------------------- names & metadata

def name_causes(rule: str, name: str, field: str = "metadata.name") -> list[Cause]:
    """Check a name against the rule the apiserver uses for the kind."""
    if rule == "path":
        if name in (".", ".."):
            return [inv(field, name, f"may not be '{name}'")]
        bad = [c for c in ("/", "%") if c in name]
        return [inv(field, name, f"may not contain '{bad[0]}'")] if bad else []
    regex, msg, limit = {
        "label": (_LABEL, LABEL_MSG, 63),
        "dns1035": (_DNS1035, DNS1035_MSG, 63),
        "subdomain": (_SUBDOMAIN, SUBDOMAIN_MSG, 253),
        "cronjob": (_SUBDOMAIN, SUBDOMAIN_MSG, 52),
    }[rule]
    out: list[Cause] = []
    if len(name) > limit:
        out.append(inv(field, name, f"must be no more than {limit} characters"))
    if not re.fullmatch(regex, name):
        out.append(inv(field, name, msg))
    return out


def _qualified_name_causes(field: str, key: str) -> list[Cause]:
    prefix, _, name = key.rpartition("/")
    out: list[Cause] = []
    if prefix and (len(prefix) > 253 or not re.fullmatch(_SUBDOMAIN, prefix)):
        out.append(inv(field, key, "prefix part " + SUBDOMAIN_MSG))
    if not name or len(name) > 63 or not re.fullmatch(_QUALIFIED, name):
        out.append(inv(field, key, "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                       "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
                       f"'123-abc', regex used for validation is '{_QUALIFIED}') and be at most 63 characters"))
    return out


def labels_causes(field: str, labels: dict[str, Any] | None) -> list[Cause]:
    """Label keys are qualified names; values at most 63 chars of ``[A-Za-z0-9._-]``."""
    out: list[Cause] = []
    for key, value in (labels or {}).items():
        out += _qualified_name_causes(field, key)
        if not isinstance(value, str) or len(value) > 63 or (value and not re.fullmatch(_QUALIFIED, value)):
            out.append(inv(f"{field}", value, "a valid label must be an empty string or consist of alphanumeric "
                           "characters, '-', '_' or '.', and must start and end with an alphanumeric character, "
                           "and must be no more than 63 characters"))
    return out


def metadata_causes(meta: dict[str, Any], field: str = "metadata") -> list[Cause]:
    """Labels and annotations of any object or template."""
    out = labels_causes(f"{field}.labels", meta.get("labels"))
    annotations = meta.get("annotations") or {}
    for key in annotations:
        out += _qualified_name_causes(f"{field}.annotations", key)
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
        out.append((f"{field}.annotations", "Too long: must have at most 262144 bytes", "FieldValueTooLong"))
    return out


# --------------------------------------------------------------------------- pod spec

def _probe_causes(field: str, probe: dict[str, Any] | None) -> list[Cause]:
    if not probe:
        return []
    handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if probe.get(h) is not None]
    if not handlers:
        return [req(field, "must specify a handler type")]
    if len(handlers) > 1:
        return [forbidden(f"{field}.{handlers[1]}", "may not specify more than 1 handler type")]
    return []


def _resources_causes(field: str, resources: dict[str, Any] | None) -> list[Cause]:
    out: list[Cause] = []
    parsed: dict[str, dict[str, float]] = {}
    for section in ("limits", "requests"):
        for name, value in ((resources or {}).get(section) or {}).items():
            try:
                parsed.setdefault(section, {})[name] = parse_quantity(value)
            except ValueError as exc:
                out.append(inv(f"{field}.{section}[{name}]", value, str(exc)))
    for name, value in parsed.get("requests", {}).items():
        limit = parsed.get("limits", {}).get(name)
        if limit is not None and value > limit:
            raw = resources or {}
            out.append(inv(f"{field}.requests", raw["requests"][name],
                           f"must be less than or equal to {name} limit of {raw['limits'][name]}"))
    return out


def _container_causes(field: str, c: dict[str, Any], volumes: set[str], names: set[str]) -> list[Cause]:
    out: list[Cause] = []
    name = c.get("name", "")
    out += name_causes("label", name, f"{field}.name")
    if name in names:
        out.append((f"{field}.name", f"Duplicate value: {go_repr(name)}", "FieldValueDuplicate"))
    names.add(name)
    if not c.get("image", "").strip():
        out.append(req(f"{field}.image"))
    for i, port in enumerate(c.get("ports") or []):
        pf = f"{field}.ports[{i}]"
        if not 1 <= int(port.get("containerPort", 0)) <= 65535:
            out.append(inv(f"{pf}.containerPort", port.get("containerPort"), "must be between 1 and 65535, inclusive"))
        pname = port.get("name")
        if pname and (len(pname) > 15 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", pname)
                      or not re.search("[a-z]", pname)):
            out.append(inv(f"{pf}.name", pname, "must be no more than 15 characters and contain only lowercase "
                           "alphanumerics or '-' with at least one letter (IANA_SVC_NAME)"))
    for i, env in enumerate(c.get("env") or []):
        ef = f"{field}.env[{i}]"
        if not re.fullmatch(_ENV_NAME, env.get("name", "")):
            out.append(inv(f"{ef}.name", env.get("name", ""), "a valid environment variable name must consist of "
                           "alphabetic characters, digits, '_', '-', or '.', and must not start with a digit"))
        source = env.get("valueFrom")
        if source is not None:
            kinds = [k for k in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef",
                                 "fileKeyRef") if source.get(k)]
            if len(kinds) != 1:
                out.append(inv(f"{ef}.valueFrom", source, "may not have more than one field specified at a time"
                               if kinds else "must specify one of: `fieldRef`, `resourceFieldRef`, "
                               "`configMapKeyRef` or `secretKeyRef`"))
            if env.get("value"):
                out.append(inv(f"{ef}.valueFrom", "", "may not be specified when `value` is not empty"))
    seen_paths: set[str] = set()
    for i, mount in enumerate(c.get("volumeMounts") or []):
        mf = f"{field}.volumeMounts[{i}]"
        if mount.get("name") not in volumes:
            out.append((f"{mf}.name", f"Not found: {go_repr(mount.get('name'))}", "FieldValueNotFound"))
        path = mount.get("mountPath", "")
        if not path:
            out.append(req(f"{mf}.mountPath"))
        elif path in seen_paths:
            out.append(inv(f"{mf}.mountPath", path, "must be unique"))
        seen_paths.add(path)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        out += _probe_causes(f"{field}.{probe}", c.get(probe))
    out += _resources_causes(f"{field}.resources", c.get("resources"))
    return out


def pod_spec_causes(spec: dict[str, Any], field: str, restart_policies: list[str] | None = None) -> list[Cause]:
    """Rules for a PodSpec (pods and templates); ``restart_policies`` narrows allowed values."""
    out: list[Cause] = []
    volumes: set[str] = set()
    for i, vol in enumerate(spec.get("volumes") or []):
        vf = f"{field}.volumes[{i}]"
        out += name_causes("label", vol.get("name", ""), f"{vf}.name")
        if vol.get("name") in volumes:
            out.append((f"{vf}.name", f"Duplicate value: {go_repr(vol.get('name'))}", "FieldValueDuplicate"))
        volumes.add(vol.get("name", ""))
        sources = [k for k in vol if k != "name"]
        if not sources:
            out.append(req(vf, "must specify a volume type"))
        elif len(sources) > 1:
            out.append(forbidden(f"{vf}.{sources[1]}", "may not specify more than 1 volume type"))
    if not spec.get("containers"):
        out.append(req(f"{field}.containers"))
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            out += _container_causes(f"{field}.{group}[{i}]", c, volumes, names)
    policy = spec.get("restartPolicy", "Always")
    allowed = restart_policies or ["Always", "OnFailure", "Never"]
    if policy not in allowed:
        out.append(unsupported(f"{field}.restartPolicy", policy, allowed))
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and grace < 0:
        out.append(inv(f"{field}.terminationGracePeriodSeconds", grace, "must be greater than or equal to 0"))
    return out


def _template_causes(spec: dict[str, Any], field: str, policies: list[str] | None) -> list[Cause]:
    template = spec.get("template") or {}
    out = metadata_causes(template.get("metadata") or {}, f"{field}.template.metadata")
    out += pod_spec_causes(template.get("spec") or {}, f"{field}.template.spec", policies)
    return out


def _selector_causes(spec: dict[str, Any], field: str, required: bool = True) -> list[Cause]:
    from .selectors import from_label_selector, matches

    selector = spec.get("selector")
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return [req(f"{field}.selector")] if required else []
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    out = labels_causes(f"{field}.selector.matchLabels", selector.get("matchLabels"))
    if not matches(from_label_selector(selector), labels):
        out.append(inv(f"{field}.template.metadata.labels", labels, "`selector` does not match template `labels`"))
    return out


def _non_negative(spec: dict[str, Any], field: str, *names: str) -> list[Cause]:
    return [inv(f"{field}.{n}", spec[n], "must be greater than or equal to 0")
            for n in names if spec.get(n) is not None and spec[n] < 0]


# --------------------------------------------------------------------------- per kind

def _data_causes(obj: dict[str, Any], secret: bool) -> list[Cause]:
    out: list[Cause] = []
    size = 0
    data = obj.get("data") or {}
    binary = obj.get("binaryData") or {}
    for section, values in (("data", data), ("binaryData", binary)):
        for key, value in values.items():
            if len(key) > 253 or not re.fullmatch(_CONFIG_KEY, key):
                out.append(inv(f"{section}[{key}]", key, "a valid config key must consist of alphanumeric "
                               "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', "
                               f"regex used for validation is '{_CONFIG_KEY}')"))
            if section == "binaryData" or secret:
                try:
                    size += len(base64.b64decode(value or "", validate=True))
                except (binascii.Error, ValueError):
                    out.append(inv(f"{section}[{key}]", "<value omitted>", "illegal base64 data"))
            else:
                size += len(str(value).encode())
            if section == "binaryData" and key in data:
                out.append(inv(f"binaryData[{key}]", key, "duplicate of key present in data"))
    if size > MAX_CONFIG_SIZE:
        out.append(("data", f"Too long: must have at most {MAX_CONFIG_SIZE} bytes", "FieldValueTooLong"))
    return out


def _cronjob_causes(spec: dict[str, Any]) -> list[Cause]:
    out: list[Cause] = []
    schedule = spec.get("schedule", "")
    try:
        cron.parse(schedule)
    except cron.CronError as exc:
        out.append(inv("spec.schedule", schedule, str(exc)))
    tz = spec.get("timeZone")
    if tz is not None:
        try:
            if not tz or tz.startswith(("/", ".")) or ".." in tz:
                raise zoneinfo.ZoneInfoNotFoundError(tz)
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            out.append(inv("spec.timeZone", tz, f"unknown time zone {tz}"))
    policy = spec.get("concurrencyPolicy", "Allow")
    if policy not in ("Allow", "Forbid", "Replace"):
        out.append(unsupported("spec.concurrencyPolicy", policy, ["Allow", "Forbid", "Replace"]))
    out += _non_negative(spec, "spec", "startingDeadlineSeconds", "successfulJobsHistoryLimit",
                         "failedJobsHistoryLimit")
    job_spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    out += metadata_causes((spec.get("jobTemplate") or {}).get("metadata") or {}, "spec.jobTemplate.metadata")
    out += _template_causes(job_spec, "spec.jobTemplate.spec", ["OnFailure", "Never"])
    return out


def _service_causes(spec: dict[str, Any]) -> list[Cause]:
    out: list[Cause] = []
    stype = spec.get("type", "ClusterIP")
    if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        out.append(unsupported("spec.type", stype, ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]))
    ports = spec.get("ports") or []
    if not ports and stype != "ExternalName" and spec.get("clusterIP") != "None":
        out.append(req("spec.ports"))
    seen: set[str] = set()
    for i, port in enumerate(ports):
        pf = f"spec.ports[{i}]"
        if len(ports) > 1 and not port.get("name"):
            out.append(req(f"{pf}.name"))
        if port.get("name") in seen:
            out.append((f"{pf}.name", f"Duplicate value: {go_repr(port.get('name'))}", "FieldValueDuplicate"))
        seen.add(port.get("name"))
        if not 1 <= int(port.get("port", 0)) <= 65535:
            out.append(inv(f"{pf}.port", port.get("port"), "must be between 1 and 65535, inclusive"))
        target = port.get("targetPort")
        if isinstance(target, int) and not 1 <= target <= 65535:
            out.append(inv(f"{pf}.targetPort", target, "must be between 1 and 65535, inclusive"))
    return out


def object_causes(res: Resource, obj: dict[str, Any]) -> list[Cause]:
    """Semantic validation of a (defaulted) object of kind ``res``."""
    meta = obj.get("metadata") or {}
    out = [req("metadata.name", "name or generateName is required")] if not meta.get("name") else \
        name_causes(res.name_rule, meta["name"])
    out += metadata_causes(meta)
    spec = obj.get("spec") or {}
    kind = res.kind
    if kind == "Pod":
        out += pod_spec_causes(spec, "spec")
    elif kind in ("Deployment", "ReplicaSet"):
        out += _selector_causes(spec, "spec") + _template_causes(spec, "spec", ["Always"])
        out += _non_negative(spec, "spec", "replicas", "minReadySeconds", "revisionHistoryLimit")
        pds = spec.get("progressDeadlineSeconds")
        if pds is not None and pds <= spec.get("minReadySeconds", 0):
            out.append(inv("spec.progressDeadlineSeconds", pds, "must be greater than minReadySeconds"))
    elif kind == "Job":
        out += _selector_causes(spec, "spec") + _template_causes(spec, "spec", ["OnFailure", "Never"])
        out += _non_negative(spec, "spec", "parallelism", "completions", "backoffLimit")
        ads = spec.get("activeDeadlineSeconds")
        if ads is not None and ads <= 0:
            out.append(inv("spec.activeDeadlineSeconds", ads, "must be greater than 0"))
    elif kind == "CronJob":
        out += _cronjob_causes(spec)
    elif kind in ("ConfigMap", "Secret"):
        out += _data_causes(obj, secret=kind == "Secret")
    elif kind == "Service":
        out += _service_causes(spec)
    elif kind == "PersistentVolumeClaim":
        if not spec.get("accessModes"):
            out.append(req("spec.accessModes"))
        if not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
            out.append(req("spec.resources[storage]"))
    elif kind in ("RoleBinding", "ClusterRoleBinding"):
        ref = obj.get("roleRef") or {}
        allowed = ["Role", "ClusterRole"] if kind == "RoleBinding" else ["ClusterRole"]
        if ref.get("kind") not in allowed:
            out.append(unsupported("roleRef.kind", ref.get("kind"), allowed))
        for i, subject in enumerate(obj.get("subjects") or []):
            if subject.get("kind") not in ("User", "Group", "ServiceAccount"):
                out.append(unsupported(f"subjects[{i}].kind", subject.get("kind"), ["Group", "ServiceAccount", "User"]))
    return out


def _changed(old: dict[str, Any], new: dict[str, Any], *path: str) -> bool:
    def dig(obj: Any) -> Any:
        for p in path:
            obj = obj.get(p) if isinstance(obj, dict) else None
        return obj
    return bool(dig(old) != dig(new))


def _pod_spec_mutable_view(spec: dict[str, Any]) -> dict[str, Any]:
    view = json.loads(json.dumps(spec))
    for group in ("containers", "initContainers"):
        for c in view.get(group) or []:
            c.pop("image", None)
    for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "nodeName"):
        view.pop(key, None)
    return view


def update_causes(res: Resource, old: dict[str, Any], new: dict[str, Any]) -> list[Cause]:
    """Immutability rules checked on update (replace or patch)."""
    out: list[Cause] = []
    kind = res.kind
    if kind == "Job":
        for name in ("selector", "template", "completionMode"):
            if _changed(old, new, "spec", name):
                out.append(inv(f"spec.{name}", (new.get("spec") or {}).get(name), "field is immutable"))
        if _changed(old, new, "spec", "completions") and (new.get("spec") or {}).get("completionMode") != "Indexed":
            out.append(inv("spec.completions", new["spec"].get("completions"), "field is immutable"))
    elif kind in ("Deployment", "ReplicaSet"):
        if _changed(old, new, "spec", "selector"):
            out.append(inv("spec.selector", new["spec"].get("selector"), "field is immutable"))
    elif kind in ("ConfigMap", "Secret"):
        if old.get("immutable"):
            if not new.get("immutable"):
                out.append(forbidden("immutable", "field is immutable when `immutable` is set"))
            for section in ("data", "binaryData"):
                if (old.get(section) or {}) != (new.get(section) or {}):
                    out.append(forbidden(section, "field is immutable when `immutable` is set"))
        if kind == "Secret" and old.get("type") != new.get("type"):
            out.append(inv("type", new.get("type"), "field is immutable"))
    elif kind == "Pod":
        if _pod_spec_mutable_view(old.get("spec") or {}) != _pod_spec_mutable_view(new.get("spec") or {}):
            out.append(forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,"
                                 "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                                 "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                                 "(allow it to be set to 1 if it was previously negative)"))
    elif kind in ("RoleBinding", "ClusterRoleBinding"):
        if old.get("roleRef") != new.get("roleRef"):
            out.append(inv("roleRef", new.get("roleRef"), "cannot change roleRef"))
    elif kind == "Service":
        if (old.get("spec") or {}).get("clusterIP") != (new.get("spec") or {}).get("clusterIP"):
            out.append(inv("spec.clusterIPs[0]", new["spec"].get("clusterIP"), "may not change once set"))
    elif kind == "PersistentVolumeClaim":
        def view(o: dict[str, Any]) -> dict[str, Any]:
            spec = dict(o.get("spec") or {})
            spec.pop("resources", None)
            spec.pop("volumeName", None)
            return spec
        if view(old) != view(new):
            out.append(forbidden("spec", "spec is immutable after creation except resources.requests and "
                                 "volumeAttributesClassName for bound claims"))
    return out


def validate(res: Resource, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    """Raise 422 Invalid if a (defaulted) object breaks an apiserver rule."""
    causes = object_causes(res, obj)
    if old is not None:
        causes += update_causes(res, old, obj)
    if causes:
        raise invalid(res.kind, res.group, (obj.get("metadata") or {}).get("name", ""), causes)


def warm_up() -> None:
    """Compile the schemas of the common kinds up front so the first requests are not slow."""
    from .resources import RESOURCES

    for res in RESOURCES:
        try:
            _validator(res.api_version, res.kind, True)
        except (OSError, ApiError, KeyError, kv_utils.SchemaNotFoundError):
            continue
