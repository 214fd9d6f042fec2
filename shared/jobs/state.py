"""The job and rendition state machines: transitions as data, pure functions that apply them.

Nothing here does I/O or reads a clock: callers pass `now`. Every function returns a new record or
raises `InvalidTransition`; the allowed moves are the tables in `shared.jobs.transitions`, and a
test walks them. This module holds the job machine and re-exports the rendition machine
(`shared.jobs.renditions`), the part machine of split renditions (`shared.jobs.parts`), the job
queries (`shared.jobs.queries`) and the job as accepted (`shared.jobs.accepted`): callers import
from here.
"""

from __future__ import annotations

import msgspec

from shared.jobs.accepted import new_job, submitted_job
from shared.jobs.parts import (
    _move_part as _move_part,  # the guarded step the transition-table test walks
)
from shared.jobs.parts import (
    can_claim_part,
    cancel_part,
    claim_part,
    dispatch_part,
    fail_part,
    new_parts,
    part_failed,
    part_key,
    part_order,
    part_owned_by,
    ready_to_join,
    retry_part,
    succeed_part,
    video_part_name,
)
from shared.jobs.queries import (
    CLEANABLE,
    CleanableStatus,
    can_confirm_download,
    can_release,
    can_restart,
    can_retry,
    can_start,
    cleanable,
    cleanup_due,
    counts_toward_device_limit,
    follows,
    holds_output,
    is_active,
    purge_due,
)
from shared.jobs.renditions import (
    _move_rendition as _move_rendition,  # the guarded step the transition-table test walks
)
from shared.jobs.renditions import (
    cancel_rendition,
    claim,
    dispatch,
    fail_rendition,
    joined,
    mark_manual,
    new_rendition,
    own_rendition_key,
    owned_by,
    raise_priority,
    release_rendition,
    rendition_key_of,
    renew,
    retry,
    split_live,
    split_rendition,
    succeed,
    undispatch,
)
from shared.jobs.transitions import (
    ACTIVE,
    FINISHED,
    JOB_TRANSITIONS,
    RENDITION_ENDED,
    RENDITION_LIVE,
    RENDITION_TRANSITIONS,
    InvalidTransition,
)
from shared.media.probe import ProbeResult
from shared.messages.records import (
    JobRecord,
    JobStatus,
    Output,
    Rendition,
)
from shared.wire import JobError

__all__ = [
    "ACTIVE",
    "CACHE_CLEARED",
    "CLEANABLE",
    "CLEANED_UP",
    "DELETED",
    "DISMISSED",
    "DOWNLOADED",
    "EXPIRED",
    "FINISHED",
    "JOB_TRANSITIONS",
    "RENDITION_ENDED",
    "RENDITION_LIVE",
    "RENDITION_TRANSITIONS",
    "CleanableStatus",
    "InvalidTransition",
    "attach",
    "can_claim_part",
    "cancel_part",
    "claim_part",
    "dispatch_part",
    "fail_part",
    "joined",
    "new_parts",
    "part_failed",
    "part_key",
    "part_order",
    "part_owned_by",
    "ready_to_join",
    "retry_part",
    "split_live",
    "split_rendition",
    "succeed_part",
    "video_part_name",
    "can_confirm_download",
    "can_release",
    "can_restart",
    "can_retry",
    "can_start",
    "submitted_job",
    "cancel",
    "cancel_rendition",
    "claim",
    "clean_up",
    "cleanable",
    "cleanup_due",
    "clear_output",
    "complete",
    "confirm_download",
    "counts_toward_device_limit",
    "delete_output",
    "detach",
    "dispatch",
    "expire",
    "fail",
    "fail_rendition",
    "follows",
    "hold",
    "holds_output",
    "is_active",
    "mark_manual",
    "new_job",
    "new_rendition",
    "own_rendition_key",
    "owned_by",
    "purge_due",
    "raise_priority",
    "release",
    "release_rendition",
    "rename",
    "rendition_key_of",
    "renew",
    "request_start",
    "restart_job",
    "retry",
    "retry_job",
    "start",
    "succeed",
    "unhold",
    "undispatch",
    "unpause",
]

J = JobStatus

# Why a job was removed (JobRecord.removal_reason).
DOWNLOADED = "downloaded"
DISMISSED = "dismissed"
EXPIRED = "expired"
CACHE_CLEARED = "cache_cleared"
DELETED = "deleted"
CLEANED_UP = "cleaned_up"


def _move_job(job: JobRecord, to: JobStatus, now: float, **changes: object) -> JobRecord:
    if to not in JOB_TRANSITIONS[job.status]:
        raise InvalidTransition(f"job {job.id} is {job.status}; it cannot become {to}")
    return msgspec.structs.replace(job, status=to, updated_at=now, **changes)


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
    if not can_retry(job):
        raise InvalidTransition(
            f"job {job.id} is {job.status}; only a failed or cancelled job is retried"
        )
    return _requeue(job, now, nonce=job.nonce)


def restart_job(job: JobRecord, now: float, nonce: str) -> JobRecord:
    """Run a finished job again from scratch: a transcode of its own, whatever exists."""
    if not can_restart(job):
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
    if not can_confirm_download(job):
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
