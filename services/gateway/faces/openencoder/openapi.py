"""The OpenAPI document of the OpenEncoder face, `/openapi-openencoder.json` on its port: the
native document's generator over this face's route table, with its title and its error shape.
schemas/openapi-openencoder.json holds a copy (`vidmesh schemas --write`; a test fails on drift)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from services.gateway import openapi
from services.gateway.api import Access
from services.gateway.faces.openencoder.errors import OpenEncoderError
from services.gateway.faces.openencoder.table import ROUTES, Tag

TITLE = "vidmesh OpenEncoder API"
PATH = "/openapi-openencoder.json"


def document() -> dict[str, Any]:
    """Every route of the OpenEncoder face; every error is `{"status", "message"}`."""
    doc = openapi.document(ROUTES.operations)
    doc["info"] = {
        "title": TITLE,
        "version": openapi.VERSION,
        "description": "OpenEncoder's API (register, login, jobs, presets, machines) on its own "
        "port. Sign in with POST /api/login and send `Authorization: Bearer <token>`. Every error "
        'is {"status": <HTTP status>, "message": "..."}.',
    }
    _, components = msgspec.json.schema_components(
        [OpenEncoderError], ref_template="#/components/schemas/{name}"
    )
    schemas = doc["components"]["schemas"]
    schemas.pop("ErrorBody", None)
    # The generator's error references name ErrorEnvelope: on this face, it is this shape.
    schemas["ErrorEnvelope"] = components["OpenEncoderError"]
    return doc


def render() -> str:
    """The document as committed to schemas/openapi-openencoder.json."""
    return openapi.as_file(document())


openapi.FILES["openapi-openencoder.json"] = render


@ROUTES.route("GET", PATH, access=Access.PUBLIC, tag=Tag.META, summary="This document")
async def openencoder_openapi(request: web.Request) -> web.Response:
    return web.json_response(document())
