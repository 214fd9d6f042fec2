"""Commands: a client's intent, published by the gateway, consumed by the service that owns it."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.media.presets import PresetSpec
from shared.messages.records import Destination, Timestamp


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Common fields of every command."""

    command_id: str
    by: str = ""
    at: Timestamp


class SubmitJob(Command, frozen=True, kw_only=True, tag="job.submit"):
    """A new job, as a face accepted it from its caller: the scheduler's intake applies the
    fleet's ceilings to `spec` and stores the record (`job_id` must be new; a job that exists
    already is left as it is, so a redelivered or repeated submission changes nothing)."""

    job_id: str
    owner: str
    owner_name: str = ""
    # Which face took the request ("api", "streamyfin", ...).
    client: str = "api"
    source: str
    # The preset's name and the spec the face resolved it to (before the fleet's ceilings).
    profile: str = "optimized"
    spec: PresetSpec
    priority: int = 0
    # The name the output is downloaded under ("" = the default).
    output_name: str = ""
    # A batch the job waits in, paused, until the batch is started.
    batch: str = ""
    paused: bool = False
    destination: Destination | None = None
    # The transcoder pool that runs it ("" = the default pool).
    pool: str = ""
    # Where the job's events are delivered as signed webhooks, and the signing secret of that
    # subscription, sealed by the face (the caller saw it once, in the answer).
    notify_url: str = ""
    notify_secret: str = ""
    # The Streamyfin app's device, the Jellyfin item and its duration.
    device_id: str = ""
    item_id: str = ""
    item: dict[str, Any] | None = None
    duration_hint: float | None = None
    # SHA-256 of the request that carried an Idempotency-Key: the same key with another
    # request is refused.
    request_sha256: str = ""
    # The integer id the OpenEncoder face gave the job (from its counter in NATS).
    openencoder_id: int | None = None


class CancelJob(Command, frozen=True, kw_only=True, tag="job.cancel"):
    """Stop a job that has not finished. A finished job is left as it is; with `pending_only`,
    so is a running one (cancelling every pending task leaves running ones alone, including one
    that started after it was asked for)."""

    job_id: str
    pending_only: bool = False


class ReleaseJob(Command, frozen=True, kw_only=True, tag="job.release"):
    """The client is done with a job: stop it if active, otherwise let its output go."""

    job_id: str


class StartJob(Command, frozen=True, kw_only=True, tag="job.start"):
    """Start a queued job now, ahead of the queue and beyond the concurrency limit."""

    job_id: str


class RetryJob(Command, frozen=True, kw_only=True, tag="job.retry"):
    """Run a failed or cancelled job again."""

    job_id: str


class RestartJob(Command, frozen=True, kw_only=True, tag="job.restart"):
    """Run a finished job again from scratch (`nonce` makes its transcode its own)."""

    job_id: str
    nonce: str


class ConfirmDownload(Command, frozen=True, kw_only=True, tag="job.confirm"):
    """The client has its copy of the output; retention extends from now."""

    job_id: str


class DeleteOutput(Command, frozen=True, kw_only=True, tag="job.delete_output"):
    """Let a finished job's output go now."""

    job_id: str


class PurgeJob(Command, frozen=True, kw_only=True, tag="job.purge"):
    """An operator deletes a finished job's record. A job that still holds its output is
    deleted only with `remove_file` (the output goes first); an unfinished job is left as it is."""

    job_id: str
    remove_file: bool = False


class StartBatch(Command, frozen=True, kw_only=True, tag="batch.start"):
    """Move a batch's paused jobs into the queue."""

    batch_id: str
    job_ids: list[str]


class RenameOutputs(Command, frozen=True, kw_only=True, tag="batch.rename"):
    """New download names for paused jobs (job id -> name)."""

    names: dict[str, str]


class CleanupJobs(Command, frozen=True, kw_only=True, tag="jobs.cleanup"):
    """An operator's cleanup: jobs that finished before `before` let their outputs go, and
    their records are purged."""

    before: Timestamp
    statuses: list[str] = []


class ClearCache(Command, frozen=True, kw_only=True, tag="cache.clear"):
    """Remove finished outputs from the service's store; no job is left pointing at a removed
    file. An administrator's clear (`admin`) removes every one; any other clears what `owner`'s
    own jobs hold, and an output another user's job also holds stays for that user."""

    # The user whose cache it is (the Jellyfin user id on the Streamyfin face); "" is nobody's.
    owner: str = ""
    admin: bool = False


class DeleteBlobs(Command, frozen=True, kw_only=True, tag="blobs.delete"):
    """Delete these blobs from the store (sent by the scheduler to the storage service)."""

    blobs: list[str]
    reason: str = ""
    # The ClearCache command this deletion completes, if any.
    request_id: str = ""
    # Also delete unrecorded files older than the storage's orphan grace (an administrator's clear).
    sweep_orphans: bool = False


SchedulerCommand = (
    SubmitJob
    | CancelJob
    | ReleaseJob
    | StartJob
    | RetryJob
    | RestartJob
    | ConfirmDownload
    | DeleteOutput
    | PurgeJob
    | StartBatch
    | RenameOutputs
    | CleanupJobs
    | ClearCache
)
StorageCommand = DeleteBlobs

SCHEDULER_DECODER = msgspec.json.Decoder(SchedulerCommand)
STORAGE_DECODER = msgspec.json.Decoder(StorageCommand)
ENCODER = msgspec.json.Encoder()


def kind(command: Command | type[Command]) -> str:
    """The last subject token for a command (or command type): its tag with dots turned into
    underscores."""
    tag = msgspec.inspect.type_info(command if isinstance(command, type) else type(command))
    assert isinstance(tag, msgspec.inspect.StructType)
    return str(tag.tag).replace(".", "_")
