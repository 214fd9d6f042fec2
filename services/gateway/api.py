"""The native API's route table: every route says who may call it and what it takes and returns.

One declaration serves three ends: aiohttp routing, the access check done before the handler runs,
and the OpenAPI 3.1 document (generated from the msgspec types; see `openapi.py`).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from services.gateway.http import read_json
from services.gateway.identity import Principal
from services.gateway.state import gateway
from shared.errors import BadRequest, Forbidden, Unauthorized
from shared.messages.accounts import Role

PRINCIPAL = web.RequestKey("principal", Principal)


class Tag:
    """The OpenAPI tags: every route of the native API is filed under one."""

    ACCOUNTS = "accounts"
    ADMIN = "admin"
    BATCHES = "batches"
    EVENTS = "events"
    FILES = "files"
    JOBS = "jobs"
    META = "meta"
    PRESETS = "presets"
    STORAGE = "storage"
    TELEMETRY = "telemetry"
    TRANSCODING = "transcoding"
    WEBHOOKS = "webhooks"


class Access(enum.Enum):
    """Who may call a route."""

    PUBLIC = "public"  # anyone
    SIGNED = "signed"  # anyone holding a signed URL's token
    USER = "user"  # any account (JWT or API key); objects must be the caller's own
    MODERATOR = "moderator"
    ADMIN = "admin"


_ROLE = {Access.USER: Role.USER, Access.MODERATOR: Role.MODERATOR, Access.ADMIN: Role.ADMIN}

Handler = Callable[..., Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One documented route."""

    method: str
    path: str
    handler: Handler
    access: Access
    summary: str
    tag: str
    status: int = 200
    body: Any = None
    # Decode the body as this type instead (the handler validates parts itself).
    decode_as: Any = None
    response: Any = None
    query: Any = None
    binary: bool = False
    # The media type of a non-JSON answer (e.g. text/event-stream), for the OpenAPI document.
    media_type: str = ""
    statuses: tuple[int, ...] = ()
    operation_id: str = ""
    # Also accept the token as `?token=` (only feeds a browser opens without headers: EventSource).
    query_token: bool = False
    # The body may be left out: the handler then gets `body`'s defaults.
    body_optional: bool = False


@dataclass
class ApiRoutes:
    """Routes of the native API, declared with their access rule and types."""

    operations: list[Operation] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        access: Access,
        summary: str,
        tag: str,
        status: int = 200,
        body: Any = None,
        decode_as: Any = None,
        response: Any = None,
        query: Any = None,
        binary: bool = False,
        media_type: str = "",
        statuses: tuple[int, ...] = (),
        query_token: bool = False,
        body_optional: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method=method,
                    path=path,
                    handler=handler,
                    access=access,
                    summary=summary,
                    tag=tag,
                    status=status,
                    body=body,
                    decode_as=decode_as,
                    response=response,
                    query=query,
                    binary=binary,
                    media_type=media_type,
                    statuses=statuses,
                    operation_id=handler.__name__,
                    query_token=query_token,
                    body_optional=body_optional,
                )
            )
            return handler

        return register

    def install(self, app: web.Application) -> None:
        for op in self.operations:
            app.router.add_route(op.method, op.path, _guarded(op))


def _guarded(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler behind its access check and its body/query decoding."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if op.access in _ROLE:
            principal = authenticate(request, query_token=op.query_token)
            if principal is None:
                raise Unauthorized(
                    "Sign in: send `Authorization: Bearer <token or API key>` or `x-api-key`."
                )
            if not principal.at_least(_ROLE[op.access]):
                raise Forbidden(f"This needs the {_ROLE[op.access].value} role.")
            request[PRINCIPAL] = principal
        kwargs: dict[str, Any] = {}
        if op.body is not None and op.body_optional and not request.body_exists:
            kwargs["body"] = msgspec.convert({}, op.decode_as or op.body)
        elif op.body is not None:
            settings = gateway(request).settings
            kwargs["body"] = await read_json(
                request,
                op.decode_as or op.body,
                max_bytes=settings.max_body_bytes,
                timeout=settings.body_timeout,
            )
        if op.query is not None:
            kwargs["query"] = decode_query(request, op.query)
        return await op.handler(request, **kwargs)

    handler.__name__ = op.operation_id
    return handler


def authenticate(request: web.Request, *, query_token: bool = False) -> Principal | None:
    """The caller named by the request's headers; with `query_token`, by `?token=` when it sends
    none (the route must say so: a token in a URL ends up in logs and browser history)."""
    identity = gateway(request).identity
    authorization = request.headers.get("Authorization", "")
    api_key = request.headers.get("x-api-key", "")
    token = request.query.get("token", "") if query_token else ""
    if token and not authorization and not api_key:
        authorization = f"Bearer {token}"
    return identity.authenticate(authorization, api_key)


def caller(request: web.Request) -> Principal:
    """The authenticated caller of a route that is not public."""
    return request[PRINCIPAL]


def decode_query(request: web.Request, type_: Any) -> Any:
    try:
        return msgspec.convert(dict(request.query), type_, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid query parameter: {exc}") from None


API = ApiRoutes()
"""The native API's one route table; each face module adds its routes to it."""
