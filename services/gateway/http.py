"""One place that turns errors into the JSON error envelope, whatever raised them.

{"error": {"code": "not_found", "message": "...", "status": 404, "details": ...}}

A face whose clients read the message at the top level (the Streamyfin app, as its original
server answered) marks its handlers with `message_beside_error`: their errors also carry
`"message"` beside the envelope.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from nats.js.errors import KeyWrongLastSequenceError

from shared.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    VidmeshError,
)

log = structlog.get_logger("vidmesh.gateway")

_ENCODER = msgspec.json.Encoder()

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_ENCODER.encode(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    *,
    message_beside: bool = False,
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status, "details": details}
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'MediaBrowser realm="vidmesh"'}
    body: dict[str, Any] = {"error": error}
    if message_beside:
        body["message"] = message
    return json_response(body, status=status, headers=headers)


_MESSAGE_BESIDE = "_vidmesh_message_beside_error"
HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[web.StreamResponse]])


def message_beside_error(handler: HandlerT) -> HandlerT:
    """Mark a route's handler: its errors carry `"message"` at the top level too, beside the
    envelope (clients written for a server that answered `{"message": ...}` read it there)."""
    setattr(handler, _MESSAGE_BESIDE, True)
    return handler


async def _message_beside(request: web.Request) -> bool:
    """Whether the route asked for is marked; for a method a path does not take (a 405, which
    matches no handler), whether a route on that path is."""
    if getattr(request.match_info.handler, _MESSAGE_BESIDE, False):
        return True
    refused = request.match_info.http_exception
    if refused is None or refused.status != 405:
        return False
    for resource in request.app.router.resources():
        matched, allowed = await resource.resolve(request)
        if (
            matched is None
            and allowed
            and any(getattr(route.handler, _MESSAGE_BESIDE, False) for route in resource)
        ):
            return True
    return False


# NATS out of reach for now (a retry may work); any other NATS error is a bug: a 500, logged.
NATS_AWAY = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    beside = await _message_beside(request)
    try:
        return await handler(request)
    except KeyWrongLastSequenceError:
        return error_response(
            409,
            "conflict",
            "The object changed while this request ran; try again.",
            message_beside=beside,
        )
    except NATS_AWAY as exc:  # NATS did not answer in time, even after a failover
        log.warning("request.unavailable", path=request.path, code="unavailable", error=repr(exc))
        return error_response(
            503,
            "unavailable",
            "The job queue (NATS) is not answering right now; try again.",
            message_beside=beside,
        )
    except VidmeshError as exc:
        if exc.http_status >= 500:
            log.warning("request.unavailable", path=request.path, code=exc.code, error=exc.message)
        headers = (
            {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
        )
        return error_response(
            exc.http_status, exc.code, exc.message, exc.details, headers, message_beside=beside
        )
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = (
            exc.reason if exc.status != 404 else f"No route for {request.method} {request.path}"
        )
        # keep what the exception says besides (a 405's Allow: the methods the path takes)
        kept = {name: exc.headers[name] for name in ("Allow",) if name in exc.headers}
        return error_response(
            exc.status, code, message, headers=kept or None, message_beside=beside
        )
    except Exception:
        log.exception("request.failed", method=request.method, path=request.path)
        return error_response(
            500, "internal_error", "Something went wrong on our side.", message_beside=beside
        )


async def read_json(
    request: web.Request, type_: type[Any], *, max_bytes: int, timeout: float
) -> Any:
    """Decode and validate a JSON body; any problem is a 400 (or 408, 413) with the reason."""
    body = await read_body(request, max_bytes=max_bytes, timeout=timeout)
    if not body.strip():
        raise BadRequest("A JSON request body is required.")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request body: {exc}", details=_path_of(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from None


async def read_body(request: web.Request, *, max_bytes: int, timeout: float) -> bytes:
    """The whole request body, however many TCP segments or chunks it arrives in; a 413 as soon
    as it is known to be larger than `max_bytes` (from Content-Length, or while reading), a 408
    when it has not all arrived within `timeout` seconds, a 400 when it ends broken (the client
    closed before its Content-Length, or sent a malformed chunk)."""
    too_large = PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    body = bytearray()
    try:
        # One deadline for the whole body: a client dripping a byte at a time is still bounded.
        async with asyncio.timeout(timeout):
            # One read takes only what has arrived so far: read until the end of the body.
            async for piece in request.content.iter_any():
                body += piece
                if len(body) > max_bytes:
                    raise too_large
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive whole within {timeout:g} seconds."
        ) from None
    except (ConnectionResetError, HttpProcessingError):
        raise BadRequest(
            "The request body ended before it was complete, or was malformed."
        ) from None
    return bytes(body)


def _path_of(exc: msgspec.ValidationError) -> dict[str, str] | None:
    text = str(exc)
    marker = " - at `"
    if marker in text:
        return {"path": text.split(marker, 1)[1].rstrip("`")}
    return None


class ErrorBody(msgspec.Struct, kw_only=True):
    """What went wrong: a stable code, a message for people, and details for programs."""

    code: str
    message: str
    status: int
    details: Any = None


class ErrorEnvelope(msgspec.Struct, kw_only=True):
    """Every error response."""

    error: ErrorBody


class ErrorWithMessage(msgspec.Struct, kw_only=True):
    """Every error response of a face that also gives the message at the top level."""

    error: ErrorBody
    message: str


class Message(msgspec.Struct, kw_only=True):
    """A plain acknowledgement."""

    message: str
