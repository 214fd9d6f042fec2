"""`python -m services.transcoder` (or `vidmesh transcoder`)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from services.transcoder import Transcoder, TranscoderSettings
from shared import config, runtime


def main() -> None:
    settings = config.load(TranscoderSettings)

    async def build(nc: NATS) -> runtime.Service:
        return Transcoder(nc, settings)

    runtime.main(settings, "transcoder", build)


if __name__ == "__main__":
    main()
