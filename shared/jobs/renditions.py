"""The rendition state machine: one transcode that any number of jobs may share.

Pure like the rest of `shared.jobs.state`, which re-exports every name here; import them from there.
"""

from __future__ import annotations

import hashlib

import msgspec

from shared.jobs.transitions import RENDITION_ENDED, RENDITION_TRANSITIONS, InvalidTransition
from shared.media.presets import builtin, spec_fingerprint
from shared.messages.records import JobRecord, Output, Rendition, RenditionState, Split
from shared.sources import is_object_uri, rendition_key
from shared.wire import JobError

R = RenditionState


def _move_rendition(r: Rendition, to: RenditionState, now: float, **changes: object) -> Rendition:
    if to not in RENDITION_TRANSITIONS[r.state]:
        raise InvalidTransition(f"rendition {r.key} is {r.state}; it cannot become {to}")
    return msgspec.structs.replace(r, state=to, updated_at=now, **changes)


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


def own_rendition_key(key: str, job_id: str) -> str:
    """A rendition of `key`'s media made for one job alone, from its own URL: for a job whose
    credentials could not be shown to read the media another job's output was made from."""
    return hashlib.sha256(f"{key}\nfor-job={job_id}".encode()).hexdigest()[:40]


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
    """A job that joins the rendition lifts it to its own priority (never lowers it)."""
    return msgspec.structs.replace(r, priority=max(r.priority, priority), updated_at=now)


def mark_manual(r: Rendition, now: float) -> Rendition:
    """A job that joins the rendition was asked to start now, ahead of the queue."""
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
    """The transcode finished and its output is stored."""
    return _move_rendition(r, R.DONE, now, output=output, finished_at=now, last_error=None)


def split_rendition(r: Rendition, split: Split, now: float) -> Rendition:
    """The transcoder that claimed the rendition divided its work into parts: it stays running,
    with no worker of its own, until its join."""
    if r.state is not R.RUNNING or r.split is not None:
        raise InvalidTransition(f"rendition {r.key} is {r.state}; only a running one is split")
    return _move_rendition(r, R.RUNNING, now, split=split, worker=None, ack_subject="")


def split_live(r: Rendition, generation: int) -> bool:
    """Whether the rendition's work is its parts of `generation`: running, split, not renewed."""
    return r.state is R.RUNNING and r.split is not None and r.generation == generation


def joined(r: Rendition, generation: int, output: Output, now: float) -> Rendition:
    """The join of a split rendition's parts stored its output (only once: it must still be
    running split at the join's generation)."""
    if not split_live(r, generation):
        raise InvalidTransition(
            f"rendition {r.key} is {r.state} at generation {r.generation}; "
            f"the join of generation {generation} cannot finish it"
        )
    return succeed(r, output, now)


def fail_rendition(r: Rendition, error: JobError, now: float) -> Rendition:
    """The transcode failed for good."""
    return _move_rendition(r, R.FAILED, now, last_error=error, finished_at=now)


def cancel_rendition(r: Rendition, now: float) -> Rendition:
    """No job wants the live rendition any more."""
    return _move_rendition(r, R.CANCELLED, now, finished_at=now)


def release_rendition(r: Rendition, now: float) -> Rendition:
    """No job holds the finished rendition's output any more."""
    return _move_rendition(r, R.RELEASED, now)


def owned_by(r: Rendition, worker: str, generation: int, attempt: int) -> bool:
    """Whether `worker` still holds this attempt of the rendition."""
    return (
        r.state is R.RUNNING
        and r.worker == worker
        and r.generation == generation
        and r.attempt == attempt
    )
