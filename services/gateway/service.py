"""The gateway as a service: the HTTP application bound to a port, with a clean shutdown (requests
in flight get `stop_grace_seconds`, like every service's messages)."""

from __future__ import annotations

import structlog
from aiohttp import web
from nats.aio.client import Client as NATS

from services.gateway.app import create_app, start_site
from services.gateway.config import GatewaySettings
from services.gateway.faces.openencoder.app import create_app as create_openencoder_app
from shared.runtime import Service

log = structlog.get_logger("vidmesh.gateway")


class GatewayService(Service):
    name = "gateway"

    def __init__(self, nc: NATS, settings: GatewaySettings) -> None:
        # One grace for every stop: in-flight requests get the same time as other services'
        # messages (aiohttp's shutdown_timeout), then a summary line like theirs.
        super().__init__(grace=settings.stop_grace_seconds, deadline=settings.stop_deadline_seconds)
        self.settings = settings
        self.app = create_app(settings, nc)
        self.runner: web.AppRunner | None = None
        self.port = settings.port
        # OpenEncoder's `/api/` collides with the native one: it gets a listener of its own.
        self.openencoder: web.Application | None = None
        if settings.openencoder_port is not None:
            self.openencoder = create_openencoder_app(self.app, settings)
        self.openencoder_runner: web.AppRunner | None = None
        self.openencoder_port = settings.openencoder_port

    def _url(self, port: int | None) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::", "") else self.settings.host
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self._url(self.port)

    async def start(self) -> None:
        self.runner, self.port = await start_site(
            self.app, self.settings.host, self.settings.port, shutdown_timeout=self.grace
        )
        # `vidmesh up` reads this line to learn the port.
        print(f"vidmesh gateway listening on {self.url}", flush=True)
        log.info("gateway.listening", url=self.url)
        if self.openencoder is not None and self.settings.openencoder_port is not None:
            self.openencoder_runner, self.openencoder_port = await start_site(
                self.openencoder,
                self.settings.host,
                self.settings.openencoder_port,
                shutdown_timeout=self.grace,
            )
            url = self._url(self.openencoder_port)
            print(f"vidmesh OpenEncoder API listening on {url}/api", flush=True)
            log.info("gateway.openencoder_listening", url=url)

    async def stop(self) -> None:
        if self.openencoder_runner is not None:
            await self.openencoder_runner.cleanup()
        if self.runner is not None:
            await self.runner.cleanup()
