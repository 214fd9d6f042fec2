"""The gateway as a service: the HTTP application bound to a port, with a clean shutdown."""

from __future__ import annotations

import structlog
from aiohttp import web
from nats.aio.client import Client as NATS

from services.gateway.app import create_app, start_site
from services.gateway.config import GatewaySettings
from shared.runtime import Service

log = structlog.get_logger("vidmesh.gateway")


class GatewayService(Service):
    name = "gateway"

    def __init__(self, nc: NATS, settings: GatewaySettings) -> None:
        super().__init__()
        self.settings = settings
        self.app = create_app(settings, nc)
        self.runner: web.AppRunner | None = None
        self.port = settings.port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::", "") else self.settings.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self.runner, self.port = await start_site(self.app, self.settings.host, self.settings.port)
        # `vidmesh up` reads this line to learn the port.
        print(f"vidmesh gateway listening on {self.url}", flush=True)
        log.info("gateway.listening", url=self.url)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
