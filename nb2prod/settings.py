"""Every config value a user may edit, checked in one place before anything runs.

A table maps (section, key) of `nb2prod.ini` and of a stage's `config.ini` to
a validator; `validate` runs the whole table when a pipeline is loaded, so
`run`, `deploy`, `render` and `schedule` refuse a bad value (exit 2, one line
naming the file and key) before any stage starts, instead of after training
or deep inside gunicorn or the Kubernetes API.  Code that uses a value may
still parse it; it can no longer fail there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from nb2prod.errors import Problem, UserError

if TYPE_CHECKING:
    from nb2prod.pipeline import Pipeline

#: Routes the generated WSGI app serves itself; ROUTE must not shadow them.
RESERVED_ROUTES = ("/healthz", "/readyz", "/info", "/metrics")
MAX_VALUE_CHARS = 1000

Check = Callable[[str], None]  # raises ValueError(reason) for a bad value


def whole(low: int, high: int | None = None) -> Check:
    def check(raw: str) -> None:
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number {span}") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"expected a whole number {span}")
    return check


def number(low: float, high: float | None = None, *, above: bool = False) -> Check:
    def check(raw: str) -> None:
        span = (f"above {low:g}" if above else f"of at least {low:g}") + (
            f" and at most {high:g}" if high is not None else "")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number {span}") from None
        if math.isnan(value) or value < low or (above and value == low) or (
                high is not None and value > high):
            raise ValueError(f"expected a number {span}")
    return check


def real(raw: str) -> None:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")


def boolean(raw: str) -> None:
    if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("expected true or false")


def pattern(regex: str, what: str) -> Check:
    compiled = re.compile(regex)

    def check(raw: str) -> None:
        if not compiled.fullmatch(raw):
            raise ValueError(f"expected {what}")
    return check


image_ref = pattern(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}",
                    "an image reference like registry/name:tag (no spaces)")
identifier = pattern(r"[A-Za-z_][A-Za-z0-9_]*", "a Python identifier")
dns_label = pattern(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
                    "lowercase letters, digits and '-' (at most 63)")
secret_ref = pattern(r"[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?(:[-._A-Za-z0-9]+)?",
                     "secret-name[:key]")


def route(raw: str) -> None:
    path = raw if raw.startswith("/") else "/" + raw
    if not re.fullmatch(r"/[A-Za-z0-9._~/-]*", path) or path == "/":
        raise ValueError("expected a URL path like /predict")
    if path.rstrip("/") in RESERVED_ROUTES:
        raise ValueError(f"{path} is served by nb2prod itself ({', '.join(RESERVED_ROUTES)})")


#: stores only pods can reach (a volume), on top of those `artifacts.open_store` opens
CLUSTER_STORES = ("pvc",)


def store(raw: str) -> None:
    from nb2prod.artifacts import registered_schemes

    if "://" not in raw:
        return  # a plain path: a file store
    scheme, _, rest = raw.partition("://")
    schemes = sorted({*registered_schemes(), *CLUSTER_STORES})
    if scheme not in schemes:
        known = ", ".join(f"{s}://" for s in schemes)
        raise ValueError(f"scheme {scheme}:// is not supported (use {known})")
    if not rest.strip("/"):
        raise ValueError(f"{scheme}:// needs a location after it")


def endpoint_url(raw: str) -> None:
    """An S3 endpoint: credentials in it would be copied into manifests and logs."""
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise ValueError("expected a URL like http://minio:9000") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("contains credentials (user:password@); give them as "
                         "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected a URL like http://minio:9000")


#: nb2prod.ini
PROJECT: dict[tuple[str, str], Check] = {
    ("artifacts", "STORE"): store,
    ("artifacts", "ENDPOINT_URL"): endpoint_url,
    ("kubernetes", "IMAGE"): image_ref,
    ("kubernetes", "NAMESPACE"): dns_label,
    ("kubernetes", "UNSCHEDULABLE_GRACE_SECONDS"): number(0, 86400),
    ("kubernetes", "NETWORK_POLICY"): boolean,
    ("kubernetes", "IMAGE_PULL_POLICY"): pattern(r"Always|IfNotPresent|Never",
                                                 "Always, IfNotPresent or Never"),
    ("promotion", "MIN"): real,
    ("schedule", "STARTING_DEADLINE_SECONDS"): whole(10),
    ("schedule", "SUCCESSFUL_RUNS_KEPT"): whole(0),
    ("schedule", "FAILED_RUNS_KEPT"): whole(0),
    ("schedule", "SUSPEND"): boolean,
    ("schedule", "CACHE"): boolean,
    ("run", "WORKER"): boolean,
}

#: a stage's config.ini
STAGE: dict[tuple[str, str], Check] = {
    ("default", "CPU_REQUEST"): number(0, above=True),
    ("default", "CPU_LIMIT"): number(0, above=True),
    ("default", "MEMORY_REQUEST_MB"): whole(1),
    ("default", "MEMORY_LIMIT_MB"): whole(1),
    ("default", "GPU"): whole(0),
    ("default", "IMAGE"): image_ref,
    ("default", "EPHEMERAL_STORAGE_MB"): whole(1),
    ("default", "EPHEMERAL_STORAGE_LIMIT_MB"): whole(1),
    ("batch", "MAX_COMPLETION_TIME_SECONDS"): whole(1),
    ("batch", "RETRIES"): whole(0, 100),
    ("batch", "CACHE"): boolean,
    ("service", "REPLICAS"): whole(1),
    ("service", "PORT"): whole(1, 65535),
    ("service", "WORKERS"): whole(1, 64),
    ("service", "THREADS"): whole(1, 256),
    ("service", "MAX_STARTUP_TIME_SECONDS"): whole(1),
    ("service", "MAX_REQUEST_BYTES"): whole(1),
    ("service", "ROUTE"): route,
    ("service", "ENTRYPOINT"): identifier,
    ("service", "INGRESS"): boolean,
}

#: whole sections whose keys and values follow one rule each
SECTIONS: dict[str, tuple[Check, Check]] = {"secrets": (pattern(
    r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name"), secret_ref)}


#: checks whose bad values may hold secrets: the message leaves the value out
SECRET_VALUES = (endpoint_url,)


def problem(file: str, section: str, key: str, raw: str, reason: str,
            hide: bool = False) -> Problem:
    if hide:
        return Problem(f"[{section}] {key}: {reason}", file=file)
    shown = raw if len(raw) <= 60 else raw[:57] + "..."
    return Problem(f"[{section}] {key} = {shown!r}: {reason}", file=file)


def check_value(check: Check, raw: str, file: str, section: str, key: str) -> Problem | None:
    """None if `raw` passes `check`, else the one-line problem naming file and key."""
    hide = check in SECRET_VALUES
    if any(ord(ch) < 32 and ch not in "\t\n" for ch in raw) or len(raw) > MAX_VALUE_CHARS:
        return problem(file, section, key, raw, "control characters or too long", hide)
    try:
        check(raw)
    except ValueError as exc:
        return problem(file, section, key, raw, str(exc), hide)
    return None


def _check_config(config: dict[str, dict[str, str]], table: dict[tuple[str, str], Check],
                  file: str) -> list[Problem]:
    found = []
    for (section, key), check in table.items():
        raw = config.get(section, {}).get(key, "").strip()
        if raw and (bad := check_value(check, raw, file, section, key)):
            found.append(bad)
    for section, (key_check, value_check) in SECTIONS.items():
        for key, raw in config.get(section, {}).items():
            bad = check_value(key_check, key, file, section, key) or (
                raw.strip() and check_value(value_check, raw.strip(), file, section, key))
            if bad:
                found.append(bad)
    return found


def validate(pipeline: Pipeline) -> None:
    """Check every known value of the pipeline; all problems at once, one line each."""
    top = str(pipeline.root / "nb2prod.ini")
    problems = _check_config(pipeline.config, PROJECT, top)
    if pipeline.value("promotion", "MIN") and not pipeline.value("promotion", "METRIC"):
        problems.append(Problem("[promotion] MIN is set but METRIC is not: name the metric "
                                "the gate compares", file=top))
    for stage in pipeline.stages.values():
        problems += _check_config(stage.config, STAGE, str(stage.directory / "config.ini"))
    if problems:
        raise UserError(problems)


def checked_option(check: Check, raw: str | None, option: str) -> str | None:
    """A command-line value checked by the same rule as its config key (exit 2 if bad)."""
    if raw is None:
        return None
    if any(ord(ch) < 32 for ch in raw):
        raise UserError(Problem(f"{option}: control characters (a newline?) are not allowed"))
    try:
        check(raw)
    except ValueError as exc:
        raise UserError(Problem(f"{option} {raw!r}: {exc}")) from None
    return raw


def local_store(uri: str) -> str:
    """A store `nb2prod run`/`runs` can open from here (not a cluster-only pvc://)."""
    scheme = uri.partition("://")[0]
    if scheme in CLUSTER_STORES:
        raise UserError(Problem(f"artifact store {uri}: {scheme}:// is reachable from pods "
                                "only; give `--store file://PATH` or `s3://...` here"))
    return uri
