"""The WSGI app of a service stage (Flask, served by gunicorn): POST ROUTE, /healthz,
/readyz, /info, /metrics.

`NB2PROD_API_TOKEN` set => `Authorization: Bearer <token>` required on ROUTE and /info.
A prediction request that arrives during start-up waits up to NB2PROD_READY_WAIT_SECONDS
(default 5) for it, then gets 503.  Errors are JSON `{"error": ...}`; input the model
rejects (predict raised ValueError, TypeError, KeyError or IndexError: see INPUT_ERRORS)
gives 422 with that message; any other failing predict gives 500 with a request id and
no traceback (the traceback goes to the log).  /metrics describes whichever worker
answered: when exact metrics matter use one worker per pod (threads for concurrency)
and scale with REPLICAS."""

from __future__ import annotations

import bisect
import datetime
import hmac
import json
import math
import os
import re
import threading
import time
import traceback
import uuid

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import serving as _serving
from .serving import (
    SETTINGS,
    VERSIONS,
    State,
    _after_fork_in_child,
    configure,
    log,
    start_background_startup,
    workers_ready,
)

try:  # gunicorn raises these from wsgi.input reads (a bad chunk size, a cut-off body...)
    from gunicorn.http.errors import ParseException as _GunicornParseError
    BODY_ERRORS: tuple[type[BaseException], ...] = (_GunicornParseError,)
except ImportError:  # served by another WSGI server
    BODY_ERRORS = ()
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Prometheus counters for this process, safe to update from several threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, list] = {}  # route -> [bucket counts..., +Inf count, sum]
        self.predict_errors = 0
        self.process_start = time.time()

    def observe(self, route: str, method: str, code: int, seconds: float) -> None:
        key = (route, method, str(code))
        slot = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            hist = self.latency.get(route)
            if hist is None:
                hist = self.latency[route] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
            hist[slot] += 1
            hist[-1] += seconds

    def predict_failed(self) -> None:
        with self.lock:
            self.predict_errors += 1

    def render(self, state: State) -> str:
        with self.lock:
            requests = sorted(self.requests.items())
            latency = sorted((route, list(h)) for route, h in self.latency.items())
            errors = self.predict_errors
        out = [
            "# HELP nb2prod_http_requests_total HTTP requests answered by this worker.",
            "# TYPE nb2prod_http_requests_total counter",
        ]
        for (route, method, code), n in requests:
            out.append(
                f'nb2prod_http_requests_total{{route="{_esc(route)}",method="{method}",'
                f'code="{code}"}} {n}'
            )
        out += [
            "# HELP nb2prod_http_request_duration_seconds Request latency in this worker.",
            "# TYPE nb2prod_http_request_duration_seconds histogram",
        ]
        for route, hist in latency:
            label = f'route="{_esc(route)}"'
            cumulative = 0
            for bound, n in zip(LATENCY_BUCKETS, hist):
                cumulative += n
                out.append(
                    f'nb2prod_http_request_duration_seconds_bucket{{{label},le="{bound}"}} '
                    f"{cumulative}"
                )
            cumulative += hist[len(LATENCY_BUCKETS)]
            out.append(
                f'nb2prod_http_request_duration_seconds_bucket{{{label},le="+Inf"}} {cumulative}'
            )
            out.append(f"nb2prod_http_request_duration_seconds_sum{{{label}}} {hist[-1]!r}")
            out.append(f"nb2prod_http_request_duration_seconds_count{{{label}}} {cumulative}")
        out += [
            (
                "# HELP nb2prod_predict_errors_total Calls to the entrypoint that failed (500): "
                "raised something other than an input error, or returned something not "
                "JSON-serialisable."
            ),
            "# TYPE nb2prod_predict_errors_total counter",
            f"nb2prod_predict_errors_total {errors}",
            "# HELP nb2prod_ready 1 once this worker's start-up cells finished successfully.",
            "# TYPE nb2prod_ready gauge",
            f"nb2prod_ready {1 if state.status == 'ready' else 0}",
            "# HELP nb2prod_startup_failed 1 if this worker's start-up failed.",
            "# TYPE nb2prod_startup_failed gauge",
            f"nb2prod_startup_failed {1 if state.status == 'failed' else 0}",
        ]
        if state.duration is not None:
            out += [
                "# HELP nb2prod_startup_seconds Time this worker spent running start-up cells.",
                "# TYPE nb2prod_startup_seconds gauge",
                f"nb2prod_startup_seconds {state.duration!r}",
            ]
        out += [
            "# HELP nb2prod_model_info The model this worker serves (value is always 1).",
            "# TYPE nb2prod_model_info gauge",
            (
                f'nb2prod_model_info{{pipeline="{_esc(SETTINGS["pipeline"])}",'
                f'stage="{_esc(SETTINGS["stage"])}",run_id="{_esc(state.run_id or "")}",'
                f'nb2prod_version="{_esc(str(VERSIONS["nb2prod"]))}"}} 1'
            ),
            "# HELP process_start_time_seconds Start time of this worker since the epoch.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.process_start!r}",
        ]
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


