"""`python -m services.scheduler` (or `vidmesh scheduler`)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from services.scheduler import Scheduler, SchedulerSettings
from shared import config, runtime


def main() -> None:
    settings = config.load(SchedulerSettings)

    async def build(nc: NATS) -> runtime.Service:
        return Scheduler(nc, settings)

    runtime.main(settings, "scheduler", build)


if __name__ == "__main__":
    main()
