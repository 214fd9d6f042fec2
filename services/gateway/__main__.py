"""`python -m services.gateway` (or `vidmesh gateway`)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from services.gateway import GatewayService, GatewaySettings
from shared import config, runtime


def main() -> None:
    settings = config.load(GatewaySettings)

    async def build(nc: NATS) -> runtime.Service:
        return GatewayService(nc, settings)

    runtime.main(settings, "gateway", build)


if __name__ == "__main__":
    main()
