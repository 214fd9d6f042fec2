"""A job as the Streamyfin app reads it: the original server's status words and field names,
and the rendering of a job record into them (progress from the live progress, credentials in a
source URL shown to its owner only)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from services.gateway.jellyfin import JellyfinUser
from services.gateway.state import Gateway
from shared.media import get_container
from shared.messages.records import JobRecord, JobStatus
from shared.sources import redact

STATUS_WORDS: dict[JobStatus, str] = {
    JobStatus.QUEUED: "queued",
    JobStatus.PAUSED: "queued",  # native API batches; the original had no such state
    JobStatus.HELD: "pending downloads limit",
    JobStatus.RUNNING: "optimizing",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.REMOVED: "ready-for-removal",
}


class StreamyfinJob(msgspec.Struct, kw_only=True):
    """A job as the Streamyfin app reads it (plus a few fields it ignores)."""

    id: str
    status: str
    progress: float
    speed: float | None
    outputPath: str
    inputUrl: str
    deviceId: str
    itemId: str
    item: dict[str, Any]
    timestamp: str
    size: int
    checksum: str | None
    fileExtension: str
    eta: float | None = None
    error: str | None = None
    shared: bool = False


def to_streamyfin(gw: Gateway, job: JobRecord, viewer: JellyfinUser) -> StreamyfinJob:
    """The job in the original's shape; a URL's credentials show only to the job's owner."""
    progress, speed, eta = 0.0, None, None
    live = gw.progress_of(job)
    if live is not None:
        progress, speed, eta = live.percent, live.speed, live.eta
    elif job.output is not None:
        progress = 100.0
    output = job.output
    return StreamyfinJob(
        id=job.id,
        status=STATUS_WORDS[job.status],
        progress=progress,
        speed=speed,
        outputPath=output.blob if output else "",
        inputUrl=job.source if viewer.id == job.owner else redact(job.source),
        deviceId=job.device_id,
        itemId=job.item_id,
        item=job.item or {},
        timestamp=_iso(job.created_at),
        size=output.size if output else 0,
        checksum=output.sha256 if output else None,
        fileExtension=get_container(job.container).extension.lstrip("."),
        eta=eta,
        error=job.error.reason if job.error else None,
        shared=job.shared,
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
