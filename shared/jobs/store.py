"""Writes to job and rendition records, each followed by the event that reports it.

Every change goes through compare-and-set; the event is published only after the change is stored,
with an id derived from the record's key and new revision, so a retried publish is de-duplicated.

A job's events reach the events stream in revision order:
- only the scheduler writes job records (the gateway submits a `SubmitJob` command instead);
- in one process, a job's write and the publish of its event happen under that job's own lock, so
  no coroutine of the process (command handler, reconcile loop, intake) stores and announces a
  later revision of the job between another's write and its publish;
- across processes (scheduler replicas), a writer that replaced a revision it did not announce
  itself publishes that revision's event first, under the same event id: the stream keeps whichever
  copy lands first and drops the other as a duplicate, so a later revision is never stored ahead
  of the one it replaced. This is done only for revisions younger than `PREDECESSOR_WINDOW`, well
  inside the stream's de-duplication window (older ones were announced long ago, or by the repair).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import structlog
from nats.js import JetStreamContext

from shared.jobs import events as record_events
from shared.messages import events
from shared.messages.records import JobRecord, JobStatus, Progress, Rendition
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import Buckets, announce
from shared.recent import Recent

# Seconds: a replaced revision younger than this has its event published again by the writer that
# replaced it (the events stream de-duplicates for 120 s).
PREDECESSOR_WINDOW = 60.0
# Jobs whose last announced revision this process remembers.
_ANNOUNCED_MAX = 20_000

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
        self._job_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # job id -> the last revision whose event this process published
        self._announced: Recent[str, int] = Recent(_ANNOUNCED_MAX)

    async def emit(self, event: events.Event) -> bool:
        """Publish an event, retrying briefly; whether it was published. A failure is logged,
        never raised (the change is already stored, and the scheduler re-publishes a job event
        that never made it)."""
        return await announce(self.js, self.names, event)

    async def create_job(self, job: JobRecord) -> int:
        """Store a new job (its id must be new: raises `Stale` if it exists) and announce it."""
        async with self._turn(job.id):
            revision = await self.jobs.create(job.id, job)
            if self.job_view is not None:
                self.job_view.apply(job.id, job, revision)
            await self._announce(record_events.job_event(job, revision, created=True), revision)
        return revision

    async def change_job(self, job_id: str, fn: JobFn) -> JobRecord | None:
        """Apply `fn` with compare-and-set; returns the record as it now is (None if absent).

        `fn` returns the new record, or None to leave it as it is (it may raise to refuse)."""
        async with self._turn(job_id):
            # from the job as our projection has it (our own writes at once): compare-and-set
            # checks the guess, and a wrong one costs a read
            known = self.job_view.versioned(job_id) if self.job_view is not None else None
            done = await self.jobs.replace(job_id, fn, known=known)
            if not done.changed or done.record is None or done.revision is None:
                return done.record
            if self.job_view is not None:
                self.job_view.apply(job_id, done.record, done.revision)
            if done.before is not None:
                await self._announce_replaced(done.before.value, done.before.revision)
            created = done.before is None
            await self._announce(
                record_events.job_event(done.record, done.revision, created=created),
                done.revision,
            )
            return done.record

    async def delete_job(self, job: JobRecord, revision: int) -> None:
        """Delete a job record that is still at `revision`."""
        async with self._turn(job.id):
            await self.jobs.delete(job.id, revision)
            if self.job_view is not None:
                self.job_view.apply(job.id, None, revision + 1)
            await self._announce_replaced(job, revision)
            await self.emit(record_events.job_purged(job, revision))
            self._announced.pop(job.id, None)

    async def announce_current(self, job_id: str, revision: int) -> bool:
        """Publish the event of a job revision whose writer died before publishing it, if the
        job is still at that revision (a later one's writer publishes it first); whether it was."""
        async with self._turn(job_id):
            current = await self.jobs.get(job_id)
            if current is None or current.revision != revision:
                return False
            return await self.emit(stored_event(current.value, revision))

    @contextlib.asynccontextmanager
    async def _turn(self, job_id: str) -> AsyncIterator[None]:
        """This process's turn to write and announce job `job_id` (one at a time per job)."""
        lock, users = self._job_locks.get(job_id, (asyncio.Lock(), 0))
        self._job_locks[job_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._job_locks[job_id]
            if users <= 1:
                del self._job_locks[job_id]
            else:
                self._job_locks[job_id] = (lock, users - 1)

    def announced(self, job_id: str, revision: int) -> bool:
        """Whether this process published the event of the job's `revision` itself."""
        return self._announced.get(job_id) == revision

    async def _announce(self, event: events.JobEvent, revision: int) -> None:
        if not await self.emit(event):
            return  # the next writer of the job publishes it first (or the repair does)
        self._announced.remember(event.job_id, revision)

    async def _announce_replaced(self, job: JobRecord, revision: int) -> None:
        """Make sure the event of the revision just replaced is in the stream before the new
        one's (see the module docstring)."""
        if self._announced.get(job.id) == revision:
            return  # announced by this process
        if job.updated_at < time.time() - PREDECESSOR_WINDOW:
            return  # announced long ago; published again it would not be de-duplicated
        await self.emit(stored_event(job, revision))

    async def change_rendition(
        self, key: str, fn: RenditionFn, *, wall_seconds: float = 0.0
    ) -> tuple[Rendition | None, bool]:
        """Apply `fn` with compare-and-set; returns (record as it now is, whether we changed it)."""
        known = self.rendition_view.versioned(key) if self.rendition_view is not None else None
        done = await self.renditions.replace(key, fn, known=known)
        record, revision, changed = done.record, done.revision, done.changed
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


def stored_event(job: JobRecord, revision: int) -> events.JobEvent:
    """The event of a job revision read back from the bucket: a job that has not changed since
    it was accepted (queued or paused, never attached, updated when created) reads as accepted."""
    created = (
        job.updated_at == job.created_at
        and job.rendition is None
        and job.status in (JobStatus.QUEUED, JobStatus.PAUSED)
    )
    return record_events.job_event(job, revision, created=created)
