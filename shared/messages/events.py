"""Events: the public contract for subscribers, on `<ns>.evt.>` (see schemas/events.json).

Each event is published after the change it reports is stored, once per change: its `event_id`
(also its `Nats-Msg-Id`) derives from the record's key and revision. Subjects:

- `<ns>.evt.job.<job_id>.<kind>`: accepted, held, queued, started, completed, failed, cancelled,
  removed, purged
- `<ns>.evt.rendition.<key>.<kind>`: dispatched, started, retrying, succeeded, failed, cancelled,
  released
- `<ns>.evt.storage.<kind>`: blobs_deleted
- `<ns>.evt.worker.<worker_id>.<kind>`: online, offline, health_changed
- `<ns>.evt.pool.<pool_id>.<kind>`: created, updated, deleted
- `<ns>.evt.webhook.<subscription_id>.<kind>`: created, updated, disabled, deleted
- `<ns>.evt.probe.<probe_id>.<kind>`: finished
- `<ns>.evt.cleanup.<cleanup_id>.<kind>`: finished

New fields get defaults; a field's type and an event's tag never change (schema_version counts
compatible additions).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import msgspec

from shared.messages.records import (
    JobStatus,
    Output,
    RenditionState,
)
from shared.wire import JobError

SCHEMA_VERSION = 1


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries."""

    event_id: str
    schema_version: int = SCHEMA_VERSION
    time: datetime


class JobEvent(Event, frozen=True, kw_only=True):
    """A change of a job record."""

    job_id: str
    owner: str
    device_id: str = ""
    item_id: str = ""
    revision: int
    status: JobStatus


class JobAccepted(JobEvent, frozen=True, kw_only=True, tag="job.accepted"):
    """A job was accepted and stored."""

    profile: str
    container: str
    client: str = ""


class JobHeld(JobEvent, frozen=True, kw_only=True, tag="job.held"):
    """The job waits until its device has downloaded some of its finished jobs."""


class JobQueued(JobEvent, frozen=True, kw_only=True, tag="job.queued"):
    """The job is back in the queue (its device is under its limit again, or it will run again)."""


class JobStarted(JobEvent, frozen=True, kw_only=True, tag="job.started"):
    """A transcoder began working on the job's rendition."""

    shared: bool = False


class JobCompleted(JobEvent, frozen=True, kw_only=True, tag="job.completed"):
    """The job's output is stored and can be downloaded."""

    output: Output
    shared: bool = False


class JobFailed(JobEvent, frozen=True, kw_only=True, tag="job.failed"):
    """The job failed; `error.reason` says why in words a user can act on."""

    error: JobError


class JobCancelled(JobEvent, frozen=True, kw_only=True, tag="job.cancelled"):
    """The job was cancelled before it finished."""


class JobRemoved(JobEvent, frozen=True, kw_only=True, tag="job.removed"):
    """The client is done with the job, or its output expired or was cleared."""

    reason: str = ""


class JobPurged(JobEvent, frozen=True, kw_only=True, tag="job.purged"):
    """The job's record was deleted after its retention."""


class RenditionEvent(Event, frozen=True, kw_only=True):
    """A change of a rendition (one transcode shared by one or more jobs)."""

    key: str
    generation: int
    revision: int
    state: RenditionState


class RenditionDispatched(RenditionEvent, frozen=True, kw_only=True, tag="rendition.dispatched"):
    """The rendition got a concurrency slot and was published as work."""

    pool: str
    dispatch_seq: int


class RenditionStarted(RenditionEvent, frozen=True, kw_only=True, tag="rendition.started"):
    """A transcoder claimed the rendition."""

    worker: str
    attempt: int


class RenditionRetrying(RenditionEvent, frozen=True, kw_only=True, tag="rendition.retrying"):
    """An attempt failed in a way that may pass; the rendition will run again."""

    attempt: int
    error: JobError


class RenditionSucceeded(RenditionEvent, frozen=True, kw_only=True, tag="rendition.succeeded"):
    """The output is stored."""

    output: Output
    attempt: int
    wall_seconds: float


class RenditionFailed(RenditionEvent, frozen=True, kw_only=True, tag="rendition.failed"):
    """The rendition failed for good."""

    error: JobError
    attempt: int


class RenditionCancelled(RenditionEvent, frozen=True, kw_only=True, tag="rendition.cancelled"):
    """No job wanted the rendition any more; its transcode was stopped."""


class RenditionReleased(RenditionEvent, frozen=True, kw_only=True, tag="rendition.released"):
    """The output is no longer needed and its blob is being deleted."""

    blob: str = ""


class BlobsDeleted(Event, frozen=True, kw_only=True, tag="storage.blobs_deleted"):
    """The storage service deleted blobs (for a cache clear when `request_id` is set)."""

    request_id: str = ""
    blobs: int
    bytes: int


class WorkerEvent(Event, frozen=True, kw_only=True):
    """A change of a transcoder instance (`worker_id` is unique per process start)."""

    worker_id: str
    host: str
    pool: str


