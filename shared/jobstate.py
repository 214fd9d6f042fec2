"""The job and rendition state machines: transitions as data, pure functions that apply them.

Nothing here does I/O or reads a clock: callers pass `now`. Every function returns a new record or
raises `InvalidTransition`; the allowed moves are the tables below, and a test walks them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from shared.errors import Conflict
from shared.media.presets import PresetSpec, builtin, spec_fingerprint
from shared.media.probe import ProbeResult
from shared.messages.records import (
    Destination,
    JobError,
    JobRecord,
    JobStatus,
    Output,
    Rendition,
    RenditionState,
)
from shared.sources import is_object_uri, rendition_key

J = JobStatus
R = RenditionState

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    J.QUEUED: frozenset({J.QUEUED, J.HELD, J.RUNNING, J.COMPLETED, J.FAILED, J.CANCELLED}),
    J.PAUSED: frozenset({J.PAUSED, J.QUEUED, J.CANCELLED}),
    J.HELD: frozenset({J.QUEUED, J.CANCELLED}),
    J.RUNNING: frozenset({J.QUEUED, J.COMPLETED, J.FAILED, J.CANCELLED}),
    J.COMPLETED: frozenset({J.COMPLETED, J.REMOVED, J.QUEUED}),
    J.FAILED: frozenset({J.REMOVED, J.QUEUED}),
    J.CANCELLED: frozenset({J.REMOVED, J.QUEUED}),
    J.REMOVED: frozenset({J.REMOVED, J.QUEUED}),
}

RENDITION_TRANSITIONS: dict[RenditionState, frozenset[RenditionState]] = {
    R.PENDING: frozenset({R.DISPATCHED, R.RUNNING, R.FAILED, R.CANCELLED}),
    R.DISPATCHED: frozenset({R.PENDING, R.RUNNING, R.FAILED, R.CANCELLED}),
    R.RUNNING: frozenset({R.RUNNING, R.DISPATCHED, R.DONE, R.FAILED, R.CANCELLED}),
    R.DONE: frozenset({R.RELEASED}),
    R.FAILED: frozenset({R.PENDING}),
    R.CANCELLED: frozenset({R.PENDING}),
    R.RELEASED: frozenset({R.PENDING}),
}

ACTIVE = frozenset({J.QUEUED, J.PAUSED, J.HELD, J.RUNNING})
FINISHED = frozenset({J.COMPLETED, J.FAILED, J.CANCELLED})
RENDITION_LIVE = frozenset({R.PENDING, R.DISPATCHED, R.RUNNING})
RENDITION_ENDED = frozenset({R.FAILED, R.CANCELLED, R.RELEASED})

# Why a job was removed (JobRecord.removal_reason).
DOWNLOADED = "downloaded"
DISMISSED = "dismissed"
EXPIRED = "expired"
CACHE_CLEARED = "cache_cleared"
DELETED = "deleted"
CLEANED_UP = "cleaned_up"


class InvalidTransition(Conflict):
    """The record's current state does not allow the requested change."""

    code = "invalid_transition"


def _move_job(job: JobRecord, to: JobStatus, now: float, **changes: object) -> JobRecord:
    if to not in JOB_TRANSITIONS[job.status]:
        raise InvalidTransition(f"job {job.id} is {job.status}; it cannot become {to}")
    return msgspec.structs.replace(job, status=to, updated_at=now, **changes)


def _move_rendition(r: Rendition, to: RenditionState, now: float, **changes: object) -> Rendition:
    if to not in RENDITION_TRANSITIONS[r.state]:
        raise InvalidTransition(f"rendition {r.key} is {r.state}; it cannot become {to}")
    return msgspec.structs.replace(r, state=to, updated_at=now, **changes)


# ---- jobs ---------------------------------------------------------------------------------


def new_job(
    *,
    job_id: str,
    owner: str,
    source: str,
    now: float,
    owner_name: str = "",
    client: str = "streamyfin",
    device_id: str = "",
    item_id: str = "",
    item: dict[str, Any] | None = None,
    profile: str = "optimized",
    spec: PresetSpec | None = None,
    container: str = "mp4",
    duration_hint: float | None = None,
    priority: int = 0,
    output_name: str = "",
    batch: str = "",
    paused: bool = False,
    destination: Destination | None = None,
    pool: str = "",
    notify_url: str = "",
) -> JobRecord:
    """A job as accepted: queued (or paused, in a batch), not yet attached to a rendition."""
    return JobRecord(
        id=job_id,
        owner=owner,
        owner_name=owner_name,
        client=client,
        device_id=device_id,
        item_id=item_id,
        item=item,
        source=source,
        profile=profile,
        spec=spec,
        container=container,
        priority=priority,
        output_name=output_name,
        batch=batch,
        destination=destination,
        pool=pool,
        notify_url=notify_url,
        status=J.PAUSED if paused else J.QUEUED,
        created_at=now,
        updated_at=now,
        duration_hint=duration_hint,
    )


