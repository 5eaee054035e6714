"""The HTTP front of the stand-in: routing, streaming watches and logs, proxying.

Speaks what the official client expects from kube-apiserver: JSON bodies,
``Status`` errors, discovery documents, chunked watch streams of
``{"type": ..., "object": ...}`` lines, chunked ``follow`` logs, and the
``services/NAME:PORT/proxy/...`` and ``pods/NAME:PORT/proxy/...`` paths,
over plain HTTP and (:class:`StandInHTTPSServer`) TLS. Every request is
authenticated and authorized (:mod:`tests.kube.auth`) first, then logged.
Fault injection happens here, before a request reaches the API logic, so a
test can make "the next N patches of deployments" fail exactly as a flaky
apiserver would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import select
import socket
import ssl
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from . import resources
from .auth import Attributes, Auth, UserInfo
from .errors import (
    ApiError,
    bad_request,
    gone,
    injected,
    method_not_allowed,
    not_found,
    service_unavailable,
)
from .resources import Resource
from .selectors import (
    fields_match,
    from_label_selector,
    matches,
    parse_field_selector,
    parse_label_selector,
)
from .store import Obj
from .util import iso, utcnow

if TYPE_CHECKING:
    from .api import Api
    from .kubelet import Kubelet

VERSION_INFO = {
    "major": "1", "minor": "30", "gitVersion": "v1.30.0-standin", "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean", "buildDate": "2024-04-17T00:00:00Z", "goVersion": "go1.22.2", "compiler": "gc",
    "platform": "linux/amd64",
}
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "host", "authorization"}


@dataclass
class Injection:
    """Make the next ``remaining`` matching requests fail with ``status``."""

    verb: str | None
    resource: str | None
    status: int
    remaining: int
    namespace: str | None = None
    name: str | None = None
    message: str | None = None


@dataclass
class RequestRecord:
    """One request as the stand-in saw it (tests assert on these, e.g. no write on dry run)."""

    method: str
    verb: str
    resource: str
    namespace: str | None
    name: str | None
    code: int = 0
    dry_run: bool = False
    user: str = ""  # the authenticated user ("" when authentication failed)


@dataclass
class Faults:
    """Pending injected API errors and the request log."""

    injections: list[Injection] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, rec: RequestRecord) -> None:
        """Append a request to the request log."""
        with self.lock:
            self.requests.append(rec)

    def take(self, rec: RequestRecord) -> ApiError | None:
        """Consume a matching injection, if any, and return its error."""
        with self.lock:
            for inj in self.injections:
                if inj.remaining <= 0:
                    continue
                if inj.verb not in (None, rec.verb):
                    continue
                if inj.resource not in (None, rec.resource):
                    continue
                if inj.namespace not in (None, rec.namespace) or inj.name not in (None, rec.name):
                    continue
                inj.remaining -= 1
                return injected(inj.status, inj.message)
        return None


class StandInHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server carrying references to the API logic and kubelet."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: Api, kubelet: Kubelet, faults: Faults, auth: Auth) -> None:
        super().__init__(address, Handler)
        self.api = api
        self.kubelet = kubelet
        self.faults = faults
        self.auth = auth


class StandInHTTPSServer(StandInHTTPServer):
    """The same API over TLS (the in-cluster endpoint); the handshake runs in the request's thread."""

    def __init__(self, address: tuple[str, int], api: Api, kubelet: Kubelet, faults: Faults, auth: Auth,
                 context: ssl.SSLContext) -> None:
        super().__init__(address, api, kubelet, faults, auth)
        self.ssl_context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake (so a slow client cannot block accepting), then the HTTP exchange."""
        try:
            request.settimeout(10)
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except OSError:  # includes ssl.SSLError: a client that does not trust us, or plain HTTP
            return
        try:
            tls.settimeout(None)
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls.close()


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return (query.get(name) or [""])[-1].lower() in ("true", "1")


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _int(query: dict[str, list[str]], name: str) -> int | None:
    value = _one(query, name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise bad_request(f"invalid value for {name}: {value!r}") from exc


@dataclass
class Route:
    """A parsed resource URL."""

    res: Resource
    namespace: str | None
    name: str | None
    subresource: str | None
    rest: str  # path after /proxy


def parse_route(segments: list[str]) -> Route | None:
    """Map path segments to a resource route, or None if the URL is not a resource URL."""
    if segments[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", segments[2:]
    elif len(segments) >= 3 and segments[0] == "apis":
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        return None
    if not rest:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    res = resources.lookup(group, version, rest[0])
    if res is None:
        raise not_found(rest[0], group, "")
    if namespace is not None and not res.namespaced:
        raise not_found(rest[0], group, "")
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in res.subresources:
        raise not_found(f"{res.plural}/{sub}", group, name or "")
    tail = "/".join(quote(part, safe=":@!$&'()*+,;=-._~") for part in rest[3:])
    return Route(res, namespace, name, sub, "/" + tail)


class Handler(BaseHTTPRequestHandler):
    """One HTTP request; methods map onto :class:`tests.kube.api.Api`."""

    protocol_version = "HTTP/1.1"
    server: StandInHTTPServer
    status_code = 0
    current: RequestRecord | None = None  # the logged request being answered

    def send_response(self, code: int, message: str | None = None) -> None:
        """Send the status line; the request log gets the code before the client sees it."""
        self.status_code = code
        if self.current is not None:
            self.current.code = code
        super().send_response(code, message)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; tests assert on ``Faults.requests`` instead."""

    def do_GET(self) -> None:
        """Dispatch GET."""
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        """Dispatch HEAD."""
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        """Dispatch POST."""
        self._dispatch("POST")

    def do_PUT(self) -> None:
        """Dispatch PUT."""
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        """Dispatch PATCH."""
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        """Dispatch DELETE."""
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing
    def _send(self, code: int, body: bytes, ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.status_code = code
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), headers=headers)

    def _start_chunked(self, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _peer_gone(self) -> bool:
        """Whether the client hung up (so an idle watch/follow stream can end instead of lingering)."""
        conn = self.connection
        try:
            if isinstance(conn, ssl.SSLSocket):
                if conn.pending():
                    return False
                readable, _, _ = select.select([conn], [], [], 0)
                if not readable:
                    return False
                timeout = conn.gettimeout()
                conn.setblocking(False)
                try:
                    return conn.recv(1) == b""  # TLS cannot peek; a streaming client sends nothing anyway
                except ssl.SSLWantReadError:
                    return False
                finally:
                    conn.settimeout(timeout)
            readable, _, _ = select.select([conn], [], [], 0)
            return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self, raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"the body of the request could not be decoded as JSON: {exc}") from exc

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, method: str) -> None:
        raw = self._body()
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        segments = [unquote(s) for s in url.path.split("/") if s]
        record: RequestRecord | None = None
        self.current = None
        try:
            user = self._authenticate(method, segments, query)
            route = parse_route(segments)
            if route is None:
                path = "/" + "/".join(segments)
                self.server.auth.authorize(user, Attributes(method.lower(), resource_request=False, path=path))
                self._non_resource(method, segments)
                return
            record = self._record(method, route, query, user.name)
            self.server.faults.log(record)
            self.current = record
            self.server.auth.authorize(user, self._attributes(record, route, query))
            error = self.server.faults.take(record)
            if error is not None:
                raise error
            self._resource(method, route, query, raw)
        except ApiError as exc:
            self._json(exc.code, exc.status(), exc.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - an apiserver answers 500, it does not crash
            traceback.print_exc()
            self._json(500, ApiError(500, "InternalError", f"Internal error occurred: {exc!r}").status())

    def _authenticate(self, method: str, segments: list[str], query: dict[str, list[str]]) -> UserInfo:
        """The request's user; a rejected token is logged (user "") and answered 401 before anything else."""
        try:
            return self.server.auth.authenticate(self.headers.get("Authorization"))
        except ApiError:
            with contextlib.suppress(ApiError):
                route = parse_route(segments)
                if route is not None:
                    self.server.faults.log(self._record(method, route, query, "", code=401))
            raise

    def _record(self, method: str, route: Route, query: dict[str, list[str]], user: str,
                code: int = 0) -> RequestRecord:
        """The request as the apiserver's RequestInfo sees it (verb mapping of kube-apiserver)."""
        if method in ("GET", "HEAD"):
            verb = "get" if route.name else ("watch" if _flag(query, "watch") else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "delete")
            if method == "DELETE" and route.name is None:
                verb = "deletecollection"
        resource = route.res.plural + (f"/{route.subresource}" if route.subresource else "")
        return RequestRecord(method, verb, resource, route.namespace, route.name, code=code,
                             dry_run=_one(query, "dryRun") == "All", user=user)

    def _attributes(self, record: RequestRecord, route: Route, query: dict[str, list[str]]) -> Attributes:
        """Authorization attributes: a namespace is its own namespace; list/watch take metadata.name=X."""
        name = route.name or ""
        if not name and record.verb in ("list", "watch"):
            for term in (_one(query, "fieldSelector") or "").split(","):
                key, sep, value = term.partition("=")
                if key.strip() == "metadata.name" and sep:
                    name = value.removeprefix("=").strip()
        namespace = route.namespace or ""
        if route.res.plural == "namespaces" and route.name:
            namespace = route.name
        return Attributes(record.verb, api_group=route.res.group, resource=route.res.plural,
                          subresource=route.subresource or "", namespace=namespace, name=name)

    def _non_resource(self, method: str, segments: list[str]) -> None:
        if method not in ("GET", "HEAD"):
            raise method_not_allowed()
        path = "/".join(segments)
        if path in ("healthz", "readyz", "livez"):
            self._send(200, b"ok", "text/plain; charset=utf-8")
            return
        doc: Any
        if path == "version":
            doc = VERSION_INFO
        elif path == "api":
            doc = resources.api_versions()
        elif path == "apis":
            doc = resources.api_group_list()
        elif len(segments) == 2 and segments[0] == "apis":
            doc = resources.api_group(segments[1])
        elif path == "api/v1":
            doc = resources.resource_list("", "v1")
        elif len(segments) == 3 and segments[0] == "apis":
            doc = resources.resource_list(segments[1], segments[2])
        elif not segments:
            doc = {"paths": ["/api", "/api/v1", "/apis", "/healthz", "/version"]
                   + [f"/apis/{g}/{v}" for g, vs in resources.groups().items() for v in vs]}
        else:
            doc = None
        if doc is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self._json(200, doc)

    def _resource(self, method: str, route: Route, query: dict[str, list[str]], raw: bytes) -> None:
        api = self.server.api
        res, ns, name, sub = route.res, route.namespace or "", route.name, route.subresource
        dry_run_value = _one(query, "dryRun")
        if dry_run_value not in (None, "", "All"):
            raise bad_request(f"Invalid dry run value: {dry_run_value!r}, only 'All' is supported")
        dry_run = dry_run_value == "All"
        strict = (_one(query, "fieldValidation") or "Strict") == "Strict"
        if res.namespaced and route.namespace is None and name is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub == "log":
            self._log(route, query)
            return
        if sub == "proxy":
            self._proxy(method, route, raw)
            return
        if name is None:
            self._collection(method, route, query, raw, dry_run, strict)
            return
        if sub == "scale":
            if method == "GET":
                self._json(200, api.get_scale(res, ns, name))
            elif method in ("PUT", "PATCH"):
                ctype = self.headers.get("Content-Type", "") if method == "PATCH" else None
                self._json(200, api.update_scale(res, ns, name, self._json_body(raw), ctype, dry_run))
            else:
                raise method_not_allowed()
            return
        if method in ("GET", "HEAD"):
            self._json(200, api.get(res, ns, name))
        elif method == "PUT":
            self._json(200, api.replace(res, ns, name, self._json_body(raw), subresource=sub, dry_run=dry_run,
                                        strict=strict))
        elif method == "PATCH":
            ctype = self.headers.get("Content-Type", "application/strategic-merge-patch+json")
            self._json(200, api.patch(res, ns, name, ctype, self._json_body(raw), subresource=sub,
                                      dry_run=dry_run, strict=strict))
        elif method == "DELETE":
            self._json(200, api.delete(res, ns, name, self._delete_options(query, raw), dry_run=dry_run))
        else:
            raise method_not_allowed()

    def _delete_options(self, query: dict[str, list[str]], raw: bytes) -> Obj:
        options = self._json_body(raw) or {}
        if not isinstance(options, dict):
            raise bad_request("DeleteOptions must be an object")
        if _one(query, "propagationPolicy"):
            options["propagationPolicy"] = _one(query, "propagationPolicy")
        grace = _int(query, "gracePeriodSeconds")
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        if _one(query, "orphanDependents"):
            options["orphanDependents"] = _flag(query, "orphanDependents")
        return options

    def _collection(self, method: str, route: Route, query: dict[str, list[str]], raw: bytes, dry_run: bool,
                    strict: bool) -> None:
        api, res = self.server.api, route.res
        if method in ("GET", "HEAD"):
            if _flag(query, "watch"):
                self._watch(route, query)
            else:
                self._json(200, api.list(res, route.namespace, _one(query, "labelSelector"),
                                         _one(query, "fieldSelector"), _int(query, "limit"), _one(query, "continue")))
        elif method == "POST":
            if res.namespaced and route.namespace is None:
                raise method_not_allowed()
            created = api.create(res, route.namespace or "", self._json_body(raw), dry_run=dry_run, strict=strict)
            self._json(201, created)
        elif method == "DELETE":
            self._json(200, api.delete_collection(res, route.namespace, _one(query, "labelSelector"),
                                                  _one(query, "fieldSelector"), self._delete_options(query, raw),
                                                  dry_run))
        else:
            raise method_not_allowed()

    # ------------------------------------------------------------------ watch
    def _watch(self, route: Route, query: dict[str, list[str]]) -> None:
        store, res, ns = self.server.api.store, route.res, route.namespace
        labels = parse_label_selector(_one(query, "labelSelector"))
        fields = parse_field_selector(_one(query, "fieldSelector"), res.plural)
        timeout = _int(query, "timeoutSeconds")
        deadline = time.monotonic() + (timeout if timeout is not None else 1800)
        rv_param = _one(query, "resourceVersion")

        def selected(obj: Obj | None) -> bool:
            return obj is not None and matches(labels, obj["metadata"].get("labels")) and fields_match(fields, obj)

        with store.lock:
            if rv_param is None or rv_param in ("", "0"):
                initial = [o for o in store.scan(res.plural, ns) if selected(o)]
                last = store.resource_version
            else:
                try:
                    last = int(rv_param)
                except ValueError as exc:
                    raise bad_request(f"invalid resource version: {rv_param!r}") from exc
                if store.too_old(last):
                    raise gone(f"too old resource version: {last} ({store.resource_version})")
                initial = []
        self._start_chunked("application/json")
        for obj in initial:
            self._chunk(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
        while not store.closed and not self._peer_gone():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            store.wait(last, min(remaining, 1.0))
            for event in store.events_after(last):
                last = event.rv
                if event.plural != res.plural or (ns is not None and event.namespace != ns):
                    continue
                now_in = event.type != "DELETED" and selected(event.obj)
                was_in = event.type != "ADDED" and selected(event.old)
                if event.type == "DELETED":
                    etype = "DELETED" if was_in else None
                elif now_in:
                    etype = "MODIFIED" if was_in else "ADDED"
                else:
                    etype = "DELETED" if was_in else None
                if etype:
                    self._chunk(json.dumps({"type": etype, "object": event.obj}).encode() + b"\n")
        self._end_chunked()

    # ------------------------------------------------------------------ logs
    def _log(self, route: Route, query: dict[str, list[str]]) -> None:
        api = self.server.api
        pod = api.get(route.res, route.namespace or "", route.name or "")
        source = self.server.kubelet.log_source(pod, _one(query, "container"), _flag(query, "previous"))
        timestamps = _flag(query, "timestamps")
        tail = _int(query, "tailLines")
        limit = _int(query, "limitBytes")
        since_seconds = _int(query, "sinceSeconds")
        since = _one(query, "sinceTime")
        if since_seconds is not None:
            since = iso(utcnow() - dt.timedelta(seconds=since_seconds))
        records, offset = source.read(0)
        if since:
            records = [r for r in records if r.timestamp[:19] >= since[:19]]
        if tail is not None:
            records = records[-tail:] if tail > 0 else []
        payload = b"".join(r.render(timestamps) for r in records)
        if limit is not None:
            payload = payload[:limit]
        if not _flag(query, "follow"):
            self._send(200, payload, "text/plain")
            return
        sent = len(payload)
        self._start_chunked("text/plain")
        self._chunk(payload)
        while not self.server.api.store.closed and (limit is None or sent < limit) and not self._peer_gone():
            finished = source.finished()
            records, offset = source.read(offset)
            data = b"".join(r.render(timestamps) for r in records)
            if limit is not None:
                data = data[:limit - sent]
            sent += len(data)
            self._chunk(data)
            if finished and not records:
                break
            source.wait(0.2)
        self._end_chunked()

    # ------------------------------------------------------------------ proxy
    def _proxy(self, method: str, route: Route, raw: bytes) -> None:
        api, kubelet = self.server.api, self.server.kubelet
        ns, target = route.namespace or "", route.name or ""
        parts = target.split(":")
        if len(parts) == 3:
            parts = parts[1:]
        name, port = parts[0], parts[1] if len(parts) > 1 else ""
        if route.res.plural == "services":
            pod, container_port = self._service_backend(ns, name, port)
        elif route.res.plural == "pods":
            pod = api.get(route.res, ns, name)
            container_port = _container_port(pod, port)
        else:
            raise method_not_allowed()
        local = kubelet.local_port(pod["metadata"]["uid"], container_port)
        if local is None:
            raise service_unavailable(f"error trying to reach service: pod {pod['metadata']['name']} has no "
                                      f"running container listening on port {container_port}")
        url = urlsplit(self.path)
        path = route.rest
        if url.path.endswith("/") and not path.endswith("/"):
            path += "/"
        path += f"?{url.query}" if url.query else ""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        conn = http.client.HTTPConnection("127.0.0.1", local, timeout=30)
        try:
            conn.request(method, path, body=raw or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise service_unavailable(f"error trying to reach service: dial tcp 127.0.0.1:{local}: {exc}") from exc
        finally:
            conn.close()
        self.status_code = resp.status
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _service_backend(self, ns: str, name: str, port: str) -> tuple[Obj, int]:
        api = self.server.api
        svc = api.get(resources.BY_PLURAL["services"], ns, name)
        ports = svc["spec"].get("ports") or []
        chosen = ports[0] if ports and not port else next(
            (p for p in ports if p.get("name") == port or str(p.get("port")) == port), None)
        if chosen is None:
            raise service_unavailable(f'no endpoints available for service "{name}"')
        reqs = from_label_selector({"matchLabels": svc["spec"].get("selector") or {}})
        if not reqs:
            raise service_unavailable(f'no endpoints available for service "{name}"')
        for pod in api.store.scan("pods", ns):
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (pod.get("status") or {}).get("conditions") or [])
            if ready and not pod["metadata"].get("deletionTimestamp") and matches(
                    reqs, pod["metadata"].get("labels")):
                try:
                    return pod, _container_port(pod, str(chosen.get("targetPort", chosen["port"])))
                except ApiError:
                    continue
        raise service_unavailable(f'no endpoints available for service "{name}"')


def _container_port(pod: Obj, port: str) -> int:
    """Resolve a port number or a named container port of ``pod``."""
    declared = [p for c in pod["spec"].get("containers") or [] for p in c.get("ports") or []]
    if not port:
        if not declared:
            raise bad_request(f"pod {pod['metadata']['name']} declares no container port; give one in the URL")
        return int(declared[0]["containerPort"])
    if port.isdigit():
        return int(port)
    for p in declared:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise service_unavailable(f"no container port named {port!r} in pod {pod['metadata']['name']}")
