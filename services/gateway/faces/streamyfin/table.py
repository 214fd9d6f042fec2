"""The Streamyfin face's route table: one declaration per route drives aiohttp routing and the
face's own OpenAPI document, `/openapi-streamyfin.json` (schemas/openapi-streamyfin.json holds a
copy). Every route's errors carry `"message"` at the top level beside the error envelope, where
the original server put it.

The routes sit at the root of the main port, as the original's did; callers authenticate with
their Jellyfin token (checked by each handler against Jellyfin), not with vidmesh accounts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from services.gateway import openapi
from services.gateway.api import Access, Handler, Operation
from services.gateway.http import ErrorWithMessage, message_beside_error

TAG = "streamyfin"

routes = web.RouteTableDef()
OPERATIONS: list[Operation] = []

ABOUT = openapi.About(
    title="vidmesh Streamyfin optimize-server API",
    description="The Streamyfin app's optimized-versions server, at the root of the main port: "
    "its eight routes, fields, status words and status codes. Every route needs a Jellyfin "
    "token; every error is "
    '{"error": {"code", "message", "status", "details"}, "message"}.',
    security_schemes={
        "jellyfin": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": 'The Jellyfin token, raw or as `MediaBrowser Token="..."`; '
            "`X-Emby-Token` and `X-Emby-Authorization` are accepted too.",
        }
    },
    error=ErrorWithMessage,
)


def route(
    method: str,
    path: str,
    *,
    summary: str,
    access: Access = Access.USER,
    status: int = 200,
    body: Any = None,
    response: Any = None,
    query: Any = None,
    binary: bool = False,
    statuses: tuple[int, ...] = (),
) -> Callable[[Handler], Handler]:
    """Serve `handler` at `method path` and document it (the handler reads its own body and
    checks the caller: the face's bodies are lenient, its callers Jellyfin users)."""

    def register(handler: Handler) -> Handler:
        marked = message_beside_error(handler)
        routes.route(method, path)(marked)
        OPERATIONS.append(
            Operation(
                method=method,
                path=path,
                handler=marked,
                access=access,
                summary=summary,
                tag=TAG,
                status=status,
                body=body,
                response=response,
                query=query,
                binary=binary,
                statuses=statuses,
                operation_id=handler.__name__,
            )
        )
        return marked

    return register


def document() -> dict[str, Any]:
    """The Streamyfin face's OpenAPI document."""
    return openapi.document(OPERATIONS, ABOUT)


def render() -> str:
    """The document as committed to schemas/openapi-streamyfin.json."""
    return openapi.as_file(document())


openapi.FILES["openapi-streamyfin.json"] = render


# Served beside the eight routes, not one of them: the document lists exactly the original's.
@routes.get("/openapi-streamyfin.json")
@message_beside_error
async def openapi_streamyfin(request: web.Request) -> web.Response:
    return web.json_response(document())
