"""What JetStream KV holds: job records, renditions, live progress, leases, workers, totals.

A *job* is one client's request. A *rendition* is one transcode of one source with one profile into
one container: several jobs asking for the same thing share a rendition and its output. The
scheduler owns both state machines (see `shared.jobs.state`); a transcoder only claims a rendition,
reports its outcome on it, and writes live progress.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec

from shared.cardinality import DistinctCount
from shared.media.presets import PresetSpec
from shared.media.probe import ProbeResult
from shared.wire import JobError

Timestamp = Annotated[float, msgspec.Meta(description="Seconds since the Unix epoch (UTC)")]
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$", description="SHA-256, hex")]


class JobStatus(enum.StrEnum):
    """Where a job is. Faces map these onto their own words."""

    QUEUED = "queued"
    PAUSED = "paused"  # in a batch that has not been started
    HELD = "held"  # waiting until the device has downloaded enough of its finished jobs
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REMOVED = "removed"  # the client is done with it, or its output expired or was cleared


class RenditionState(enum.StrEnum):
    """Where one transcode is."""

    PENDING = "pending"  # wants a transcoder; no lease yet
    DISPATCHED = "dispatched"  # leased and published as work; waiting for a transcoder
    RUNNING = "running"  # claimed by a transcoder
    DONE = "done"  # output stored
    FAILED = "failed"
    CANCELLED = "cancelled"  # no job wanted it any more
    RELEASED = "released"  # output no longer needed; its blob is deleted


class Destination(msgspec.Struct, frozen=True, kw_only=True):
    """Where an output goes instead of the service's store: a user's storage and a prefix."""

    store: str
    prefix: str = ""


class Output(msgspec.Struct, frozen=True, kw_only=True):
    """A finished, stored output (`store` "" is the service's store)."""

    store: str = ""
    blob: str
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Sha256
    container: str
    mime: str
    mode: str = "transcode"  # "transcode" | "copy" (streams copied, not re-encoded)
    duration: float | None = None
    video: str = ""
    audio: str = ""


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One client's request for a rendition, and everything that happened to it."""

    id: str
    owner: str
    owner_name: str = ""
    client: str = "streamyfin"
    device_id: str = ""
    item_id: str = ""
    item: dict[str, Any] | None = None
    source: str
    # The preset's name, and the spec it resolved to when the job was accepted.
    profile: str = "optimized"
    spec: PresetSpec | None = None
    container: str = "mp4"
    priority: int = 0
    # The file name the output is downloaded under (default: <item id or job id>.<container>).
    output_name: str = ""
    # Set by a restart: makes the job's rendition its own, so it is transcoded anew.
    nonce: str = ""
    batch: str = ""
    destination: Destination | None = None
    # The transcoder pool that runs it ("" = the scheduler's default pool).
    pool: str = ""
    # Where the job's events are delivered as signed webhooks ("" = nowhere).
    notify_url: str = ""
    # SHA-256 of the request that carried an Idempotency-Key ("" = none was sent).
    request_sha256: str = ""
    # The integer id the OpenEncoder face gave the job (None: another face took it).
    openencoder_id: int | None = None
    status: JobStatus = JobStatus.QUEUED
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    removed_at: Timestamp | None = None
    keep_until: Timestamp | None = None
    removal_reason: str | None = None
    rendition: str | None = None
    generation: int = 0
    manual_start: bool = False
    shared: bool = False
    attempts: int = 0
    duration_hint: float | None = None
    downloaded_at: Timestamp | None = None
    probe: ProbeResult | None = None
    output: Output | None = None
    error: JobError | None = None


class Split(msgspec.Struct, frozen=True, kw_only=True):
    """How a split rendition's work was divided into parts (bucket `parts`): set once, by the
    transcoder that claimed the rendition and planned it."""

    segments: Annotated[int, msgspec.Meta(ge=1, description="Video parts, v0000 onwards")]
    audio: bool  # whether an audio part exists (the plan keeps audio)
    seconds: Annotated[
        float, msgspec.Meta(gt=0, description="The source's duration: what progress measures")
    ]
    # What the parts read: "" is the rendition's source; else the blob key of its stored copy.
    source: str = ""
    encoder: Annotated[
        str, msgspec.Meta(min_length=1, description="The video encoder every segment uses")
    ]
    segment_seconds: Annotated[
        float, msgspec.Meta(gt=0, description="The segment length it was planned with")
    ]
    at: Timestamp


class Rendition(msgspec.Struct, frozen=True, kw_only=True):
    """One transcode: a source, a profile and a container, shared by every job that asks for it."""

    key: str
    generation: int = 1
    source: str
    profile: str
    spec: PresetSpec | None = None
    container: str
    pool: str = "default"
    priority: int = 0
    # Whose credentials read an object source (s3://, gs://, az://).
    owner: str = ""
    destination: Destination | None = None
    output_name: str = ""
    state: RenditionState = RenditionState.PENDING
    created_at: Timestamp
    updated_at: Timestamp
    dispatched_at: Timestamp | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    manual: bool = False
    first_device: str = ""
    dispatch_seq: int = 0
    attempt: int = 0
    worker: str | None = None
    # The claimed work item's acknowledgement subject: lets a peer hand a dead worker's work
    # back to JetStream at once instead of waiting for ack_wait.
    ack_subject: str = ""
    duration_hint: float | None = None
    probe: ProbeResult | None = None
    last_error: JobError | None = None
    output: Output | None = None
    # Set: its work is its parts (bucket `parts`) and it has no worker of its own.
    split: Split | None = None


PartKind = Literal["video", "audio", "join"]

PartName = Annotated[
    str,
    msgspec.Meta(
        pattern="^(v[0-9]{4,}|audio|join)$",
        description="v0000 onwards for a span of video, `audio`, or `join`",
    ),
]


class Part(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of a split rendition's work, with a rendition's states and moves: a span of its
    video, its whole audio, or the join of them all into its output. Key
    `<rendition>.<generation>.<name>`; written by transcoders (claim, outcome) and the scheduler
    (dispatch, cancel), always by compare-and-set."""

    key: str
    rendition: str
    generation: int
    name: PartName
    kind: PartKind
    # Video only: the segment's number, the time of its first frame (a keyframe of the source),
    # where the next segment starts (None: at the end) and its exact frame count.
    index: Annotated[int, msgspec.Meta(ge=0)] = 0
    start: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    end: float | None = None
    frames: Annotated[int, msgspec.Meta(ge=0)] = 0
    pool: str  # the pool it is leased in
    state: RenditionState = RenditionState.PENDING
    dispatch_seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    attempt: Annotated[int, msgspec.Meta(ge=0)] = 0
    worker: str | None = None
    # The claimed work item's acknowledgement subject, as on a rendition.
    ack_subject: str = ""
    pipeline: str = ""  # what its last attempt ran on ("cpu", "nvdec")
    output: Output | None = None  # its stored file, under parts/
    last_error: JobError | None = None
    created_at: Timestamp
    updated_at: Timestamp
    dispatched_at: Timestamp | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None


class PartLive(msgspec.Struct, frozen=True, kw_only=True):
    """A running part's latest report, inside its rendition's progress."""

    out_time: Annotated[float, msgspec.Meta(ge=0, description="Seconds of the part encoded")]
    speed: float | None = None
    fps: float | None = None
    attempt: Annotated[int, msgspec.Meta(ge=0)] = 0
    at: Timestamp


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """Live progress of a running rendition, written by its transcoder about once a second (by
    each of its running parts' transcoders, folded together, when it is split)."""

    key: str
    generation: int
    attempt: int
    stage: str  # "starting" | "probing" | "encoding" | "storing"
    percent: float = 0.0
    speed: float | None = None
    fps: float | None = None
    out_time: float = 0.0
    total: float | None = None
    estimated: bool = False
    bytes_written: int = 0
    eta: float | None = None
    updated_at: Timestamp
    # A split rendition: its video parts, how many are done, the media seconds they cover, and
    # the parts running now (by name). All zero or empty for a whole-file transcode.
    segments: Annotated[int, msgspec.Meta(ge=0)] = 0
    segments_done: Annotated[int, msgspec.Meta(ge=0)] = 0
    done_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    running: dict[str, PartLive] = {}
    # A split rendition: when its first video part reported; its ETA is the rate since then.
    measured_from: Timestamp | None = None


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A rendition's (or one of its parts') claim on one of a pool's concurrency slots: one KV
    key per lease, `<pool>.slot.<n>` (n below the pool's limit) or `<pool>.manual.<rendition>`
    for a manual start beyond it (see `shared.nats.leases`), created and deleted only by
    compare-and-set."""

    generation: int
    since: Timestamp
    manual: bool = False
    # The rendition holding the slot, and its pool ("" only inside an old LeaseSet).
    rendition: str = ""
    pool: str = ""
    # "" leases the whole rendition; else the name of the part of it that holds the slot.
    part: str = ""


class LeaseSet(msgspec.Struct, frozen=True, kw_only=True):
    """Before leases had a key each: every lease of one pool in one record (key `<pool>`). Only
    read to migrate it into lease keys when a scheduler starts; never written."""

    pool: str
    holders: dict[str, Lease] = {}


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    """History folded from the event stream by the statistics service."""

    last_seq: int = 0
    jobs_accepted: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    renditions_succeeded: int = 0
    renditions_failed: int = 0
    shared_hits: int = 0
    media_seconds: float = 0.0
    bytes_produced: int = 0
    # Distinct Streamyfin device ids seen, in bounded space (exact while few).
    unique_devices: DistinctCount = DistinctCount()
    # Before `unique_devices`: every device id itself (unbounded). Folded into it and emptied by
    # the statistics service; never grown.
    devices: list[str] = []


class StorageSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What the blob store holds, and the transcode cache (work files), as last measured."""

    store: str
    files: int
    bytes: int
    cache_files: int = 0
    cache_bytes: int = 0
    updated_at: Timestamp


class OutputNameClaim(msgspec.Struct, frozen=True, kw_only=True):
    """Gives one object name in a user's storage to one rendition (key: a hash of the storage
    and the object key), so no other rendition's output is ever written over it."""

    store: str  # the bucket's safe name (no prefix, no credentials); `key` is its whole key
    key: str
    rendition: str
    at: Timestamp