def hold(job: JobRecord, now: float) -> JobRecord:
    """Queued job waits: its device has too many finished jobs not yet downloaded."""
    return _move_job(job, J.HELD, now, rendition=None, generation=0)


def unhold(job: JobRecord, now: float) -> JobRecord:
    """Held job goes back to the queue."""
    return _move_job(job, J.QUEUED, now)


def attach(job: JobRecord, rendition: Rendition, now: float, *, shared: bool) -> JobRecord:
    """Queued job joins a rendition (`shared`: one another job asked for first)."""
    if job.status is not J.QUEUED:
        raise InvalidTransition(f"job {job.id} is {job.status}; only a queued job attaches")
    return _move_job(
        job,
        J.QUEUED,
        now,
        rendition=rendition.key,
        generation=rendition.generation,
        shared=shared,
    )


def detach(job: JobRecord, now: float) -> JobRecord:
    """The job's rendition ended without it; the job looks for a rendition again."""
    return _move_job(job, J.QUEUED, now, rendition=None, generation=0, started_at=None)


def start(job: JobRecord, rendition: Rendition, now: float) -> JobRecord:
    """The job's rendition is being transcoded."""
    return _move_job(
        job,
        J.RUNNING,
        now,
        started_at=job.started_at or now,
        attempts=rendition.attempt,
        probe=rendition.probe or job.probe,
    )


def complete(
    job: JobRecord,
    output: Output,
    keep_seconds: float,
    now: float,
    attempts: int = 0,
    probe: ProbeResult | None = None,
) -> JobRecord:
    """The job's output is stored; it is kept `keep_seconds` unless the client lets it go."""
    return _move_job(
        job,
        J.COMPLETED,
        now,
        output=output,
        probe=probe or job.probe,
        attempts=attempts or job.attempts,
        finished_at=now,
        keep_until=now + keep_seconds,
        started_at=job.started_at or now,
    )


def fail(job: JobRecord, error: JobError, now: float, attempts: int = 0) -> JobRecord:
    """The job failed for good."""
    return _move_job(job, J.FAILED, now, error=error, finished_at=now, attempts=attempts)


def cancel(job: JobRecord, now: float) -> JobRecord:
    """Stop an active job; a finished job is returned unchanged."""
    if job.status not in ACTIVE:
        return job
    return _move_job(job, J.CANCELLED, now, finished_at=now)


def release(job: JobRecord, *, remove_file_now: bool, keep_seconds: float, now: float) -> JobRecord:
    """The client is done with the job (Streamyfin's `DELETE /cancel-job` after its download).

    Active: cancelled. Completed: removed as downloaded; its output goes now, or after
    `keep_seconds` when the operator keeps files after download. Failed or cancelled: removed.
    """
    if job.status in ACTIVE:
        return cancel(job, now)
    if job.status is J.REMOVED:
        return job
    if job.status is J.COMPLETED:
        keep_until = now if remove_file_now else now + keep_seconds
        return _move_job(
            job, J.REMOVED, now, removed_at=now, keep_until=keep_until, removal_reason=DOWNLOADED
        )
    return _move_job(job, J.REMOVED, now, removed_at=now, keep_until=now, removal_reason=DISMISSED)


def expire(job: JobRecord, now: float) -> JobRecord:
    """A completed job's output reached the end of its retention."""
    return _move_job(job, J.REMOVED, now, removed_at=now, keep_until=now, removal_reason=EXPIRED)


def clear_output(job: JobRecord, now: float) -> JobRecord:
    """The cache is being cleared: the job no longer holds an output."""
    if job.status is J.COMPLETED:
        return _move_job(
            job, J.REMOVED, now, removed_at=now, keep_until=now, removal_reason=CACHE_CLEARED
        )
    if job.status is J.REMOVED and job.keep_until is not None and job.keep_until > now:
        return msgspec.structs.replace(job, keep_until=now, updated_at=now)
    return job


