"""Events made from stored records: the job and rendition events the record store publishes
after each change (types in `events`)."""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from shared.messages.events import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobHeld,
    JobPurged,
    JobQueued,
    JobRemoved,
    JobStarted,
    RenditionCancelled,
    RenditionDispatched,
    RenditionEvent,
    RenditionFailed,
    RenditionReleased,
    RenditionRetrying,
    RenditionStarted,
    RenditionSucceeded,
    now,
)
from shared.messages.records import JobRecord, JobStatus, Rendition, RenditionState


class _JobFields(TypedDict):
    event_id: str
    time: datetime
    job_id: str
    owner: str
    device_id: str
    item_id: str
    revision: int
    status: JobStatus


class _RenditionFields(TypedDict):
    event_id: str
    time: datetime
    key: str
    generation: int
    revision: int
    state: RenditionState


def _job_common(job: JobRecord, revision: int) -> _JobFields:
    return {
        "event_id": f"job:{job.id}:{revision}",
        "time": now(),
        "job_id": job.id,
        "owner": job.owner,
        "device_id": job.device_id,
        "item_id": job.item_id,
        "revision": revision,
        "status": job.status,
    }


def job_event(job: JobRecord, revision: int, *, created: bool = False) -> JobEvent:
    """The event that reports `job` as stored at `revision`."""
    common = _job_common(job, revision)
    if created:
        return JobAccepted(
            **common, profile=job.profile, container=job.container, client=job.client
        )
    status = job.status
    if status is JobStatus.HELD:
        return JobHeld(**common)
    if status is JobStatus.QUEUED:
        return JobQueued(**common)
    if status is JobStatus.RUNNING:
        return JobStarted(**common, shared=job.shared)
    if status is JobStatus.COMPLETED:
        assert job.output is not None
        return JobCompleted(**common, output=job.output, shared=job.shared)
    if status is JobStatus.FAILED:
        assert job.error is not None
        return JobFailed(**common, error=job.error)
    if status is JobStatus.CANCELLED:
        return JobCancelled(**common)
    return JobRemoved(**common, reason=job.removal_reason or "")


def job_purged(job: JobRecord, revision: int) -> JobPurged:
    """The event that reports the deletion of `job`'s record."""
    common = _job_common(job, revision)
    common["event_id"] = f"job:{job.id}:{revision}:purged"
    return JobPurged(**common)


def rendition_event(r: Rendition, revision: int, *, wall_seconds: float = 0.0) -> RenditionEvent:
    """The event that reports rendition `r` as stored at `revision`."""
    common: _RenditionFields = {
        "event_id": f"rendition:{r.key}:{revision}",
        "time": now(),
        "key": r.key,
        "generation": r.generation,
        "revision": revision,
        "state": r.state,
    }
    state = r.state
    if state is RenditionState.DISPATCHED and r.last_error is not None and r.attempt > 0:
        return RenditionRetrying(**common, attempt=r.attempt, error=r.last_error)
    if state is RenditionState.DISPATCHED or state is RenditionState.PENDING:
        return RenditionDispatched(**common, pool=r.pool, dispatch_seq=r.dispatch_seq)
    if state is RenditionState.RUNNING:
        return RenditionStarted(**common, worker=r.worker or "", attempt=r.attempt)
    if state is RenditionState.DONE:
        assert r.output is not None
        return RenditionSucceeded(
            **common, output=r.output, attempt=r.attempt, wall_seconds=wall_seconds
        )
    if state is RenditionState.FAILED:
        assert r.last_error is not None
        return RenditionFailed(**common, error=r.last_error, attempt=r.attempt)
    if state is RenditionState.CANCELLED:
        return RenditionCancelled(**common)
    blob = r.output.blob if r.output else ""
    return RenditionReleased(**common, blob=blob)