METRICS = Metrics()


# --------------------------------------------------------------------------- JSON


def to_jsonable(obj: object) -> object:
    """`json.dumps` fallback: numpy, pandas and friends by duck typing, without importing them.

    numpy arrays and scalars (and torch tensors, pandas Series/Index) have `tolist`; a
    DataFrame has `to_dict` (records, the shape clients expect); other scalars have `item`.
    """
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict(orient="records")
        except TypeError:
            return to_dict()
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    isoformat = getattr(obj, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if type(obj).__name__ == "Decimal":
        return float(obj)  # type: ignore[arg-type]
    if isinstance(obj, uuid.UUID) or hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__} is not JSON serialisable")


def _plain(obj: object, depth: int = 0) -> object:
    """Slow path: convert fully, map NaN/inf to null and odd dict keys to strings."""
    if depth > 200:
        raise ValueError("result nested too deeply")
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                converted = to_jsonable(key)
                key = converted if isinstance(converted, (str, int, float, bool)) else str(key)
            out[key] = _plain(value, depth + 1)
        return out
    if isinstance(obj, list):
        return [_plain(v, depth + 1) for v in obj]
    return _plain(to_jsonable(obj), depth + 1)


def dumps(obj: object) -> str:
    """Serialise a prediction: fast path first, strict JSON (no NaN) always."""
    try:
        return json.dumps(obj, default=to_jsonable, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return json.dumps(_plain(obj), allow_nan=False, separators=(",", ":"))


# --------------------------------------------------------------------------- HTTP


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps(body), status=status, headers=headers, mimetype="application/json")


def error(status: int, message: str, headers: dict | None = None, **extra: object) -> Response:
    return json_response({"error": message, **extra}, status, headers)


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id() -> str:
    """The caller's X-Request-ID when it is safe to echo, else a new one."""
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def authorized() -> bool:
    if SETTINGS["token_bytes"] is None:
        return True
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = credentials.strip().encode("latin-1", "replace")  # WSGI headers are latin-1
    return hmac.compare_digest(given, SETTINGS["token_bytes"])


def unauthorized() -> Response:
    return error(
        401, "missing or invalid bearer token", {"WWW-Authenticate": 'Bearer realm="nb2prod"'}
    )


#: Exceptions that, raised by ENTRYPOINT, mean the request did not fit the model: the input
#: validation of numpy, pandas and scikit-learn (`X has 2 features, but ... is expecting 4`,
#: `could not convert string to float`), a missing key or column, a list where a dict was
#: expected.  The caller gets 422 with the estimator's own message.  AttributeError and its
#: subclasses stay 500 even when they also derive from these (scikit-learn's NotFittedError
#: is a ValueError and an AttributeError: the model is broken, not the request).
INPUT_ERRORS = (ValueError, TypeError, LookupError)
INPUT_ERROR_TEXT_LIMIT = 1000


def is_input_error(exc: BaseException) -> bool:
    return isinstance(exc, INPUT_ERRORS) and not isinstance(exc, AttributeError)


