"""What the scheduler decided should change: small typed values, made by `decide` and carried out
by `apply` (compare-and-set writes to job and rendition records, lease keys, work items).

Each change names the record it writes (`target`); one pass writes each job at most once.
A change that writes a job carries what the decision saw, so `apply` can tell a job that changed
meanwhile and decide again on the record it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.messages.records import JobRecord, Lease, Part, Rendition
from shared.messages.work import JoinWork, SegmentWork, TranscodeWork

# ---- jobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    """A queued job waits: its Streamyfin device has `limit` outputs cached or being made."""

    job_id: str
    device: str
    limit: int


@dataclass(frozen=True, slots=True)
class Unhold:
    """A held job goes back to the queue: its device has room again."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Place:
    """A queued job without a rendition gets one: the rendition its request asks for is made (or
    renewed, or joined: marked manual, its priority raised), then the job is attached, unless the
    rendition was made from another request's URL and no share check said yes (`allowed`): then
    the job's own URL is checked first, beside the loop."""

    job: JobRecord
    key: str
    pool: str
    allowed: bool = False


@dataclass(frozen=True, slots=True)
class PlaceOwn:
    """A job whose share check did not say yes gets a rendition of its own (`key`), made from
    its own URL, and is attached to it."""

    job: JobRecord
    key: str
    pool: str


@dataclass(frozen=True, slots=True)
class Detach:
    """The job's rendition ended without it (cancelled, released, gone, or renewed): it looks for
    a rendition again."""

    job_id: str
    rendition: str
    generation: int


@dataclass(frozen=True, slots=True)
class Start:
    """The job's rendition is being transcoded: the job is running."""

    job_id: str
    rendition: Rendition


@dataclass(frozen=True, slots=True)
class Complete:
    """The job's rendition is done: the job completes with its output, kept `keep_seconds`."""

    job_id: str
    rendition: Rendition
    keep_seconds: float


@dataclass(frozen=True, slots=True)
class Fail:
    """The job's rendition failed for good: so does the job, with its error."""

    job_id: str
    rendition: Rendition


@dataclass(frozen=True, slots=True)
class Expire:
    """A completed job's output reached the end of its retention."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Purge:
    """A job that ended long ago is deleted (if it is still at `revision`)."""

    job: JobRecord
    revision: int


@dataclass(frozen=True, slots=True)
class ClearOutput:
    """A cache clear takes the job's output from it."""

    job_id: str


# ---- renditions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarkManual:
    """A job asked to start now follows the rendition: it is leased beyond the pool's limit."""

    key: str


@dataclass(frozen=True, slots=True)
class CancelOrphan:
    """A live rendition that no active job follows is stopped."""

    key: str


@dataclass(frozen=True, slots=True)
class ReleaseOutput:
    """A done rendition whose output no job needs is released; its blob goes to the storage
    service. For a cache clear (`request_id`), the blob is returned to the clear instead, and
    only jobs outside `cleared` count as needing it (None: none count)."""

    key: str
    request_id: str = ""
    cleared: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class DeleteRendition:
    """An ended rendition that no job names any more is deleted (if still at `revision`)."""

    key: str
    revision: int


# ---- leases and work ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """The rendition's work item goes to its pool, then the rendition is marked dispatched."""

    rendition: Rendition
    work: TranscodeWork


@dataclass(frozen=True, slots=True)
class PublishPart:
    """A part's work item goes to `pool` (its own, or for a video part a helper pool), then the
    part is marked dispatched there."""

    rendition: Rendition
    part: Part
    work: SegmentWork | JoinWork
    pool: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A lease key is created for a pending rendition or part (refused if another replica has
    it); once it is ours, the work is published."""

    key: str
    lease: Lease
    then: Publish | PublishPart


@dataclass(frozen=True, slots=True)
class Release:
    """A lease whose rendition no longer holds it (or a rendition's second lease) is deleted at
    the revision it was read at."""

    key: str
    revision: int


# ---- parts of split renditions --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailSplit:
    """A part of a split rendition failed for good: the rendition fails with its error."""

    key: str
    generation: int
    part: str  # the failed part's key


@dataclass(frozen=True, slots=True)
class CancelParts:
    """The rendition ended, moved on to another generation or is gone: its parts of
    `generation` that are still live are cancelled (their transcoders stop)."""

    key: str
    generation: int
    parts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DropParts:
    """Every part of an ended generation has ended: their files (and the stored copy of the
    source) go to the storage service, then the part records are deleted at the revisions
    read."""

    key: str
    generation: int
    blobs: tuple[str, ...]
    revisions: tuple[tuple[str, int], ...]


JobChange = (
    Hold
    | Unhold
    | Place
    | PlaceOwn
    | Detach
    | Start
    | Complete
    | Fail
    | Expire
    | Purge
    | ClearOutput
)
RenditionChange = MarkManual | CancelOrphan | ReleaseOutput | DeleteRendition
LeaseChange = Publish | PublishPart | Claim | Release
PartChange = FailSplit | CancelParts | DropParts
Change = JobChange | RenditionChange | LeaseChange | PartChange


def target(change: Change) -> tuple[str, str]:
    """The record a change writes first: ("job", id), ("rendition", key), ("lease", key),
    ("work", key) for a rendition's work item, or ("part", key) for a part's work item and for
    the parts of one generation of a rendition (`<rendition>.<generation>`)."""
    match change:
        case Place(job=job) | PlaceOwn(job=job) | Purge(job=job):
            return "job", job.id
        case (
            Hold(job_id=job_id)
            | Unhold(job_id=job_id)
            | Detach(job_id=job_id)
            | Start(job_id=job_id)
            | Complete(job_id=job_id)
            | Fail(job_id=job_id)
            | Expire(job_id=job_id)
            | ClearOutput(job_id=job_id)
        ):
            return "job", job_id
        case (
            MarkManual(key=key)
            | CancelOrphan(key=key)
            | ReleaseOutput(key=key)
            | DeleteRendition(key=key)
        ):
            return "rendition", key
        case Publish(rendition=r):
            return "work", r.key
        case PublishPart(part=p):
            return "part", p.key
        case FailSplit(key=key):
            return "rendition", key
        case (
            CancelParts(key=key, generation=generation) | DropParts(key=key, generation=generation)
        ):
            return "part", f"{key}.{generation}"
        case Claim(key=key) | Release(key=key):
            return "lease", key


def merged(changes: list[Change]) -> list[Change]:
    """The changes with at most one per job (the first decided wins): one pass writes a job at
    most once. Other records may be written twice in order (a lease released and its slot given
    out again; a rendition joined, then dispatched)."""
    seen: set[str] = set()
    kept: list[Change] = []
    for change in changes:
        kind, name = target(change)
        if kind == "job":
            if name in seen:
                continue
            seen.add(name)
        kept.append(change)
    return kept