class WorkerOnline(WorkerEvent, frozen=True, kw_only=True, tag="worker.online"):
    """A transcoder started taking work."""

    slots: int
    ffmpeg: str = ""


class WorkerOffline(WorkerEvent, frozen=True, kw_only=True, tag="worker.offline"):
    """A transcoder stopped (cleanly; a crashed one just stops heartbeating)."""


class WorkerHealthChanged(WorkerEvent, frozen=True, kw_only=True, tag="worker.health_changed"):
    """A transcoder's GPU state or the pipelines it offers changed."""

    gpu_state: str
    gpu_reason: str = ""
    pipelines: list[str] = []  # offered now


class PoolEvent(Event, frozen=True, kw_only=True):
    """A change of a transcoder pool's record."""

    pool_id: str
    revision: int


class PoolCreated(PoolEvent, frozen=True, kw_only=True, tag="pool.created"):
    """A pool was created."""

    device: str
    concurrency: int
    enabled: bool


class PoolUpdated(PoolEvent, frozen=True, kw_only=True, tag="pool.updated"):
    """A pool's device, concurrency or enabled flag changed."""

    device: str
    concurrency: int
    enabled: bool


class PoolDeleted(PoolEvent, frozen=True, kw_only=True, tag="pool.deleted"):
    """A pool was deleted."""


class WebhookEvent(Event, frozen=True, kw_only=True):
    """A change of a webhook subscription (its secret never appears)."""

    subscription_id: str
    scope: str  # server | user | job
    owner: str
    revision: int
    url: str
    enabled: bool


class WebhookCreated(WebhookEvent, frozen=True, kw_only=True, tag="webhook.created"):
    """A subscription was created."""


class WebhookUpdated(WebhookEvent, frozen=True, kw_only=True, tag="webhook.updated"):
    """A subscription's URL, event types, description or enabled flag changed."""


class WebhookDisabled(WebhookEvent, frozen=True, kw_only=True, tag="webhook.disabled"):
    """The notifier disabled a subscription whose deliveries kept failing."""

    reason: str


class WebhookDeleted(WebhookEvent, frozen=True, kw_only=True, tag="webhook.deleted"):
    """A subscription was deleted."""


class ProbeFinished(Event, frozen=True, kw_only=True, tag="probe.finished"):
    """A transcoder probed a source for `POST /api/metadata`, and how that ended.

    What it found is the caller's answer; this event says only that the probe ran."""

    probe_id: str
    owner: str = ""
    # The source with its credentials masked.
    source: str
    ok: bool
    error: str = ""
    started_at: datetime


class CleanupFinished(Event, frozen=True, kw_only=True, tag="cleanup.finished"):
    """The scheduler cleaned up finished jobs (`POST /api/admin/jobs/cleanup`)."""

    cleanup_id: str
    by: str
    # Jobs that had finished before this, with one of `statuses`, were cleaned up.
    before: datetime
    statuses: list[str] = []
    jobs: int
    started_at: datetime


def webhook_event(kind: type[WebhookEvent], sub: Any, revision: int, **extra: Any) -> WebhookEvent:
    """The event for subscription `sub` (a WebhookSubscription) stored at `revision`."""
    return kind(
        event_id=f"webhook:{sub.id}:{revision}" + (":deleted" if kind is WebhookDeleted else ""),
        time=now(),
        subscription_id=sub.id,
        scope=str(sub.scope),
        owner=sub.owner,
        revision=revision,
        url=sub.url,
        enabled=sub.enabled,
        **extra,
    )


AnyEvent = (
    JobAccepted
    | JobHeld
    | JobQueued
    | JobStarted
    | JobCompleted
    | JobFailed
    | JobCancelled
    | JobRemoved
    | JobPurged
    | RenditionDispatched
    | RenditionStarted
    | RenditionRetrying
    | RenditionSucceeded
    | RenditionFailed
    | RenditionCancelled
    | RenditionReleased
    | BlobsDeleted
    | WorkerOnline
    | WorkerOffline
    | WorkerHealthChanged
    | PoolCreated
    | PoolUpdated
    | PoolDeleted
    | WebhookCreated
    | WebhookUpdated
    | WebhookDisabled
    | WebhookDeleted
    | ProbeFinished
    | CleanupFinished
)

DECODER = msgspec.json.Decoder(AnyEvent)
ENCODER = msgspec.json.Encoder()


def tag_of(event: Event) -> str:
    """The event's stable tag, e.g. `job.completed`."""
    return _tag_of_type(type(event))


@functools.cache
def _tag_of_type(cls: type[Event]) -> str:
    # type_info evaluates the class's annotations: far too slow to repeat for every event
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return str(info.tag)


def kind_of(event: Event) -> str:
    """The last subject token: the part of the tag after the family (`completed`)."""
    return tag_of(event).split(".", 1)[1]


def now() -> datetime:
    return datetime.now(UTC)
