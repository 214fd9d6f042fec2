"""`python -m services.transcoder` (or `vidmesh transcoder`)."""

import os

from services.transcoder import Transcoder, TranscoderSettings
from shared.runtime import run_service


def pin_to_configured_cpus(settings: TranscoderSettings) -> None:
    """Run on VIDMESH_CPUS, if set: before any thread starts, so every thread and ffmpeg
    inherits it."""
    wanted = settings.cpu_set
    if not wanted:
        return
    available = os.sched_getaffinity(0)
    if not wanted <= available:
        missing = ",".join(str(c) for c in sorted(wanted - available))
        raise SystemExit(f"VIDMESH_CPUS names CPUs this process may not use: {missing}")
    os.sched_setaffinity(0, wanted)


if __name__ == "__main__":
    run_service(
        "transcoder",
        TranscoderSettings,
        lambda nc, settings: Transcoder(nc, settings, own_process=True),
        prepare=pin_to_configured_cpus,
    )