def unpause(job: JobRecord, now: float) -> JobRecord:
    """A paused batch job joins the queue."""
    return _move_job(job, J.QUEUED, now)


def rename(job: JobRecord, output_name: str, now: float) -> JobRecord:
    """Change the download name of a paused job."""
    if job.status is not J.PAUSED:
        raise InvalidTransition(f"job {job.id} is {job.status}; only a paused job is renamed")
    return msgspec.structs.replace(job, output_name=output_name, updated_at=now)


def retry_job(job: JobRecord, now: float) -> JobRecord:
    """Run a failed or cancelled job again (an output of the same request may be reused)."""
    if job.status not in (J.FAILED, J.CANCELLED):
        raise InvalidTransition(
            f"job {job.id} is {job.status}; only a failed or cancelled job is retried"
        )
    return _requeue(job, now, nonce=job.nonce)


def restart_job(job: JobRecord, now: float, nonce: str) -> JobRecord:
    """Run a finished job again from scratch: a transcode of its own, whatever exists."""
    if job.status not in (J.COMPLETED, J.FAILED, J.CANCELLED, J.REMOVED):
        raise InvalidTransition(f"job {job.id} is {job.status}; only a finished job is restarted")
    return _requeue(job, now, nonce=nonce)


def _requeue(job: JobRecord, now: float, *, nonce: str) -> JobRecord:
    return _move_job(
        job,
        J.QUEUED,
        now,
        nonce=nonce,
        rendition=None,
        generation=0,
        manual_start=False,
        shared=False,
        attempts=0,
        started_at=None,
        finished_at=None,
        removed_at=None,
        keep_until=None,
        removal_reason=None,
        downloaded_at=None,
        output=None,
        error=None,
    )


def confirm_download(job: JobRecord, keep_seconds: float, now: float) -> JobRecord:
    """The client has its copy: the output stays `keep_seconds` from now (retention extends)."""
    if job.status is not J.COMPLETED:
        raise InvalidTransition(f"job {job.id} is {job.status}; only a completed job is confirmed")
    keep_until = max(job.keep_until or now, now + keep_seconds)
    return _move_job(job, J.COMPLETED, now, downloaded_at=now, keep_until=keep_until)


def delete_output(job: JobRecord, now: float) -> JobRecord:
    """The client asks for the output to go now."""
    if job.status is J.COMPLETED:
        return _move_job(
            job, J.REMOVED, now, removed_at=now, keep_until=now, removal_reason=DELETED
        )
    if job.status is J.REMOVED and job.keep_until is not None and job.keep_until > now:
        return msgspec.structs.replace(job, keep_until=now, updated_at=now)
    raise InvalidTransition(f"job {job.id} is {job.status}; it has no output to delete")


def clean_up(job: JobRecord, now: float) -> JobRecord:
    """An operator's cleanup: a completed job lets its output go; others are left for purging."""
    if job.status is J.COMPLETED:
        return _move_job(
            job, J.REMOVED, now, removed_at=now, keep_until=now, removal_reason=CLEANED_UP
        )
    return job


def request_start(job: JobRecord, now: float) -> JobRecord:
    """Mark a queued job to start now, ahead of the queue."""
    if job.status is not J.QUEUED:
        raise InvalidTransition(f"job {job.id} is {job.status}; only a queued job can be started")
    return msgspec.structs.replace(job, manual_start=True, updated_at=now)


def can_start(job: JobRecord) -> bool:
    return job.status is J.QUEUED


def holds_output(job: JobRecord, now: float) -> bool:
    """Whether the job still needs its rendition's output to stay stored."""
    if job.status is J.COMPLETED:
        return True
    return job.status is J.REMOVED and job.keep_until is not None and job.keep_until > now


def counts_toward_device_limit(job: JobRecord) -> bool:
    """Jobs that occupy a device's share: started (or about to) and finished but not downloaded."""
    if job.status is J.QUEUED:
        return job.rendition is not None
    return job.status in (J.RUNNING, J.COMPLETED)


def follows(job: JobRecord, r: Rendition) -> bool:
    """Whether an active job is attached to this generation of the rendition."""
    return (
        job.status in (J.QUEUED, J.RUNNING)
        and job.rendition == r.key
        and job.generation == r.generation
    )


