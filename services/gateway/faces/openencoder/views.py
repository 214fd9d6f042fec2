"""Jobs in OpenEncoder's words: the list item (integer id, guid, preset, ISO date) and the job
status words its clients switch on, mapped from the job state machine."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from shared.messages.records import JobRecord, JobStatus, Progress

# A running job's live stage (the transcoder's word) in OpenEncoder's words.
_LIVE = {"starting": "downloading", "probing": "probing", "encoding": "encoding"}
_LIVE |= {"storing": "uploading"}
_SETTLED = {
    JobStatus.QUEUED: "queued",
    JobStatus.PAUSED: "queued",
    JobStatus.HELD: "queued",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "error",
    JobStatus.CANCELLED: "cancelled",
}


class JobItem(msgspec.Struct, kw_only=True):
    """A job: its integer id, its 20-character guid, its preset and when it was created."""

    id: int
    guid: str
    preset: str
    created_date: str


class JobList(msgspec.Struct, kw_only=True):
    """One page of the caller's jobs, newest first; `count` is every job the caller has."""

    count: int
    items: list[JobItem]


class JobStatusAnswer(msgspec.Struct, kw_only=True):
    """Where a job is: queued, downloading, probing, encoding, uploading, completed, error or
    cancelled."""

    status: int
    job_status: str


def iso(timestamp: float) -> str:
    """A time as OpenEncoder writes it: 2019-07-14T00:00:00Z."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_item(job: JobRecord) -> JobItem:
    assert job.openencoder_id is not None
    return JobItem(
        id=job.openencoder_id, guid=job.id, preset=job.profile, created_date=iso(job.created_at)
    )


def status_word(job: JobRecord, live: Progress | None) -> str:
    """The job's status in OpenEncoder's words."""
    if job.status is JobStatus.RUNNING:
        return _LIVE.get(live.stage, "encoding") if live else "downloading"
    if job.status is JobStatus.REMOVED:  # its output expired or was let go
        if job.output is not None:
            return "completed"
        return "error" if job.error is not None else "cancelled"
    return _SETTLED[job.status]
