"""API errors rendered as real ``Status`` objects.

Client code branches on ``status.reason`` / ``code`` / ``details.causes``, so the
stand-in must produce the same shapes as kube-apiserver, not ad-hoc JSON.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error that the HTTP layer turns into a ``Status`` response."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        """Return the ``Status`` object kube-apiserver would send."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(plural: str, group: str) -> str:
    """``deployments.apps`` / ``pods``: the resource name used in messages."""
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    """404 NotFound, e.g. ``deployments.apps "web" not found``."""
    return ApiError(
        404,
        "NotFound",
        f'{qualified(plural, group)} "{name}" not found',
        {"name": name, "group": group, "kind": plural} if group else {"name": name, "kind": plural},
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    """409 AlreadyExists on create of an existing name."""
    details = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return ApiError(409, "AlreadyExists", f'{qualified(plural, group)} "{name}" already exists', details)


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    """409 Conflict, the optimistic-concurrency failure clients retry on."""
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    details = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
        details,
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid with ``details.causes[]`` (field, message, reason) like the apiserver."""
    qualified_kind = f"{kind}.{group}" if group else kind
    text = "; ".join(f"{field}: {msg}" for field, msg, _ in causes)
    if len(causes) > 1:
        text = f"[{', '.join(f'{field}: {msg}' for field, msg, _ in causes)}]"
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": reason, "message": msg, "field": field} for field, msg, reason in causes],
    }
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {text}', details)


def bad_request(message: str, details: dict[str, Any] | None = None) -> ApiError:
    """400 BadRequest (malformed selectors, strict decoding errors, mismatched names)."""
    return ApiError(400, "BadRequest", message, details)


def forbidden(plural: str, group: str, name: str, why: str) -> ApiError:
    """403 Forbidden as admission plugins return it."""
    details = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return ApiError(403, "Forbidden", f'{qualified(plural, group)} "{name}" is forbidden: {why}', details)


def gone(message: str) -> ApiError:
    """410 Expired for watches from a compacted resourceVersion."""
    return ApiError(410, "Expired", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:
    """405 MethodNotAllowed for verbs a resource does not support."""
    return ApiError(405, "MethodNotAllowed", message)


def internal(message: str) -> ApiError:
    """500 InternalError."""
    return ApiError(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})


def service_unavailable(message: str) -> ApiError:
    """503 ServiceUnavailable (e.g. a Service without ready endpoints)."""
    return ApiError(503, "ServiceUnavailable", message)


def injected(code: int, message: str | None = None) -> ApiError:
    """An error requested by a test through fault injection; reason follows the code."""
    reasons = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        410: "Expired",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
        504: "Timeout",
    }
    default = {
        409: "Operation cannot be fulfilled: the object has been modified; "
        "please apply your changes to the latest version and try again",
        500: "Internal error occurred: injected by the Kubernetes stand-in",
    }
    return ApiError(
        code,
        reasons.get(code, "Unknown"),
        message or default.get(code, f"injected error {code}"),
    )
