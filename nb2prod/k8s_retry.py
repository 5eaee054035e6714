"""Retrying Kubernetes API calls: what a deploy does when the apiserver hiccups.

A real apiserver answers 5xx during upgrades and leader changes, 429 when
priority-and-fairness sheds load, and 409 when someone else (a controller, a
second nb2prod) wrote the object between our read and our write.  None of
those should fail a deploy that would succeed a second later, and none should
be retried forever: the helpers here retry with capped exponential backoff
within a bounded number of attempts and a time budget, then let the last
error through.

* :func:`call` retries transient failures (5xx, 429, timeouts, dropped
  connections) of any single request.
* :func:`create` also treats ``AlreadyExists`` as "already there" (our objects
  are named deterministically, so a create whose response was lost is safe to
  repeat) and retries a ``Conflict``.
* :func:`update` re-reads and re-applies a change on 409 (optimistic
  concurrency: ``metadata.resourceVersion`` must match the stored one).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ATTEMPTS = 8
FIRST_DELAY = 0.1
MAX_DELAY = 4.0
BUDGET_SECONDS = 60.0
#: Attempts when the server does not answer at all (each is already retried by urllib3).
TRANSPORT_ATTEMPTS = 3


def _transport_errors() -> tuple[type[BaseException], ...]:
    import urllib3.exceptions

    return (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def status_of(exc: BaseException) -> int | None:
    """HTTP status of an ApiException (None for anything else)."""
    from kubernetes.client.exceptions import ApiException

    return exc.status if isinstance(exc, ApiException) else None


def reason_of(exc: BaseException) -> str:
    """`Status.reason` of an API error (AlreadyExists, Conflict, NotFound...), or ''."""
    import json

    body = getattr(exc, "body", None)
    if isinstance(body, (str, bytes)) and body:
        try:
            data = json.loads(body)
        except ValueError:
            return ""
        if isinstance(data, dict):
            return str(data.get("reason") or "")
    return ""


def message_of(exc: BaseException) -> str:
    """One line describing an API error, from the Status message when there is one."""
    import json

    body = getattr(exc, "body", None)
    if isinstance(body, (str, bytes)) and body:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return f"{data.get('code', status_of(exc))} {data['message']}"
        except ValueError:
            pass
    status = status_of(exc)
    if status is not None:
        return f"{status} {getattr(exc, 'reason', '')}".strip()
    cause = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the real error
    if isinstance(cause, BaseException):
        text = str(cause).split(": ", 1)[-1] if ": " in str(cause) else str(cause)
        url = getattr(exc, "url", "") or ""
        return f"cannot reach {getattr(getattr(exc, 'pool', None), 'host', '?')}"\
               f"{' (' + url.split('?')[0] + ')' if url else ''}: {text}".splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def is_transient(exc: BaseException) -> bool:
    """Worth repeating the same request: overload, server errors, lost connections."""
    status = status_of(exc)
    if status is not None:
        return status in RETRY_STATUSES
    return isinstance(exc, _transport_errors())


def _delay(attempt: int, exc: BaseException | None) -> float:
    headers = getattr(exc, "headers", None) or {}
    retry_after = headers.get("Retry-After") if hasattr(headers, "get") else None
    if retry_after:
        try:
            return min(float(retry_after), MAX_DELAY)
        except ValueError:
            pass
    base = min(FIRST_DELAY * 2 ** attempt, MAX_DELAY)
    return base * (0.5 + random.random() / 2)  # jitter: two clients do not retry in lockstep


def call(fn: Callable[..., T], *args: Any, attempts: int = ATTEMPTS,
         budget: float = BUDGET_SECONDS, retry_if: Callable[[BaseException], bool] | None = None,
         **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, repeated on transient errors (and on `retry_if(exc)`)."""
    started = time.monotonic()
    unreachable = 0
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            retry = is_transient(exc) or (retry_if is not None and retry_if(exc))
            if status_of(exc) is None and retry:
                # No HTTP answer at all: the client already retried the connection a few
                # times, and a wrong address will not start answering: give up sooner.
                unreachable += 1
                retry = unreachable < TRANSPORT_ATTEMPTS
            delay = _delay(attempt, exc)
            if not retry or attempt == attempts - 1 or \
                    time.monotonic() - started + delay > budget:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _conflict(exc: BaseException) -> bool:
    return status_of(exc) == 409 and reason_of(exc) != "AlreadyExists"


def create(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Create an object; None when it already exists (AlreadyExists is success for us)."""
    try:
        return call(fn, *args, retry_if=_conflict, **kwargs)
    except Exception as exc:
        if status_of(exc) == 409 and reason_of(exc) == "AlreadyExists":
            return None
        raise


def delete(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Delete an object; None when it is already gone."""
    try:
        return call(fn, *args, retry_if=_conflict, **kwargs)
    except Exception as exc:
        if status_of(exc) == 404:
            return None
        raise


def update(read: Callable[[], T], write: Callable[[T], Any], attempts: int = ATTEMPTS) -> Any:
    """Read-modify-write with optimistic concurrency: on 409, read again and redo the write.

    `write` receives the freshly read object and must build its change from it
    (never from a stale copy), so a retry re-applies the change to what is stored now.
    """
    for attempt in range(attempts):
        current = call(read)
        try:
            return call(write, current)
        except Exception as exc:
            if status_of(exc) != 409 or attempt == attempts - 1:
                raise
            time.sleep(_delay(attempt, None))
    raise AssertionError("unreachable")  # pragma: no cover