def invalid_input(exc: Exception) -> Response:
    """422 naming what was wrong with the request (the exception's own text, shortened)."""
    rid = request_id()
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > INPUT_ERROR_TEXT_LIMIT:
        text = text[: INPUT_ERROR_TEXT_LIMIT - 1] + "…"
    message = f"invalid input: {type(exc).__name__}: {text}"
    log.warning("request %s: %s() rejected the input: %s", rid, SETTINGS["entrypoint"], message)
    return error(422, message, {"X-Request-ID": rid}, request_id=rid)


def prediction_failed(what: str) -> Response:
    """500 without the exception text (it may hold inputs or internals); traceback to the log."""
    rid = request_id()
    METRICS.predict_failed()
    log.error("request %s: %s:\n%s", rid, what, traceback.format_exc())
    return error(500, "prediction failed", {"X-Request-ID": rid}, request_id=rid)


def with_instance(body: dict) -> dict:
    """`body` plus the server's instance nonce, when `nb2prod run` gave it one."""
    if SETTINGS["instance"] is not None:
        body["instance"] = SETTINGS["instance"]
    return body


def not_ready() -> Response:
    state = _serving.STATE
    body: dict = {"error": "model not ready", "status": state.status}
    if state.status == "failed":
        body["reason"] = state.public_reason
    return json_response(body, 503, {"Retry-After": "1"})


