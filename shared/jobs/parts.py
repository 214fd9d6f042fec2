"""The part state machine: the pieces of a split rendition's work, each a work item of its own.

A split rendition's work is one part per span of its video, one for its whole audio and one that
joins them into its output. A part moves through the rendition's states by the rendition's own
table (`RENDITION_TRANSITIONS`), so leases, claims, retries and takeovers mean what they mean for
a rendition. Pure like the rest of `shared.jobs.state`, which re-exports every name here; import
them from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import msgspec

from shared.jobs.renditions import split_live
from shared.jobs.transitions import RENDITION_TRANSITIONS, InvalidTransition
from shared.messages.records import Output, Part, PartKind, Rendition, RenditionState, Split
from shared.wire import JobError

R = RenditionState

AUDIO = "audio"
JOIN = "join"


class Segment(Protocol):
    """A span of the source's video as the media core plans it: from a keyframe to the next cut."""

    @property
    def index(self) -> int: ...

    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float | None: ...

    @property
    def frames(self) -> int: ...


def video_part_name(index: int) -> str:
    """The name of the part that encodes segment `index` (`v0007`)."""
    return f"v{index:04d}"


def part_key(rendition: str, generation: int, name: str) -> str:
    """The part's key in the parts bucket: `<rendition>.<generation>.<name>`."""
    return f"{rendition}.{generation}.{name}"


def part_order(p: Part) -> tuple[int, int]:
    """Order in which parts go to work: the audio first (it is never the straggler), the video
    spans in order, the join last."""
    rank = {"audio": 0, "video": 1, "join": 2}[p.kind]
    return rank, p.index


def _move_part(p: Part, to: RenditionState, now: float, **changes: object) -> Part:
    if to not in RENDITION_TRANSITIONS[p.state]:
        raise InvalidTransition(f"part {p.key} is {p.state}; it cannot become {to}")
    return msgspec.structs.replace(p, state=to, updated_at=now, **changes)


def new_parts(r: Rendition, split: Split, segments: Sequence[Segment], now: float) -> list[Part]:
    """Every part of `r`'s split, pending, in the order they go to work: the audio (when the
    split has one), a video part per segment, the join."""
    if [s.index for s in segments] != list(range(split.segments)):
        raise ValueError(
            f"rendition {r.key} is split into {split.segments} segments, numbered from 0; "
            f"got {[s.index for s in segments]}"
        )

    def part(name: str, kind: PartKind) -> Part:
        return Part(
            key=part_key(r.key, r.generation, name),
            rendition=r.key,
            generation=r.generation,
            name=name,
            kind=kind,
            pool=r.pool,
            created_at=now,
            updated_at=now,
        )

    audio = [part(AUDIO, "audio")] if split.audio else []
    video = [
        msgspec.structs.replace(
            part(video_part_name(s.index), "video"),
            index=s.index,
            start=s.start,
            end=s.end,
            frames=s.frames,
        )
        for s in segments
    ]
    return [*audio, *video, part(JOIN, "join")]


def dispatch_part(p: Part, now: float, pool: str | None = None) -> Part:
    """The part holds a lease and its work item is published, in `pool` (a helper pool that
    leased a video part; None: the part's own)."""
    return _move_part(
        p,
        R.DISPATCHED,
        now,
        dispatched_at=now,
        dispatch_seq=p.dispatch_seq + 1,
        pool=pool or p.pool,
    )


def can_claim_part(p: Part, r: Rendition | None, worker: str, *, redelivered: bool) -> bool:
    """Whether `worker` may take the part: its rendition is still split at the part's generation,
    and the part waits for a transcoder, or runs on another whose work item came back to us (a
    redelivery means that transcoder stopped heartbeating)."""
    if r is None or r.key != p.rendition or not split_live(r, p.generation):
        return False
    if p.state in (R.PENDING, R.DISPATCHED):
        return True
    return p.state is R.RUNNING and redelivered and p.worker != worker


def claim_part(p: Part, worker: str, now: float, ack_subject: str = "") -> Part:
    """A transcoder takes the part; a running one is taken over (its worker stopped)."""
    return _move_part(
        p,
        R.RUNNING,
        now,
        worker=worker,
        attempt=p.attempt + 1,
        started_at=now,
        ack_subject=ack_subject,
    )


def retry_part(p: Part, error: JobError, now: float) -> Part:
    """An attempt failed in a way that may pass, or its transcoder is shutting down."""
    return _move_part(p, R.DISPATCHED, now, worker=None, last_error=error)


def succeed_part(p: Part, output: Output, now: float) -> Part:
    """The part's file is stored."""
    return _move_part(p, R.DONE, now, output=output, finished_at=now, last_error=None)


def fail_part(p: Part, error: JobError, now: float) -> Part:
    """The part failed for good (and with it, its rendition)."""
    return _move_part(p, R.FAILED, now, last_error=error, finished_at=now)


def cancel_part(p: Part, now: float) -> Part:
    """Its rendition ended or moved on to another generation: the part is not wanted."""
    return _move_part(p, R.CANCELLED, now, finished_at=now)


def part_owned_by(p: Part, worker: str, attempt: int) -> bool:
    """Whether `worker` still holds this attempt of the part."""
    return p.state is R.RUNNING and p.worker == worker and p.attempt == attempt


def ready_to_join(split: Split, parts: Iterable[Part]) -> bool:
    """Whether every video part of the split (and its audio, when it has one) is stored, so the
    join may run. Parts of other generations are the caller's to leave out."""
    done = {p.name for p in parts if p.kind != "join" and p.state is R.DONE}
    wanted = {video_part_name(i) for i in range(split.segments)}
    if split.audio:
        wanted.add(AUDIO)
    return wanted <= done


def part_failed(parts: Iterable[Part]) -> Part | None:
    """The part that failed for good, first in work order; None while none has."""
    failed = [p for p in parts if p.state is R.FAILED]
    return min(failed, key=part_order, default=None)
