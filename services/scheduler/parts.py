"""Decisions about the parts of split renditions, pure like `services.scheduler.decide`.

A split rendition's work is its parts (bucket `parts`, see `shared.jobs.parts`): each is leased
and published like a rendition (`services.scheduler.dispatch` takes them with the renditions, in
the order `part_rank` gives), the join only once every other part is stored. Here is what
happens around that: a part that failed for good fails its rendition; the parts of a generation
that ended (done, failed, cancelled, released, renewed or gone) are cancelled while any is live,
then their files go to the storage service and their records are deleted.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.scheduler.changes import CancelParts, Change, DropParts, FailSplit, PublishPart
from services.scheduler.view import View
from shared.blobs.keys import source_copy_key
from shared.jobs import state as jobstate
from shared.messages.records import Part, Rendition, RenditionState
from shared.messages.work import JoinWork, SegmentWork
from shared.wire import JobError

R = RenditionState

# After its join made a rendition done, the join part is given this long to record itself done
# before it is cancelled like any other part (its transcoder died between the two writes).
JOIN_SETTLE_SECONDS = 60.0

# Why a rendition failed when its failed part says nothing (it always should).
PART_FAILED = JobError(code="part_failed", reason="A part of the transcode failed.")


def decide_parts(view: View, key: str, now: float) -> list[Change]:
    """What the parts of the rendition `key` need now, generation by generation: fail the
    rendition for a failed part, or cancel then drop the parts of an ended generation."""
    r = view.renditions.get(key)
    generations: dict[int, list[Part]] = {}
    for p in view.all_parts_of(key):
        generations.setdefault(p.generation, []).append(p)
    changes: list[Change] = []
    for generation, parts in sorted(generations.items()):
        if not generation_ended(r, generation):
            failed = jobstate.part_failed(parts)
            if r is not None and failed is not None and jobstate.split_live(r, generation):
                changes.append(FailSplit(key, generation, failed.key))
            continue
        live = [p for p in parts if p.state in jobstate.RENDITION_LIVE]
        if any(joining(r, p, now) for p in live):
            continue  # its join is recording itself done
        if live:
            changes.append(CancelParts(key, generation, tuple(sorted(p.key for p in live))))
        else:
            changes.append(drop(view, r, key, generation, parts))
    return changes


def generation_ended(r: Rendition | None, generation: int) -> bool:
    """Whether the parts of `generation` are no longer anyone's work: the rendition is gone,
    renewed, or ended (done included). A live rendition not split (yet) keeps them: its planner
    creates the parts before it marks the rendition split, and a planner that retries reuses
    them."""
    return r is None or r.generation != generation or r.state not in jobstate.RENDITION_LIVE


def joining(r: Rendition | None, p: Part, now: float) -> bool:
    """Whether `p` is the running join that has just made its rendition done, and may still
    record itself done (its transcoder never deletes the output once the rendition is done)."""
    if r is None or r.state is not R.DONE or r.generation != p.generation:
        return False
    finished = r.finished_at if r.finished_at is not None else r.updated_at
    return p.kind == "join" and p.state is R.RUNNING and now - finished < JOIN_SETTLE_SECONDS


def drop(view: View, r: Rendition | None, key: str, generation: int, parts: list[Part]) -> Change:
    """The files of an ended generation's parts (never the join's: its file is the rendition's
    output), with the stored copy of the source, and the records to delete."""
    blobs = {
        p.output.blob
        for p in parts
        if p.kind != "join" and p.output is not None and not p.output.store
    }
    blobs.add(source_copy_key(key, generation))
    if r is not None and r.generation == generation and r.split and r.split.source:
        blobs.add(r.split.source)
    revisions = []
    for p in sorted(parts, key=lambda p: p.key):
        versioned = view.parts.versioned(p.key) if view.parts is not None else None
        if versioned is not None:
            revisions.append((p.key, versioned.revision))
    return DropParts(key, generation, tuple(sorted(blobs)), tuple(revisions))


def failed_with(view: View, change: FailSplit) -> JobError | None:
    """The error its rendition fails with, while the part is still failed (None: it is not)."""
    p = view.parts.get(change.part) if view.parts is not None else None
    if p is None or p.state is not R.FAILED or p.generation != change.generation:
        return None
    return p.last_error or PART_FAILED


def part_rank(waiting: Iterable[Part], held: int) -> dict[str, int]:
    """Each waiting part's rank: the parts its rendition holds already (`held_parts`) plus its
    place among the rendition's parts that wait, in work order (audio, v0000.., join), counted
    as that many more leases of its client. So another client's work goes ahead of a long
    film's next segment, and so does the same client's whole job queued behind the film: the
    film's first part stands for the film as a whole job would, each further part as one more
    job of its client."""
    ordered = sorted(waiting, key=jobstate.part_order)
    return {p.key: held + n for n, p in enumerate(ordered)}


def held_parts(view: View, r: Rendition, pool: str) -> int:
    """How many parts of this generation of the rendition hold a lease in `pool` and are at
    work there (dispatched or running)."""
    return sum(
        1 for p in view.parts_of(r) if p.pool == pool and p.state in (R.DISPATCHED, R.RUNNING)
    )


def publish_part(
    view: View, r: Rendition, p: Part, now: float, pool: str | None = None
) -> PublishPart:
    """The work item of a pending part's next dispatch, naming the jobs that follow its
    rendition: a `SegmentWork` for a span of video or the audio, a `JoinWork` for the join. It
    goes to `pool`: the part's own unless a helper pool leased it."""
    assert r.split is not None
    jobs = [job.id for job in view.followers(r)]
    work: SegmentWork | JoinWork
    if p.kind == "join":
        work = JoinWork(
            key=r.key,
            generation=p.generation,
            dispatch_seq=p.dispatch_seq + 1,
            profile=r.profile,
            spec=r.spec,
            container=r.container,
            owner=r.owner,
            destination=r.destination,
            output_name=r.output_name,
            jobs=jobs,
            dispatched_at=now,
        )
    else:
        work = SegmentWork(
            key=r.key,
            generation=p.generation,
            part=p.name,
            kind=p.kind,
            dispatch_seq=p.dispatch_seq + 1,
            source=r.source,
            stored_source=r.split.source,
            profile=r.profile,
            spec=r.spec,
            container=r.container,
            encoder=r.split.encoder if p.kind == "video" else "",
            start=p.start,
            end=p.end,
            frames=p.frames,
            owner=r.owner,
            jobs=jobs,
            dispatched_at=now,
        )
    return PublishPart(r, p, work, pool or p.pool)
