"""Serving the dashboard: `/` (the page, or what this server is for a client asking for JSON) and
`/dashboard/<version>/<file>` (its modules and styles).

The files are read once, when the application starts, into memory: a request can name only a file
that was there, never a path on disk. `<version>` is a digest of every file, so a module's URL
changes whenever any file does: modules are cached for a year (`immutable`), the page itself is
revalidated on every load (`no-cache` with an ETag), and a browser never mixes modules of two
releases: a module of another version is a 404 that says to reload (the page then offers it).
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from services.gateway.health import describe_server
from shared.errors import NotFound

ASSETS = "/dashboard"
STATIC = Path(__file__).parent / "static"
_PAGE = "index.html"
_VERSION_SLOT = "{{assets}}"  # in index.html: where the versioned assets path goes

# The page runs only its own modules and talks only to its own origin (`connect-src 'self'`
# covers the same-origin WebSocket); no inline script or style, no frames, no plugins.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _asset(name: str, body: bytes) -> Asset:
    suffix = Path(name).suffix
    content_type = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or suffix == ".svg":
        content_type += "; charset=utf-8"
    return Asset(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')


@dataclass(frozen=True, slots=True)
class Dashboard:
    """The page and its files, as read at start-up."""

    version: str
    page: Asset
    files: dict[str, Asset]

    @classmethod
    def load(cls, folder: Path = STATIC) -> Dashboard:
        read = {
            path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.name.startswith(".")
        }
        digest = hashlib.sha256()
        for name, body in read.items():
            digest.update(name.encode() + b"\0" + body + b"\0")
        version = digest.hexdigest()[:12]
        page = read.pop(_PAGE).replace(_VERSION_SLOT.encode(), f"{ASSETS}/{version}".encode())
        return cls(
            version=version,
            page=_asset(_PAGE, page),
            files={name: _asset(name, body) for name, body in read.items()},
        )


DASHBOARD = web.AppKey("dashboard", Dashboard)
routes = web.RouteTableDef()


def _send(request: web.Request, asset: Asset, cache: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": asset.etag, "Vary": "Accept"}
    wanted = request.headers.get("If-None-Match", "")
    if asset.etag in wanted or wanted.strip() == "*":
        return web.Response(status=304, headers=headers)
    response = web.Response(body=asset.body, headers=headers)
    response.headers["Content-Type"] = asset.content_type
    response.enable_compression()
    return response


def _wants_json(request: web.Request) -> bool:
    """A client that asks for JSON and not for a page (an API client finding out what this is)."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


@routes.get("/")
async def page(request: web.Request) -> web.StreamResponse:
    """The dashboard; a client that asks for JSON gets what this server is instead."""
    if _wants_json(request):
        described = describe_server(request)
        described.headers["Vary"] = "Accept"
        described.headers["Cache-Control"] = "no-cache"
        return described
    return _send(request, request.app[DASHBOARD].page, _REVALIDATE)


@routes.get(ASSETS + "/{version}/{name:.+}")
async def asset(request: web.Request) -> web.StreamResponse:
    dashboard = request.app[DASHBOARD]
    found = dashboard.files.get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    if request.match_info["version"] != dashboard.version:
        # A page of another release: today's module could import what its own modules lack.
        raise NotFound("The dashboard was updated since this page was loaded; reload the page.")
    return _send(request, found, _IMMUTABLE)
