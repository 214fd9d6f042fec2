"""Writes to job and rendition records, each followed by the event that reports it.

Every change goes through compare-and-set; the event is published only after the change is stored,
with an id derived from the record's key and new revision, so a retried publish is de-duplicated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from nats.js import JetStreamContext

from shared.jobs import events as record_events
from shared.messages import events
from shared.messages.records import JobRecord, Progress, Rendition
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import Buckets, describe, publish_event

_EMIT_RETRY_DELAYS = (0.1, 0.5, 2.0)

log = structlog.get_logger("vidmesh.records")

JobFn = Callable[[JobRecord | None], JobRecord | None]
RenditionFn = Callable[[Rendition | None], Rendition | None]


class RecordStore:
    """Job and rendition records of one namespace; optional projections see our writes at once."""

    def __init__(self, js: JetStreamContext, names: Names, buckets: Buckets) -> None:
        self.js = js
        self.names = names
        self.jobs = TypedKV(buckets.jobs, JobRecord)
        self.renditions = TypedKV(buckets.renditions, Rendition)
        self.progress = TypedKV(buckets.progress, Progress)
        self.job_view: Projection[JobRecord] | None = None
        self.rendition_view: Projection[Rendition] | None = None

    async def emit(self, event: events.Event) -> None:
        """Publish an event, retrying briefly; a failure is logged, never raised (the change is
        already stored, and the scheduler re-publishes a job event that never made it)."""
        for delay in (*_EMIT_RETRY_DELAYS, None):
            try:
                await publish_event(self.js, self.names, event)
                return
            except Exception as exc:
                if delay is None:
                    log.error("event.publish_failed", event_id=event.event_id, **describe(exc))
                    return
                await asyncio.sleep(delay)

    async def create_job(self, job: JobRecord) -> int:
        """Store a new job (its id must be new) and announce it."""
        revision = await self.jobs.create(job.id, job)
        if self.job_view is not None:
            self.job_view.apply(job.id, job, revision)
        await self.emit(record_events.job_event(job, revision, created=True))
        return revision

    async def change_job(self, job_id: str, fn: JobFn) -> JobRecord | None:
        """Apply `fn` with compare-and-set; returns the record as it now is (None if absent)."""
        record, revision, changed = await self.jobs.change(job_id, fn)
        if changed and record is not None and revision is not None:
            if self.job_view is not None:
                self.job_view.apply(job_id, record, revision)
            await self.emit(record_events.job_event(record, revision))
        return record

    async def delete_job(self, job: JobRecord, revision: int) -> None:
        """Delete a job record that is still at `revision`."""
        await self.jobs.delete(job.id, revision)
        if self.job_view is not None:
            self.job_view.apply(job.id, None, revision + 1)
        await self.emit(record_events.job_purged(job, revision))

    async def change_rendition(
        self, key: str, fn: RenditionFn, *, wall_seconds: float = 0.0
    ) -> tuple[Rendition | None, bool]:
        """Apply `fn` with compare-and-set; returns (record as it now is, whether we changed it)."""
        record, revision, changed = await self.renditions.change(key, fn)
        if changed and record is not None and revision is not None:
            if self.rendition_view is not None:
                self.rendition_view.apply(key, record, revision)
            await self.emit(
                record_events.rendition_event(record, revision, wall_seconds=wall_seconds)
            )
        return record, changed

    async def delete_rendition(self, key: str, revision: int) -> None:
        await self.renditions.delete(key, revision)
        if self.rendition_view is not None:
            self.rendition_view.apply(key, None, revision + 1)
