"""Questions asked of a job record: may it start, does it hold an output, can it be purged, does
an operator's cleanup take it.

Pure like the rest of `shared.jobs.state`, which re-exports every name here; import them from there.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from shared.jobs.transitions import ACTIVE, FINISHED
from shared.messages.records import JobRecord, JobStatus, Rendition

J = JobStatus

# The statuses an operator's cleanup may name: the finished ones and removed.
CLEANABLE = FINISHED | {J.REMOVED}
# The same as the words a request names them by (a Literal, so request bodies and the OpenAPI
# document list them; a test checks it matches CLEANABLE).
CleanableStatus = Literal["completed", "failed", "cancelled", "removed"]


def can_start(job: JobRecord) -> bool:
    """Whether the job may be started ahead of the queue (only a queued job can)."""
    return job.status is J.QUEUED


def is_active(job: JobRecord) -> bool:
    """Whether the job has not finished yet (so cancelling stops it)."""
    return job.status in ACTIVE


def can_retry(job: JobRecord) -> bool:
    """Whether the job may be run again as it was (only a failed or cancelled job)."""
    return job.status in (J.FAILED, J.CANCELLED)


def can_restart(job: JobRecord) -> bool:
    """Whether the job may be run again from scratch (only a finished one)."""
    return job.status in (J.COMPLETED, J.FAILED, J.CANCELLED, J.REMOVED)


def can_confirm_download(job: JobRecord) -> bool:
    """Whether the client may confirm its download (only of a completed job)."""
    return job.status is J.COMPLETED


def can_release(job: JobRecord) -> bool:
    """Whether the client's release changes anything (a removed job is released already)."""
    return job.status is not J.REMOVED


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


def cleanable(statuses: Collection[str]) -> frozenset[JobStatus]:
    """The statuses a cleanup asked for by name takes (every cleanable one when none is named;
    names of other statuses are ignored)."""
    named = {J(s) for s in statuses if s in J.__members__.values()} & CLEANABLE
    return frozenset(named) if named else CLEANABLE


def cleanup_due(job: JobRecord, before: float, statuses: Collection[JobStatus] = CLEANABLE) -> bool:
    """Whether an operator's cleanup of the jobs that ended before `before` takes this one: its
    status is one of `statuses` and it has ended (finished or removed) before then."""
    ended = job.removed_at or job.finished_at
    return job.status in statuses and ended is not None and ended < before
