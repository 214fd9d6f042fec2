"""Liveness and readiness, and a root that says what this server is."""

from __future__ import annotations

from aiohttp import web

from services.gateway.http import json_response
from services.gateway.state import gateway

routes = web.RouteTableDef()


def describe_server(request: web.Request) -> web.Response:
    """What this server is, for a client that asks `/` for JSON (a browser gets the dashboard)."""
    gw = gateway(request)
    return json_response(
        {
            "name": "vidmesh",
            "apis": ["streamyfin", "native", "download-jobs", "openencoder"],
            "dashboard": "/",
            "jellyfin": bool(gw.settings.jellyfin_url),
        }
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    gw = gateway(request)
    checks = {
        "nats": gw.nc.is_connected,
        "jobs": gw.jobs.ready.is_set(),
        "progress": gw.progress.ready.is_set(),
    }
    ready = all(checks.values())
    return json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)
