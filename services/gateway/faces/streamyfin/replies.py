"""The Streamyfin API's answers besides the job itself, as msgspec types: the handlers return
them and /openapi-streamyfin.json documents them. Field names are the original server's."""

from __future__ import annotations

import msgspec


class Accepted(msgspec.Struct, kw_only=True):
    """`POST /optimize-version`: the new job's id (the app treats anything but 201 as failure)."""

    id: str


class Cancelled(msgspec.Struct, kw_only=True):
    """`DELETE /cancel-job/:id`: the job let go (its status word now)."""

    message: str
    id: str
    status: str


class Started(msgspec.Struct, kw_only=True):
    """`POST /start-job/:id`: a queued job started at once."""

    message: str
    id: str


class Statistics(msgspec.Struct, kw_only=True):
    """`GET /statistics`: the original's five fields, then vidmesh's own counts."""

    cacheSize: str
    totalTranscodes: int
    activeJobs: int
    completedJobs: int
    uniqueDevices: int
    cacheBytes: int
    cachedFiles: int
    queuedJobs: int
    failedJobs: int
    cancelledJobs: int
    renditionsEncoded: int
    sharedOutputs: int
    mediaSecondsProcessed: float


class CacheDeleted(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`DELETE /delete-cache`: what was deleted (202 with only `message` while it still runs)."""

    message: str
    deletedFiles: int | None = None
    freedBytes: int | None = None
