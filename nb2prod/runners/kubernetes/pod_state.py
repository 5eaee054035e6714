"""Reading state off Job and pod objects: conditions, containers, unschedulable pods.

Pure functions of the objects the watches deliver (the clock aside, for
`PendingPods`' grace period), shared by the Job executor, roll-outs, `status`
and `nb2prod runs --store pvc://`.  Why a pod cannot start is worded by
`nb2prod.roller` (`stuck_reason`), which the in-cluster roller uses too.
"""

from __future__ import annotations

import re
import time

from nb2prod.errors import UserError
from nb2prod.manifests import Obj
from nb2prod.pipeline import Pipeline
from nb2prod.roller import stuck_reason
from nb2prod.settings import PROJECT, check_value


def _conditions(obj: Obj) -> dict[str, Obj]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def condition_true(obj: Obj, kind: str) -> Obj | None:
    cond = _conditions(obj).get(kind)
    return cond if cond is not None and cond.get("status") == "True" else None


class PendingPods:
    """Unschedulable pods, given time to be scheduled before their stage fails.

    The other stuck reasons (image pulls, missing Secrets) do not resolve by
    themselves; ``PodScheduled=False, reason=Unschedulable`` often does: a
    cluster autoscaler adds a node, or a parallel stage finishes and frees the
    CPU a small cluster lacked.  A pod still unschedulable after ``grace``
    seconds (``[kubernetes] UNSCHEDULABLE_GRACE_SECONDS``) fails its stage with
    the scheduler's message; 0 fails it at once.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.since: dict[str, tuple[float, str, str]] = {}  # pod -> (first seen, reason, owner)

    def check(self, pod: Obj, owner: str = "") -> str | None:
        """Why the pod's stage should fail now; None while it is fine or still waiting."""
        name = pod["metadata"]["name"]
        reason = stuck_reason(pod)
        if reason is None or self.grace <= 0 or not reason.startswith("Unschedulable") or \
                hopeless(reason):
            self.since.pop(name, None)
            return reason
        first = self.since.get(name, (time.monotonic(), reason, owner))[0]
        self.since[name] = (first, reason, owner)
        return self._late(first, reason)

    def waiting(self, name: str) -> bool:
        return name in self.since

    def overdue(self) -> list[tuple[str, str, str]]:
        """(pod, owner, reason) of every pod whose grace is over; they are forgotten."""
        found = []
        for name, (first, reason, owner) in list(self.since.items()):
            late = self._late(first, reason)
            if late is not None:
                del self.since[name]
                found.append((name, owner, late))
        return found

    def forget(self, owner: str) -> None:
        for name in [n for n, v in self.since.items() if v[2] == owner]:
            del self.since[name]

    def _late(self, first: float, reason: str) -> str | None:
        waited = time.monotonic() - first
        return f"{reason} (for {waited:.0f}s)" if waited >= self.grace else None


#: Scheduler messages no new or freed node can fix (a claim that does not exist).
_HOPELESS = re.compile(r'persistentvolumeclaim "[^"]*" not found')


def hopeless(reason: str) -> bool:
    """An Unschedulable reason that waiting will not resolve."""
    return bool(_HOPELESS.search(reason))


def unschedulable_grace(pipeline: Pipeline) -> float:
    """`[kubernetes] UNSCHEDULABLE_GRACE_SECONDS` of nb2prod.ini (default 120), checked."""
    key = ("kubernetes", "UNSCHEDULABLE_GRACE_SECONDS")
    raw = pipeline.value(*key, "120")
    bad = check_value(PROJECT[key], raw, str(pipeline.root / "nb2prod.ini"), *key)
    if bad:
        raise UserError(bad)
    return float(raw)


def terminated_states(pod: Obj) -> list[Obj]:
    status = pod.get("status") or {}
    found = []
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            found.append(term)
    return found


def has_started(pod: Obj) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False

