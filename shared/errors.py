"""Errors that know what they mean: an HTTP status, a stable code, and whether retrying helps."""

from __future__ import annotations

from typing import Any, ClassVar


class VidmeshError(Exception):
    """Base of every error vidmesh raises on purpose."""

    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(VidmeshError):
    """The request is malformed or fails validation."""

    http_status = 400
    code = "bad_request"


class Unauthorized(VidmeshError):
    """No credentials, or credentials that were refused."""

    http_status = 401
    code = "unauthorized"


class Forbidden(VidmeshError):
    """Authenticated, but not allowed to do this."""

    http_status = 403
    code = "forbidden"


class NotFound(VidmeshError):
    """The named object does not exist (or is not the caller's)."""

    http_status = 404
    code = "not_found"


class Conflict(VidmeshError):
    """The object's current state does not allow this."""

    http_status = 409
    code = "conflict"


class Unprocessable(VidmeshError):
    """The request is well formed, but what it names cannot be used (a source that is no
    media)."""

    http_status = 422
    code = "unprocessable"


class RequestTimeout(VidmeshError):
    """The request body did not arrive whole within the time allowed."""

    http_status = 408
    code = "request_timeout"
    retryable = True


class PayloadTooLarge(VidmeshError):
    """The request body is larger than allowed."""

    http_status = 413
    code = "payload_too_large"


class TooManyRequests(VidmeshError):
    """Too many attempts (failed sign-ins); `retry_after` seconds until the next is allowed."""

    http_status = 429
    code = "too_many_requests"
    retryable = True

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after


class Unavailable(VidmeshError):
    """A dependency (NATS, Jellyfin, the blob store) cannot be reached right now."""

    http_status = 503
    code = "unavailable"
    retryable = True


class GatewayTimeout(VidmeshError):
    """A long operation the gateway waited on (probing a source) did not finish in time."""

    http_status = 504
    code = "gateway_timeout"
    retryable = True


class NotConfigured(VidmeshError):
    """A feature was asked for that the operator has not configured."""

    http_status = 503
    code = "not_configured"


class SourceError(VidmeshError):
    """The source could not be read or decoded; `retryable` says whether trying again may help."""

    code = "source_error"

    def __init__(self, message: str, *, retryable: bool, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retryable_now = retryable


class StoreError(VidmeshError):
    """The blob store refused or failed an operation; `retryable_now` says whether trying again may
    help (a store that is unreachable or failing: yes; refused credentials, no such bucket: no)."""

    http_status = 503
    code = "store_error"
    retryable = True

    def __init__(self, message: str, *, retryable: bool = True, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retryable_now = retryable
