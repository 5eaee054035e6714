"""In-memory object storage with a global resourceVersion and a watch event log.

Like etcd behind the apiserver: every write gets the next global
resourceVersion, every change is appended to an event history so a watch can
resume from any recent resourceVersion (older ones get 410 Gone), and waiting
readers (watches, controllers) are woken on each write.

Stored objects are never mutated in place: writers store a new dict, so event
snapshots stay valid and readers that only look (``peek``) need no copy.
"""

from __future__ import annotations

import bisect
import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Event:
    """One change: the object after it (for DELETED: the last state) and before it."""

    rv: int
    type: str
    plural: str
    namespace: str
    obj: Obj
    old: Obj | None


class Store:
    """Thread-safe object storage keyed by (resource plural, namespace, name)."""

    def __init__(self, history: int = 100_000) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._rv = 1000
        self._history = history
        self._events: list[Event] = []
        self._trimmed = False
        self._listeners: list[Callable[[], None]] = []
        self.closed = False

    # ------------------------------------------------------------------ reads
    @property
    def resource_version(self) -> int:
        """The latest resourceVersion handed out."""
        with self.lock:
            return self._rv

    def peek(self, plural: str, namespace: str, name: str) -> Obj | None:
        """The stored object itself; callers must not mutate it."""
        with self.lock:
            return self._objects.get(plural, {}).get((namespace, name))

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        """A private copy of the stored object, or None."""
        obj = self.peek(plural, namespace, name)
        return copy.deepcopy(obj) if obj is not None else None

    def scan(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """Stored objects (not copies) of a resource, sorted by namespace/name like etcd keys."""
        with self.lock:
            items = self._objects.get(plural, {})
            keys = sorted(k for k in items if namespace is None or k[0] == namespace)
            return [items[k] for k in keys]

    def all_objects(self) -> Iterator[tuple[str, Obj]]:
        """(plural, stored object) for everything; used by the garbage collector."""
        with self.lock:
            snapshot = [(p, o) for p, objs in self._objects.items() for o in objs.values()]
        yield from snapshot

    # ------------------------------------------------------------------ writes
    def write(self, plural: str, obj: Obj) -> Obj:
        """Store ``obj`` (taking ownership) under a new resourceVersion; returns a copy."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        with self.lock:
            old = self._objects.setdefault(plural, {}).get(key)
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[plural][key] = obj
            self._record(Event(self._rv, "MODIFIED" if old else "ADDED", plural, key[0], obj, old))
            self._notify()
            return copy.deepcopy(obj)

    def remove(self, plural: str, namespace: str, name: str) -> Obj | None:
        """Delete an object; the DELETED event carries a new resourceVersion, as the apiserver's does."""
        with self.lock:
            old = self._objects.get(plural, {}).pop((namespace, name), None)
            if old is None:
                return None
            self._rv += 1
            final = dict(old, metadata=dict(old["metadata"], resourceVersion=str(self._rv)))
            self._record(Event(self._rv, "DELETED", plural, namespace, final, old))
            self._notify()
            return copy.deepcopy(final)

    def mutate(self, plural: str, namespace: str, name: str, fn: Callable[[Obj], None]) -> Obj | None:
        """Atomically apply ``fn`` to a copy; store it only if it changed. None if absent."""
        with self.lock:
            current = self.peek(plural, namespace, name)
            if current is None:
                return None
            new = copy.deepcopy(current)
            fn(new)
            if new == current:
                return copy.deepcopy(current)
            return self.write(plural, new)

    # ------------------------------------------------------------------ watching
    def _record(self, event: Event) -> None:
        self._events.append(event)
        if len(self._events) > 2 * self._history:  # compaction, like etcd's
            del self._events[: len(self._events) - self._history]
            self._trimmed = True

    def events_after(self, rv: int) -> list[Event]:
        """Events with resourceVersion > rv (caller checks :meth:`too_old` first)."""
        with self.lock:
            start = bisect.bisect_right(self._events, rv, key=lambda e: e.rv)
            return self._events[start:]

    def too_old(self, rv: int) -> bool:
        """Whether events after ``rv`` were already dropped from the history (watch gets 410 Gone)."""
        with self.lock:
            return self._trimmed and bool(self._events) and self._events[0].rv > rv + 1

    def wait(self, after_rv: int, timeout: float) -> bool:
        """Block until something newer than ``after_rv`` is written (or close/timeout)."""
        with self.changed:
            if self._rv > after_rv or self.closed:
                return True
            self.changed.wait(timeout)
            return self._rv > after_rv

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (cheaply, under the lock) after every write; controllers use it to wake up."""
        self._listeners.append(fn)

    def close(self) -> None:
        """Wake every waiter so streaming requests end at shutdown."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def _notify(self) -> None:
        self.changed.notify_all()
        for fn in self._listeners:
            fn()
