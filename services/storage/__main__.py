"""`python -m services.storage` (or `vidmesh storage`)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from services.storage import Storage, StorageSettings
from shared import config, runtime


def main() -> None:
    settings = config.load(StorageSettings)

    async def build(nc: NATS) -> runtime.Service:
        return Storage(nc, settings)

    runtime.main(settings, "storage", build)


if __name__ == "__main__":
    main()
