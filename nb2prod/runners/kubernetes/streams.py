"""Long-lived reads from the API server: watches and followed pod logs.

Both run in threads and must outlive API hiccups: a `Watcher` lists, then
watches from the list's resourceVersion and re-lists when the version
expires; a `LogFollower` reconnects after a dropped stream without losing or
repeating lines.  The deploy's Job executor and roll-outs are built on these
instead of sleep loops.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from nb2prod import k8s_retry
from nb2prod.manifests import Obj
from nb2prod.runners.kubernetes.cluster import Kube

WATCH_SECONDS = 60


def response_lines(resp: Any) -> Iterator[str]:
    """Lines of a streamed response, the last one even without a trailing newline."""
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk if isinstance(chunk, bytes) else str(chunk).encode()
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", errors="replace")
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


def close_response(resp: Any) -> None:
    for what in ("close", "release_conn"):
        try:
            getattr(resp, what)()
        except Exception:  # noqa: BLE001, S110 - best effort on a dead connection
            pass


class Watcher(threading.Thread):
    """List, then watch from the list's resourceVersion; re-list when the version expires.

    Every object seen is passed to `sink(type, obj)` (type SYNC for listed
    ones).  Transient errors are retried with backoff for as long as the owner
    wants the watch; the owner stops it with `stop()`.
    """

    def __init__(self, list_fn: Callable[..., Any], namespace: str, sink: Callable[[str, Obj], None],
                 *, label_selector: str | None = None, field_selector: str | None = None) -> None:
        super().__init__(daemon=True, name="nb2prod-watch")
        self.list_fn = list_fn
        self.namespace = namespace
        self.sink = sink
        self.selectors = {k: v for k, v in (("label_selector", label_selector),
                                            ("field_selector", field_selector)) if v}
        self.stopped = threading.Event()
        self.resp: Any = None
        self.failure: str | None = None

    def stop(self) -> None:
        self.stopped.set()
        resp = self.resp
        if resp is not None:
            import socket

            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def run(self) -> None:
        version: str | None = None
        errors = 0
        while not self.stopped.is_set():
            try:
                if version is None:
                    resp = self.list_fn(self.namespace, _preload_content=False,
                                        _request_timeout=(10, 60), **self.selectors)
                    data = json.loads(resp.data)
                    for item in data.get("items") or []:
                        self.sink("SYNC", item)
                    version = data["metadata"]["resourceVersion"]
                self.resp = self.list_fn(
                    self.namespace, watch=True, resource_version=version,
                    timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True,
                    _preload_content=False, _request_timeout=(10, WATCH_SECONDS + 15),
                    **self.selectors)
                try:
                    for line in response_lines(self.resp):
                        if self.stopped.is_set():
                            return
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            if obj.get("code") == 410:
                                version = None  # expired: list again
                                break
                            raise RuntimeError(f"watch error: {obj.get('message')}")
                        version = obj.get("metadata", {}).get("resourceVersion") or version
                        if event.get("type") != "BOOKMARK":
                            self.sink(event["type"], obj)
                finally:
                    resp, self.resp = self.resp, None
                    close_response(resp)
                errors = 0
            except Exception as exc:  # noqa: BLE001 - a watch must outlive API hiccups
                if self.stopped.is_set():
                    return
                if k8s_retry.status_of(exc) == 410:
                    version = None
                    continue
                errors += 1
                self.failure = k8s_retry.message_of(exc)
                self.stopped.wait(min(0.2 * 2 ** errors, 5.0))


class LogFollower(threading.Thread):
    """Follow one container's log through the API server, each line prefixed.

    Reconnects after a dropped stream and skips the lines it already printed,
    so a flaky connection neither loses nor repeats output.
    """

    def __init__(self, kube: Kube, namespace: str, pod: str, container: str, prefix: str,
                 sink: Callable[[str], None]) -> None:
        super().__init__(daemon=True, name=f"nb2prod-log-{pod}")
        self.kube, self.namespace, self.pod, self.container = kube, namespace, pod, container
        self.prefix = prefix
        self.sink = sink
        self.lines: list[str] = []

    def run(self) -> None:
        attempts = 0
        while attempts < 30:
            try:
                resp = self.kube.core.read_namespaced_pod_log(
                    self.pod, self.namespace, container=self.container, follow=True,
                    _preload_content=False, _request_timeout=(10, 600))
                try:
                    for index, line in enumerate(response_lines(resp)):
                        if index < len(self.lines):
                            continue
                        self.lines.append(line)
                        self.sink(f"{self.prefix}{line}")
                finally:
                    close_response(resp)
                return
            except Exception as exc:  # noqa: BLE001 - logs are best effort
                status = k8s_retry.status_of(exc)
                if status == 404:
                    return
                attempts += 1
                time.sleep(0.5 if status == 400 else min(0.2 * 2 ** attempts, 3.0))

