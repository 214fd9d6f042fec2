"""Absolute links the gateway hands out (signed download URLs...): under the base URL of the
general settings when an operator set one (the address clients reach behind a proxy), else under
the address the request came to."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from yarl import URL

from services.gateway.state import gateway


def absolute_url(request: web.Request, path: str, query: Mapping[str, str] | None = None) -> str:
    """The absolute URL of `path` (with `query`) on this server, as clients should open it."""
    base = gateway(request).server.current.general.base_url
    url = URL(base.rstrip("/") + path) if base else request.url.with_path(path)
    return str(url.with_query(query or {}))