def purge_due(job: JobRecord, keep_seconds: float, now: float) -> bool:
    """Whether a job that ended long enough ago can be deleted."""
    if job.status is J.REMOVED:
        ended = job.removed_at or job.updated_at
    elif job.status in (J.FAILED, J.CANCELLED):
        ended = job.finished_at or job.updated_at
    else:
        return False
    return now >= ended + keep_seconds and not holds_output(job, now)


# ---- renditions ---------------------------------------------------------------------------


def rendition_key_of(job: JobRecord) -> str:
    """The rendition a job asks for: its media (credentials aside), preset spec and container;
    a restarted job's nonce makes the rendition its own."""
    spec = job.spec or builtin(job.profile)
    key = rendition_key(job.source, spec_fingerprint(spec), job.container)
    extra = []
    if job.nonce:
        extra.append(f"nonce={job.nonce}")
    if job.destination is not None:
        extra.append(f"to={job.destination.store}/{job.destination.prefix}/{job.output_name}")
    if is_object_uri(job.source):
        extra.append(f"owner={job.owner}")  # read with the owner's own credentials
    if extra:
        key = hashlib.sha256("\n".join([key, *extra]).encode()).hexdigest()[:40]
    return key


def new_rendition(
    key: str, job: JobRecord, now: float, *, generation: int = 1, pool: str = "default"
) -> Rendition:
    """A fresh rendition for `job`'s source, profile and container."""
    return Rendition(
        key=key,
        generation=generation,
        source=job.source,
        profile=job.profile,
        spec=job.spec,
        container=job.container,
        pool=pool,
        priority=job.priority,
        owner=job.owner,
        destination=job.destination,
        output_name=job.output_name,
        created_at=now,
        updated_at=now,
        manual=job.manual_start,
        first_device=job.device_id,
        duration_hint=job.duration_hint,
    )


def renew(r: Rendition, job: JobRecord, now: float) -> Rendition:
    """Start a new generation of an ended rendition for `job`."""
    if r.state not in RENDITION_ENDED:
        raise InvalidTransition(f"rendition {r.key} is {r.state}; only an ended one is renewed")
    fresh = new_rendition(r.key, job, now, generation=r.generation + 1, pool=r.pool)
    return msgspec.structs.replace(fresh, dispatch_seq=r.dispatch_seq)


def raise_priority(r: Rendition, priority: int, now: float) -> Rendition:
    return msgspec.structs.replace(r, priority=max(r.priority, priority), updated_at=now)


def mark_manual(r: Rendition, now: float) -> Rendition:
    return msgspec.structs.replace(r, manual=True, updated_at=now)


def dispatch(r: Rendition, now: float) -> Rendition:
    """The rendition holds a lease and its work item is published."""
    return _move_rendition(r, R.DISPATCHED, now, dispatched_at=now, dispatch_seq=r.dispatch_seq + 1)


def undispatch(r: Rendition, now: float) -> Rendition:
    """Give the lease back without running (the work item was never published)."""
    return _move_rendition(r, R.PENDING, now)


def claim(r: Rendition, worker: str, now: float, ack_subject: str = "") -> Rendition:
    """A transcoder takes the rendition; a running one is taken over (its worker stopped)."""
    return _move_rendition(
        r,
        R.RUNNING,
        now,
        worker=worker,
        attempt=r.attempt + 1,
        started_at=now,
        ack_subject=ack_subject,
    )


def retry(r: Rendition, error: JobError, now: float) -> Rendition:
    """An attempt failed in a way that may pass, or its transcoder is shutting down."""
    return _move_rendition(r, R.DISPATCHED, now, worker=None, last_error=error)


def succeed(r: Rendition, output: Output, now: float) -> Rendition:
    return _move_rendition(r, R.DONE, now, output=output, finished_at=now, last_error=None)


def fail_rendition(r: Rendition, error: JobError, now: float) -> Rendition:
    return _move_rendition(r, R.FAILED, now, last_error=error, finished_at=now)


def cancel_rendition(r: Rendition, now: float) -> Rendition:
    return _move_rendition(r, R.CANCELLED, now, finished_at=now)


def release_rendition(r: Rendition, now: float) -> Rendition:
    return _move_rendition(r, R.RELEASED, now)


def owned_by(r: Rendition, worker: str, generation: int, attempt: int) -> bool:
    """Whether `worker` still holds this attempt of the rendition."""
    return (
        r.state is R.RUNNING
        and r.worker == worker
        and r.generation == generation
        and r.attempt == attempt
    )
