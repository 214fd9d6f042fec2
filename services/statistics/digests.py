"""The few fields of the job, rendition and session records that telemetry reads.

The statistics service keeps an in-memory copy of those buckets (a KV watch); decoding only these
fields (msgspec skips the rest) keeps that copy small: a session record carries its argv, stderr
tail and throughput history, none of which a metric needs. Every field has a default, so records
written by newer versions still decode.
"""

from __future__ import annotations

import msgspec

from shared.messages.fleet import DEFAULT_POOL


class JobDigest(msgspec.Struct, frozen=True, kw_only=True):
    """A job record (`shared.messages.records.JobRecord`), as telemetry reads it."""

    status: str = ""
    pool: str = ""  # "" is the default pool
    rendition: str | None = None


class RenditionDigest(msgspec.Struct, frozen=True, kw_only=True):
    """A rendition record (`shared.messages.records.Rendition`), as telemetry reads it."""

    generation: int = 0
    profile: str = ""  # the preset's name
    pool: str = DEFAULT_POOL
    state: str = ""


class OutputDigest(msgspec.Struct, frozen=True, kw_only=True):
    """A stored output (`shared.messages.records.Output`), as telemetry reads it."""

    duration: float | None = None
    size: int | None = None
    mode: str = ""  # "copy" | "transcode"


class SessionDigest(msgspec.Struct, frozen=True, kw_only=True):
    """A transcode session (`shared.messages.fleet.TranscodeSession`), as telemetry reads it."""

    rendition: str = ""
    pool: str = DEFAULT_POOL
    state: str = ""
    started_at: float = 0.0
    ended_at: float | None = None
    output: OutputDigest | None = None