class DrainRequestBody:
    """WSGI middleware: read what is left of a request body before answering.

    gunicorn's sync workers close the connection after each response; closing with unread
    bytes makes the kernel send RST, and the client then loses our 401/413 answer and sees
    "connection reset" instead.  Reading the rest (bounded, so a huge upload is cut off
    rather than swallowed) lets every error response reach the client.  Costs one empty
    read when the body was consumed already.
    """

    def __init__(self, wsgi_app, limit: int) -> None:
        self.wsgi_app = wsgi_app
        self.limit = limit

    def __call__(self, environ: dict, start_response):
        try:
            return self.wsgi_app(environ, start_response)
        finally:
            self.drain(environ)

    def drain(self, environ: dict) -> None:
        stream = environ.get("wsgi.input")
        if stream is None:
            return
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and (length <= 0 or length > self.limit):
            return
        remaining = self.limit
        try:
            while remaining > 0:
                chunk = stream.read(min(65536, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
        except Exception:  # noqa: BLE001 - the client went away: nothing left to protect
            return


def create_app() -> Flask:
    """Build the Flask app; the predict view reads _serving.STATE at request time."""
    # Explicit root and no static route: nothing to find on disk, no /static/ URL to serve.
    flask_app = Flask(__name__, root_path=_serving.HERE, static_folder=None)
    flask_app.config["MAX_CONTENT_LENGTH"] = SETTINGS["max_request_bytes"]
    route = SETTINGS["route"]

    @flask_app.before_request
    def _start_timer() -> None:
        request.environ["nb2prod.t0"] = time.perf_counter()

    @flask_app.after_request
    def _record(response: Response) -> Response:
        t0 = request.environ.get("nb2prod.t0")
        if t0 is not None:
            rule = request.url_rule
            method = request.method if request.method in KNOWN_METHODS else "OTHER"
            METRICS.observe(
                rule.rule if rule is not None else "<unmatched>",
                method,
                response.status_code,
                time.perf_counter() - t0,
            )
        return response

    @flask_app.post(route)
    def predict_view() -> Response:
        if not authorized():
            return unauthorized()
        fn = _serving.STATE.predict
        if fn is None:
            # Each gunicorn worker starts up on its own, so the probe that made this pod
            # or run "ready" may have hit a sibling that finished a moment earlier: hold
            # the request briefly instead of failing it, then give up with 503.
            state = _serving.STATE
            if state.status == "starting" and SETTINGS["ready_wait"] > 0:
                state.done.wait(SETTINGS["ready_wait"])
            fn = state.predict
            if fn is None:
                return not_ready()
        if not request.is_json:
            return error(
                400, "expected a JSON body with Content-Type: application/json, "
                f"got {request.mimetype or 'no content type'!r}"
            )
        data = request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH (Content-Length)
        # Werkzeug cuts a chunked body at the limit without error: one more byte is too big.
        if (
            request.content_length is None
            and len(data) >= SETTINGS["max_request_bytes"]
            and request.environ["wsgi.input"].read(1)
        ):
            raise RequestEntityTooLarge()
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8
            return error(400, f"malformed JSON: {exc}")
        try:
            result = fn(payload)
        except Exception as exc:  # noqa: BLE001 - logged with traceback in prediction_failed
            if is_input_error(exc):
                return invalid_input(exc)
            return prediction_failed(f"{SETTINGS['entrypoint']}() raised")
        try:
            body = dumps(result)
        except (TypeError, ValueError):
            return prediction_failed(f"{SETTINGS['entrypoint']}() returned a non-JSON result")
        return Response(body, status=200, mimetype="application/json")

    @flask_app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "alive"})

    @flask_app.get("/readyz")
    def readyz() -> Response:
        state = _serving.STATE
        if state.status == "ready":
            expected = SETTINGS["workers"]
            ready = workers_ready() if expected > 1 else 1
            if ready >= expected:
                return json_response(with_instance({"status": "ready"}))
            return json_response(
                with_instance({"status": "starting", "workers_ready": ready,
                               "workers": expected}),
                503, {"Retry-After": "1"},
            )
        body: dict = {"status": state.status, "elapsed_seconds": round(state.elapsed(), 3)}
        if state.status == "failed":
            body["reason"] = state.public_reason
        return json_response(with_instance(body), 503, {"Retry-After": "1"})

    @flask_app.get("/info")
    def info() -> Response:
        if not authorized():
            return unauthorized()
        state = _serving.STATE
        return json_response({
            "pipeline": SETTINGS["pipeline"],
            "stage": SETTINGS["stage"],
            "run_id": state.run_id,
            "status": state.status,
            "route": route,
            "entrypoint": SETTINGS["entrypoint"],
            "executable": SETTINGS["executable"],
            "max_request_bytes": SETTINGS["max_request_bytes"],
            "startup_seconds": None if state.duration is None else round(state.duration, 3),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.started_at)),
            "pid": os.getpid(),
            "instance": SETTINGS["instance"],
            "versions": VERSIONS,
        })

    @flask_app.get("/metrics")
    def metrics() -> Response:
        return Response(
            METRICS.render(_serving.STATE), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @flask_app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = exc.get_response()
        messages = {
            404: f"not found: {request.path[:200]!r} (POST {route} to predict)",
            405: f"method {request.method} not allowed here",
            413: f"request body larger than {SETTINGS['max_request_bytes']} bytes "
                 "(config.ini [service] MAX_REQUEST_BYTES)",
        }
        message = messages.get(exc.code or 500, exc.name)
        response.set_data(dumps({"error": message}))
        response.mimetype = "application/json"
        return response

    @flask_app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        if isinstance(exc, BODY_ERRORS):  # the server could not parse the body it was sent
            log.info("malformed request body: %s", exc)
            return error(400, f"malformed request body: {type(exc).__name__}")
        rid = request_id()
        log.error("request %s: unexpected error:\n%s", rid, traceback.format_exc())
        return error(500, "internal error", {"X-Request-ID": rid}, request_id=rid)

    flask_app.wsgi_app = DrainRequestBody(flask_app.wsgi_app, SETTINGS["drain_limit"])
    return flask_app


def build_app(stage_dir: str, **defaults: object) -> Flask:
    """The app of the service stage in `stage_dir`, its start-up begun in the background.

    `defaults` are the values split wrote into the stage's app.py (pipeline, stage,
    executable, route, entrypoint, nb2prod_version); config.ini and the environment win.
    """
    configure(stage_dir, defaults)
    flask_app = create_app()
    os.register_at_fork(after_in_child=_after_fork_in_child)
    start_background_startup()
    return flask_app
