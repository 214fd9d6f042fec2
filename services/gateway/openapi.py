"""OpenAPI 3.1 documents, generated from route tables and the msgspec types: the native API's
(with the download-jobs API's routes) at `/api/openapi.json`, and any other face's document from
its own operations (the Streamyfin face serves `/openapi-streamyfin.json`). schemas/ holds a copy
of each document registered in `FILES`; a test fails when they drift."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Operation, Tag
from services.gateway.http import ErrorEnvelope
from shared.messages import asyncapi

VERSION = "1.0.0"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
_ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 503)
_ERROR_WORDS = {
    400: "Invalid input",
    401: "Not signed in, or the token or key is not valid",
    403: "Signed in, but not allowed",
    404: "No such object (or not the caller's)",
    409: "The object's state does not allow this",
    413: "The request body is too large",
    416: "The range cannot be satisfied",
    422: "The source is not media that can be read",
    429: "Too many attempts; wait the seconds Retry-After says",
    503: "A dependency is unavailable, or the feature is not configured",
    504: "A long operation did not finish in time; try again",
}
_FILE_TYPES = ("video/mp4", "video/x-matroska", "video/webm", "audio/mp4")


@dataclass(frozen=True, slots=True)
class About:
    """What a document says besides its routes: its title, how callers authenticate (every
    scheme is accepted on every route that is not public) and the shape of its errors."""

    title: str
    description: str
    security_schemes: dict[str, Any]
    error: Any = ErrorEnvelope


NATIVE = About(
    title="vidmesh native API",
    description="Accounts, API keys, jobs, presets, batches, metadata, storage and signed "
    "downloads; the download-jobs API is the part under the base URL http://host:port/api "
    '(/jobs, /jobs/bulk, /batch, /metadata, /usage, /user/*). Every error is {"error": '
    '{"code", "message", "details"}}.',
    security_schemes={
        "bearer": {"type": "http", "scheme": "bearer", "description": "JWT or API key"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    },
)


def document(operations: list[Operation] | None = None, about: About = NATIVE) -> dict[str, Any]:
    """The OpenAPI document for these operations (default: every native API route)."""
    ops = sorted(operations or API.operations, key=lambda op: (op.path, op.method))
    error = about.error
    types: list[Any] = [error]
    for op in ops:
        types += [t for t in (op.body, op.response, op.query) if t is not None]
    unique = list(dict.fromkeys(types))
    roots, components = msgspec.json.schema_components(
        unique, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(unique, roots, strict=True))
    security: list[dict[str, list[str]]] = [{name: []} for name in about.security_schemes]
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        operation = _operation(op, schema_of, components, schema_of[error])
        operation["security"] = [] if op.access in (Access.PUBLIC, Access.SIGNED) else security
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    info = {"title": about.title, "version": VERSION, "description": about.description}
    return {
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": about.security_schemes,
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": {"application/json": {"schema": schema_of[error]}},
                }
            },
        },
    }


def _operation(
    op: Operation, schema_of: dict[Any, Any], components: dict[str, Any], error: Any
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "x-access": op.access.value,
        "parameters": _parameters(op, schema_of, components),
        "responses": _responses(op, schema_of, error),
    }
    if op.body is not None:
        operation["requestBody"] = {
            "required": not op.body_optional,
            "content": {"application/json": {"schema": schema_of[op.body]}},
        }
    return operation


def _parameters(
    op: Operation, schema_of: dict[Any, Any], components: dict[str, Any]
) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(op.path)
    ]
    if op.query is not None:
        ref = schema_of[op.query]["$ref"].rsplit("/", 1)[1]
        struct = components[ref]
        required = set(struct.get("required", []))
        for name, schema in struct.get("properties", {}).items():
            params.append(
                {"name": name, "in": "query", "required": name in required, "schema": schema}
            )
    if op.operation_id == "create_job":
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 255},
            }
        )
    return params


def _responses(op: Operation, schema_of: dict[Any, Any], error: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if op.binary:
        content = {kind: {"schema": {"type": "string", "format": "binary"}} for kind in _FILE_TYPES}
        responses[str(op.status)] = {"description": "The file", "content": content}
        if 206 in op.statuses:
            responses["206"] = {"description": "The requested range", "content": content}
    elif op.media_type:
        content = {op.media_type: {"schema": {"type": "string"}}}
        responses[str(op.status)] = {"description": op.summary, "content": content}
    elif op.status == 204:
        responses["204"] = {"description": op.summary}
    elif op.response is not None:
        responses[str(op.status)] = {
            "description": op.summary,
            "content": {"application/json": {"schema": schema_of[op.response]}},
        }
    else:
        responses[str(op.status)] = {"description": op.summary, "content": {"application/json": {}}}
    for status in sorted({*_ERROR_STATUSES, *op.statuses} - {200, 201, 202, 204, 206}):
        responses[str(status)] = {
            "description": _ERROR_WORDS.get(status, "An error"),
            "content": {"application/json": {"schema": error}},
        }
    return responses


def render() -> str:
    """The document as committed to schemas/openapi.json."""
    return as_file(document())


def as_file(found: dict[str, Any]) -> str:
    """A document as committed to schemas/."""
    return json.dumps(found, indent=2, sort_keys=True) + "\n"


FILES: dict[str, Callable[[], str]] = {"openapi.json": render}
"""File in schemas/ -> what makes it; a face with its own document adds it here."""


@API.route("GET", "/api/openapi.json", access=Access.PUBLIC, tag=Tag.META, summary="This document")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())


@API.route(
    "GET",
    "/api/asyncapi.json",
    access=Access.PUBLIC,
    tag=Tag.META,
    summary="The AsyncAPI 3.0 document of the NATS event contract",
)
async def asyncapi_json(request: web.Request) -> web.Response:
    return web.json_response(asyncapi.document())
