"""Small helpers shared by the API layer, controllers and kubelet."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from typing import Any

# The alphabet Kubernetes uses for generated name suffixes and template hashes (no vowels).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def utcnow() -> dt.datetime:
    """Timezone-aware now (UTC)."""
    return dt.datetime.now(dt.timezone.utc)


def iso(when: dt.datetime | None = None) -> str:
    """RFC 3339 with second precision, the apiserver's ``metav1.Time`` format."""
    return (when or utcnow()).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_nano(when: dt.datetime | None = None) -> str:
    """RFC 3339 with nanoseconds, the kubelet's log timestamp format."""
    when = (when or utcnow()).astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}000Z"


def parse_time(text: str | None) -> dt.datetime | None:
    """Parse an RFC 3339 timestamp (``Z`` or offset, optional fraction)."""
    if not text:
        return None
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        tail = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tail}"
    return dt.datetime.fromisoformat(text)


def random_suffix(length: int = 5) -> str:
    """A generateName-style suffix (``web-7c9xz``)."""
    return "".join(random.choice(SAFE_ALPHABET) for _ in range(length))


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    """The ``status.conditions`` entry of a type, or None."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


def set_condition(status: dict[str, Any], ctype: str, value: str, reason: str = "", message: str = "",
                  *, probe_time: bool = False, update_time: bool = False, touch: bool = False) -> None:
    """Set a condition, keeping lastTransitionTime unless the status flips (apiserver convention).

    ``update_time`` adds ``lastUpdateTime`` (Deployments); ``touch`` refreshes it even if unchanged.
    """
    conditions = status.setdefault("conditions", [])
    now = iso()
    for cond in conditions:
        if cond["type"] == ctype:
            changed = cond["status"] != value or cond.get("reason") != reason or cond.get("message") != message
            if cond["status"] != value:
                cond["lastTransitionTime"] = now
            if update_time and (changed or touch):
                cond["lastUpdateTime"] = now
            cond.update(status=value, reason=reason, message=message)
            if probe_time:
                cond["lastProbeTime"] = now
            return
    new: dict[str, Any] = {"type": ctype, "status": value}
    if probe_time:
        new["lastProbeTime"] = now
    if update_time:
        new["lastUpdateTime"] = now
    new.update(lastTransitionTime=now, reason=reason, message=message)
    if not reason:
        new.pop("reason")
    if not message:
        new.pop("message")
    conditions.append(new)


def owner_ref(obj: dict[str, Any], controller: bool = True) -> dict[str, Any]:
    """An ownerReference to ``obj`` as controllers set it."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def controller_uid(obj: dict[str, Any]) -> str | None:
    """uid of the controlling owner, if any."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref["uid"])
    return None


def by_controller(objs: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group objects by the uid of their controlling owner; objects without one are left out."""
    owned: dict[str, list[dict[str, Any]]] = {}
    for obj in objs:
        uid = controller_uid(obj)
        if uid:
            owned.setdefault(uid, []).append(obj)
    return owned
