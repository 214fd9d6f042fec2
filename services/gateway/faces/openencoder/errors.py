"""OpenEncoder's error shape, `{"status": <code>, "message": ...}`: the gateway's error envelope
(from its one error middleware) reworded on the way out, so every error of this face, a refused
option or an unknown route alike, reads the way OpenEncoder clients expect."""

from __future__ import annotations

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from services.gateway.http import json_response

_KEPT_HEADERS = ("Retry-After", "Allow")


class OpenEncoderError(msgspec.Struct, kw_only=True):
    """An error, as OpenEncoder words it: the HTTP status and a message for people."""

    status: int
    message: str


class _Error(msgspec.Struct):
    message: str


class _Envelope(msgspec.Struct):
    error: _Error


_ENVELOPE = msgspec.json.Decoder(_Envelope)


@web.middleware
async def openencoder_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Place outside `error_middleware`: its envelope, in OpenEncoder's shape."""
    response = await handler(request)
    if response.status < 400 or not isinstance(response, web.Response):
        return response
    if response.content_type != "application/json" or not isinstance(response.body, bytes):
        return response
    try:
        message = _ENVELOPE.decode(response.body).error.message
    except msgspec.DecodeError:
        return response
    headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
    if response.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="vidmesh"'
    body = OpenEncoderError(status=response.status, message=message)
    return json_response(body, response.status, headers)
