"""`python -m services.statistics` (or `vidmesh statistics`)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from services.statistics import Statistics, StatisticsSettings
from shared import config, runtime


def main() -> None:
    settings = config.load(StatisticsSettings)

    async def build(nc: NATS) -> runtime.Service:
        return Statistics(nc, settings)

    runtime.main(settings, "statistics", build)


if __name__ == "__main__":
    main()
