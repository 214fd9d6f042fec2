"""The OpenEncoder face's application, served on its own listener: its routes over the main
application's gateway state, and its error shape."""

from __future__ import annotations

from aiohttp import web

from services.gateway.config import GatewaySettings
from services.gateway.faces.openencoder import accounts, jobs, machines, openapi, presets
from services.gateway.faces.openencoder.errors import openencoder_errors
from services.gateway.faces.openencoder.ids import Counters
from services.gateway.faces.openencoder.table import COUNTERS, ROUTES
from services.gateway.http import error_middleware
from services.gateway.state import GATEWAY
from shared.nats.topology import ensure_topology, retention_of

# Importing the route modules registers their routes on ROUTES.
MODULES = (accounts, jobs, machines, openapi, presets)


def create_app(main: web.Application, settings: GatewaySettings) -> web.Application:
    """The OpenEncoder application; start it after `main`, whose state it shares."""
    app = web.Application(
        middlewares=[openencoder_errors, error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    ROUTES.install(app)

    async def attach(app: web.Application) -> None:
        gw = main[GATEWAY]
        app[GATEWAY] = gw
        buckets = await ensure_topology(
            gw.js, gw.names, replicas=settings.replicas, retention=retention_of(settings)
        )
        app[COUNTERS] = Counters(buckets.openencoder)

    app.on_startup.append(attach)
    return app
