"""Label and field selectors, with the apiserver's syntax and error behaviour.

Both string selectors from query parameters (``app=web,tier notin (db)``) and
``LabelSelector`` objects from specs (``matchLabels`` / ``matchExpressions``)
are supported, because clients use the first and controllers the second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, bad_request

_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<val>\([^)]*\)|[-A-Za-z0-9_.]*))?\s*$"
)


@dataclass(frozen=True)
class Requirement:
    """One term of a selector: ``key op values``."""

    key: str
    op: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether ``labels`` satisfy this term (NotIn matches absent keys, as upstream)."""
        if self.op == "Exists":
            return self.key in labels
        if self.op == "DoesNotExist":
            return self.key not in labels
        if self.op == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.op == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        raise ValueError(self.op)


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside ``( ... )`` value sets."""
    terms, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    return terms


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse a query-string label selector; raise 400 like the apiserver on bad syntax."""
    if not text or not text.strip():
        return []
    reqs: list[Requirement] = []
    for term in _split_terms(text):
        m = _TERM.match(term)
        if not m or (m.group("neg") and m.group("op")):
            raise bad_request(f"unable to parse requirement: found '{term.strip()}', expected: identifier")
        key, op, val = m.group("key"), (m.group("op") or "").strip(), m.group("val")
        if not op:
            reqs.append(Requirement(key, "DoesNotExist" if m.group("neg") else "Exists"))
        elif op in ("=", "=="):
            reqs.append(Requirement(key, "In", (val or "",)))
        elif op == "!=":
            reqs.append(Requirement(key, "NotIn", (val or "",)))
        else:
            if not val or not val.startswith("("):
                raise bad_request(f"unable to parse requirement: found '{term.strip()}', expected: '('")
            values = tuple(v.strip() for v in val[1:-1].split(",") if v.strip())
            reqs.append(Requirement(key, "In" if op == "in" else "NotIn", values))
    return reqs


def from_label_selector(selector: dict[str, Any] | None) -> list[Requirement]:
    """Requirements of a ``LabelSelector`` object (matchLabels + matchExpressions)."""
    if not selector:
        return []
    reqs = [Requirement(k, "In", (v,)) for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        reqs.append(Requirement(expr["key"], expr["operator"], tuple(expr.get("values") or ())))
    return reqs


def matches(reqs: list[Requirement], labels: dict[str, str] | None) -> bool:
    """Whether every requirement holds for ``labels``."""
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)


def selector_string(selector: dict[str, Any] | None) -> str:
    """Render a LabelSelector as the string form (``Scale.status.selector`` uses it)."""
    parts: list[str] = []
    for r in from_label_selector(selector):
        if r.op == "In" and len(r.values) == 1:
            parts.append(f"{r.key}={r.values[0]}")
        elif r.op == "In":
            parts.append(f"{r.key} in ({','.join(r.values)})")
        elif r.op == "NotIn":
            parts.append(f"{r.key} notin ({','.join(r.values)})")
        elif r.op == "Exists":
            parts.append(r.key)
        else:
            parts.append(f"!{r.key}")
    return ",".join(parts)


# Field selectors the real apiserver supports per resource (beyond metadata.name/namespace).
FIELD_LABELS: dict[str, set[str]] = {
    "pods": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "status.phase", "status.podIP", "status.nominatedNodeName", "spec.hostNetwork"},
    "events": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
               "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
               "reason", "reportingComponent", "source", "type"},
    "secrets": {"type"},
    "namespaces": {"status.phase"},
    "jobs": {"status.successful"},
    "nodes": {"spec.unschedulable"},
    "replicasets": {"status.replicas"},
}


@dataclass(frozen=True)
class FieldRequirement:
    """One ``path=value`` / ``path!=value`` term of a field selector."""

    path: str
    value: str
    negate: bool

    def matches(self, obj: dict[str, Any]) -> bool:
        """Compare the string form of the field, as the apiserver's field sets do."""
        cur: Any = obj
        for part in self.path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if isinstance(cur, bool):
            actual = "true" if cur else "false"
        else:
            actual = "" if cur is None else str(cur)
        return (actual == self.value) != self.negate


def parse_field_selector(text: str | None, plural: str) -> list[FieldRequirement]:
    """Parse a field selector; unsupported fields are a 400 as on a real cluster."""
    if not text or not text.strip():
        return []
    allowed = {"metadata.name", "metadata.namespace"} | FIELD_LABELS.get(plural, set())
    reqs: list[FieldRequirement] = []
    for term in text.split(","):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        if m.group(1) not in allowed:
            raise ApiError(400, "BadRequest", f'field label not supported: {m.group(1)}')
        reqs.append(FieldRequirement(m.group(1), m.group(3), m.group(2) == "!="))
    return reqs


def fields_match(reqs: list[FieldRequirement], obj: dict[str, Any]) -> bool:
    """Whether ``obj`` satisfies every field requirement."""
    return all(r.matches(obj) for r in reqs)
