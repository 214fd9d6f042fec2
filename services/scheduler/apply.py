"""Carrying out what `decide` decided: compare-and-set writes to job and rendition records
(`RecordStore.change_job` / `change_rendition`, each followed by its event), lease keys created
and deleted in KV, work items published.

Every write is a compare-and-set whose function decides again on the record it reads (the guards
and transitions of `decide` and `shared.jobs.state`): a record that changed since the decision is
written only if the change still holds, and left as it is otherwise. A lease claim or release that
another replica got in first is not retried here: `Applied.ok` is False and the loop looks again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from services.scheduler import decide
from services.scheduler.apply_parts import PartWrites
from services.scheduler.changes import (
    CancelOrphan,
    CancelParts,
    Change,
    Claim,
    ClearOutput,
    Complete,
    DeleteRendition,
    Detach,
    DropParts,
    Expire,
    Fail,
    FailSplit,
    Hold,
    MarkManual,
    Place,
    PlaceOwn,
    Publish,
    PublishPart,
    Purge,
    Release,
    ReleaseOutput,
    Start,
    Unhold,
    merged,
)
from services.scheduler.sharing import ShareChecks
from services.scheduler.view import View
from shared.jobs import state as jobstate
from shared.jobs.store import JobFn, RecordStore, RenditionFn
from shared.messages import commands
from shared.messages.records import JobRecord, JobStatus, Lease, Rendition, RenditionState
from shared.messages.work import ENCODER
from shared.nats.kv import Stale
from shared.nats.projection import Projection
from shared.nats.topology import publish_command
from shared.tasks import all_ended

log = structlog.get_logger("vidmesh.scheduler")

J = JobStatus
R = RenditionState


# Changes that each write only their own job (holds, unholds), applied this many at a time.
_SIDE_BY_SIDE = 64


@dataclass
class Applied:
    """What applying changes came to: whether every lease claim and release landed (False: the
    loop looks again), the lease keys to look at again, and the blobs released for a clear."""

    ok: bool = True
    again: set[str] = field(default_factory=set)
    blobs: list[str] = field(default_factory=list)


class Applier:
    """Applies changes, one record at a time, in the order decided."""

    def __init__(
        self,
        store: RecordStore,
        view: View,
        *,
        leases: Projection[Lease] | None = None,
        sharing: ShareChecks | None = None,
    ) -> None:
        self.store = store
        self.view = view
        self.leases = leases
        self.sharing = sharing
        self.parts = PartWrites(store, view, self._delete_part_blobs)

    async def apply(self, changes: list[Change], now: float) -> Applied:
        """Carry out `changes` (at most one per record, see `merged`) as decided at `now`."""
        applied = Applied()
        alone: list[Change] = []
        for change in merged(changes):
            if isinstance(change, Hold | Unhold):
                alone.append(change)  # it writes its own job and nothing else
            else:
                await self._apply(change, now, applied)
        # side by side: their writes and events go out together instead of one after another
        for start in range(0, len(alone), _SIDE_BY_SIDE):
            chunk = alone[start : start + _SIDE_BY_SIDE]
            await all_ended(*(self._apply(change, now, applied) for change in chunk))
        return applied

    async def _apply(self, change: Change, now: float, applied: Applied) -> None:
        match change:
            case Hold(job_id=job_id, device=device, limit=limit):
                await self._job(job_id, _unattached(lambda j: jobstate.hold(j, now)))
                log.info("job.held", job_id=job_id, device=device, limit=limit)
            case Unhold(job_id=job_id):
                await self._job(job_id, _only(J.HELD, lambda j: jobstate.unhold(j, now)))
            case Place():
                await self._place(change, now)
            case PlaceOwn(job=job, key=key, pool=pool):
                r, _ = await self.store.change_rendition(
                    key, lambda current: decide.made_own(current, job, key, pool, now)
                )
                if r is not None:
                    await self._attach(job, r, shared=False, now=now)
            case Detach(job_id=job_id, rendition=key, generation=generation):
                await self._job(job_id, _attached_to(key, generation, jobstate.detach, now))
            case Start(job_id=job_id, rendition=running):
                await self._job(
                    job_id,
                    _attached_to(
                        running.key,
                        running.generation,
                        lambda j, t: jobstate.start(j, running, t),
                        now,
                    ),
                )
            case Complete(job_id=job_id, rendition=r, keep_seconds=keep):
                assert r.output is not None
                output, attempts, probe = r.output, r.attempt, r.probe
                await self._job(
                    job_id,
                    _attached_to(
                        r.key,
                        r.generation,
                        lambda j, t: jobstate.complete(j, output, keep, t, attempts, probe),
                        now,
                    ),
                )
            case Fail(job_id=job_id, rendition=r):
                assert r.last_error is not None
                error, attempts = r.last_error, r.attempt
                await self._job(
                    job_id,
                    _attached_to(
                        r.key, r.generation, lambda j, t: jobstate.fail(j, error, t, attempts), now
                    ),
                )
            case Expire(job_id=job_id):
                await self._job(job_id, _only(J.COMPLETED, lambda j: jobstate.expire(j, now)))
            case Purge(job=job, revision=revision):
                await self.store.delete_job(job, revision)
                log.info("job.purged", job_id=job.id)
            case ClearOutput(job_id=job_id):
                await self._job(job_id, lambda j: jobstate.clear_output(j, now) if j else None)
            case MarkManual(key=key):
                await self.store.change_rendition(
                    key, _live(lambda r: jobstate.mark_manual(r, now))
                )
            case CancelOrphan(key=key):
                await self._cancel_orphan(key, now)
            case ReleaseOutput():
                await self._release_output(change, now, applied)
            case DeleteRendition(key=key, revision=revision):
                await self.store.delete_rendition(key, revision)
            case Claim(key=key, lease=lease, then=work):
                if not await self._claim(key, lease):
                    applied.ok = False  # another replica got in first: look again
                elif isinstance(work, PublishPart):
                    await self.parts.publish(work, now)
                else:
                    await self._publish(work, now)
            case Release(key=key, revision=revision):
                if not await self._release(key, revision):
                    applied.ok = False
                    applied.again.add(key)
            case Publish():
                await self._publish(change, now)
            case PublishPart():
                await self.parts.publish(change, now)
            case FailSplit():
                await self.parts.fail_split(change, now)
            case CancelParts():
                await self.parts.cancel(change, now)
            case DropParts():
                await self.parts.drop(change)

    # ---- jobs -----------------------------------------------------------------------------
    async def _job(self, job_id: str, fn: JobFn) -> None:
        """Compare-and-set on one job (`fn` decides again on the record read)."""
        await self.store.change_job(job_id, fn)

    async def _place(self, change: Place, now: float) -> None:
        job, key, pool = change.job, change.key, change.pool
        created = False

        def want(current: Rendition | None) -> Rendition | None:
            nonlocal created
            record, created = decide.joined(current, job, key, pool, now)
            return record

        r, _ = await self.store.change_rendition(key, want)
        assert r is not None
        if self.sharing is not None and decide.needs_check(
            job, r, created=created, allowed=change.allowed
        ):
            # Made from another request's credentials: shared only once its own URL may read
            # the media, asked beside this loop (the check may take seconds).
            self.sharing.start(job, key)
            return
        await self._attach(job, r, shared=not created, now=now)

    async def _attach(self, job: JobRecord, r: Rendition, *, shared: bool, now: float) -> None:
        attached = await self.store.change_job(
            job.id, _unattached(lambda j: jobstate.attach(j, r, now, shared=shared))
        )
        if attached is not None and attached.rendition == r.key:
            log.info("job.attached", job_id=job.id, rendition=r.key, shared=shared)

    # ---- renditions -----------------------------------------------------------------------
    async def _cancel_orphan(self, key: str, now: float) -> None:
        def cancel(current: Rendition | None) -> Rendition | None:
            if current is None or not decide.orphaned(self.view, current):
                return None
            return jobstate.cancel_rendition(current, now)

        _, changed = await self.store.change_rendition(key, cancel)
        if changed:
            log.info("rendition.cancelled", rendition=key)

    async def _release_output(self, change: ReleaseOutput, now: float, applied: Applied) -> None:
        def release(current: Rendition | None) -> Rendition | None:
            if current is None or not decide.releasable(self.view, current, change, now):
                return None
            return jobstate.release_rendition(current, now)

        r, changed = await self.store.change_rendition(change.key, release)
        if not changed or r is None or r.output is None:
            return
        log.info("rendition.released", rendition=change.key, blob=r.output.blob)
        if r.output.store:
            return  # in the user's own storage: theirs to keep
        if change.request_id:
            applied.blobs.append(r.output.blob)  # the clear deletes it with the others
            return
        await self.delete_blobs(
            [r.output.blob], reason="released", msg_id=f"release:{change.key}:{r.generation}"
        )

    async def delete_blobs(
        self,
        blobs: list[str],
        *,
        reason: str,
        msg_id: str,
        request_id: str = "",
        sweep_orphans: bool = False,
    ) -> None:
        """Have the storage service delete blobs no job holds any more."""
        command = commands.DeleteBlobs(
            command_id=msg_id,
            at=time.time(),
            blobs=blobs,
            reason=reason,
            request_id=request_id,
            sweep_orphans=sweep_orphans,
        )
        await publish_command(self.store.js, self.store.names, command, msg_id=msg_id)

    async def _delete_part_blobs(self, blobs: list[str], reason: str, msg_id: str) -> None:
        await self.delete_blobs(blobs, reason=reason, msg_id=msg_id)

    # ---- leases and work ------------------------------------------------------------------
    async def _claim(self, key: str, lease: Lease) -> bool:
        assert self.leases is not None
        try:
            revision = await self.leases.store.create(key, lease)
        except Stale:
            return False
        self.leases.apply(key, lease, revision)  # read our own write before the watch brings it
        return True

    async def _release(self, key: str, revision: int) -> bool:
        assert self.leases is not None
        try:
            await self.leases.store.delete(key, revision)
        except Stale:
            return False
        self.leases.apply(key, None, revision + 1)  # the tombstone comes later
        return True

    async def _publish(self, change: Publish, now: float) -> None:
        r, work = change.rendition, change.work
        await self.store.js.publish(
            self.store.names.work(r.pool),
            ENCODER.encode(work),
            headers={"Nats-Msg-Id": f"{r.key}:{r.generation}:{work.dispatch_seq}"},
        )

        def mark(current: Rendition | None) -> Rendition | None:
            if current is None or current.generation != r.generation:
                return None
            if current.state is not R.PENDING or current.dispatch_seq != r.dispatch_seq:
                return None
            return jobstate.dispatch(current, now)

        await self.store.change_rendition(r.key, mark)
        log.info("rendition.dispatched", rendition=r.key, generation=r.generation, manual=r.manual)


def _only(status: JobStatus, change: Callable[[JobRecord], JobRecord]) -> JobFn:
    """Apply `change` only while the job is still in `status`."""

    def fn(job: JobRecord | None) -> JobRecord | None:
        if job is None or job.status is not status:
            return None
        return change(job)

    return fn


def _unattached(change: Callable[[JobRecord], JobRecord]) -> JobFn:
    """Apply `change` only to a queued job that has no rendition yet."""

    def fn(job: JobRecord | None) -> JobRecord | None:
        if job is None or job.status is not J.QUEUED or job.rendition is not None:
            return None
        return change(job)

    return fn


def _attached_to(
    rendition: str, generation: int, change: Callable[[JobRecord, float], JobRecord], now: float
) -> JobFn:
    """Apply `change(job, now)` only while the job is still active on the same rendition."""

    def fn(job: JobRecord | None) -> JobRecord | None:
        if job is None or job.status not in (J.QUEUED, J.RUNNING):
            return None
        if job.rendition != rendition or job.generation != generation:
            return None
        return change(job, now)

    return fn


def _live(change: Callable[[Rendition], Rendition]) -> RenditionFn:
    """Apply `change` only while the rendition is pending, dispatched or running."""

    def fn(r: Rendition | None) -> Rendition | None:
        if r is None or r.state not in jobstate.RENDITION_LIVE:
            return None
        return change(r)

    return fn
