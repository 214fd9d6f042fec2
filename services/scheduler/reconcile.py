"""Level-triggered reconciliation: look at a record, compare with what should be, fix the gap.

Every function here is idempotent: after a crash the scheduler looks at everything again and
carries on. Jobs follow their rendition; renditions nobody wants are cancelled or released.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from services.scheduler.config import SchedulerSettings
from services.scheduler.sharing import ShareChecks
from services.scheduler.view import View, device_limited
from shared.jobs import state as jobstate
from shared.jobs.store import JobFn, RecordStore, RenditionFn
from shared.messages import commands
from shared.messages.records import JobRecord, JobStatus, Rendition, RenditionState
from shared.nats.topology import publish_command

log = structlog.get_logger("vidmesh.scheduler")

J = JobStatus
R = RenditionState

# A rendition nobody follows yet may be one a job is about to attach to.
ORPHAN_GRACE = 2.0


class Reconciler:
    """Brings job and rendition records to where they should be."""

    def __init__(
        self,
        store: RecordStore,
        view: View,
        settings: SchedulerSettings,
        sharing: ShareChecks | None = None,
    ) -> None:
        self.store = store
        self.view = view
        self.settings = settings
        self.sharing = sharing

    # ---- jobs ------------------------------------------------------------------------------
    async def job(self, job_id: str) -> None:
        job = self.view.jobs.get(job_id)
        if job is None:
            return
        now = time.time()
        if job.status is J.QUEUED and job.rendition is None:
            await self.place(job)
        elif job.status in (J.QUEUED, J.RUNNING):
            await self._follow(job, now)
        elif job.status is J.HELD:
            await self._maybe_unhold(job, now)
        elif job.status is J.COMPLETED and job.keep_until is not None and now >= job.keep_until:
            await self.store.change_job(
                job.id, _only(J.COMPLETED, lambda j: jobstate.expire(j, now))
            )
        elif jobstate.purge_due(job, self.settings.keep_seconds, now):
            versioned = self.view.jobs.versioned(job.id)
            if versioned is not None:
                await self.store.delete_job(job, versioned.revision)
                log.info("job.purged", job_id=job.id)

    async def place(self, job: JobRecord) -> None:
        """A queued job without a rendition: hold it for its device's limit, leave it queued
        while its user has enough jobs admitted, or attach it."""
        if self.sharing is not None and self.sharing.pending(job.id):
            return  # its share check is still out: it is placed when the answer comes back
        now = time.time()
        limit = self.settings.max_cached_per_user
        if (
            limit
            and not job.manual_start
            and device_limited(job)
            and self.view.device_load(job.device_id) >= limit
        ):
            await self.store.change_job(job.id, _unattached(lambda j: jobstate.hold(j, now)))
            log.info("job.held", job_id=job.id, device=job.device_id, limit=limit)
            return
        if not job.manual_start and not self._admissible(job):
            return  # stays queued; admitted in order as the user's other jobs end
        key = jobstate.rendition_key_of(job)
        created: list[bool] = []

        def want(current: Rendition | None) -> Rendition | None:
            created.clear()
            if current is None:
                created.append(True)
                return jobstate.new_rendition(key, job, now, pool=job.pool or self.settings.pool)
            if current.state in jobstate.RENDITION_ENDED:
                created.append(True)
                return jobstate.renew(current, job, now)
            if current.state not in jobstate.RENDITION_LIVE:
                return None
            if job.manual_start and not current.manual:
                current = jobstate.mark_manual(current, now)
            if job.priority > current.priority:
                current = jobstate.raise_priority(current, job.priority, now)
            return current

        rendition, _ = await self.store.change_rendition(key, want)
        assert rendition is not None
        shared = not created
        if shared and rendition.source != job.source and self.sharing is not None:
            # Made from another request's credentials: shared only once its own URL may read
            # the media, decided beside this loop (the check may take seconds).
            self.sharing.start(job, key)
            return
        attached = await self.store.change_job(
            job.id, _unattached(lambda j: jobstate.attach(j, rendition, now, shared=shared))
        )
        if attached is not None and attached.rendition == key:
            log.info("job.attached", job_id=job.id, rendition=key, shared=shared)
            await self._follow(attached, now)

    def _admissible(self, job: JobRecord) -> bool:
        """Whether the user's active limit has room for this job: it must be among the user's
        oldest waiting jobs that fit, so waiting jobs are admitted in the order they came."""
        limit = self.settings.max_active_jobs_per_user
        if not limit:
            return True
        free = limit - self.view.active_count(job.owner)
        if free <= 0:
            return False
        return any(first.id == job.id for first in self.view.waiting_in_order(job.owner)[:free])

    async def _follow(self, job: JobRecord, now: float) -> None:
        """An attached job takes on its rendition's state."""
        assert job.rendition is not None
        r = self.view.renditions.get(job.rendition)
        same = r is not None and r.generation == job.generation
        if r is None or not same or r.state in (R.CANCELLED, R.RELEASED):
            await self.store.change_job(job.id, _attached_to(job, jobstate.detach, now))
            return
        if r.state is R.FAILED:
            assert r.last_error is not None
            error, attempts = r.last_error, r.attempt
            await self.store.change_job(
                job.id, _attached_to(job, lambda j, t: jobstate.fail(j, error, t, attempts), now)
            )
        elif r.state is R.DONE:
            assert r.output is not None
            output, keep, attempts, probe = r.output, self.settings.keep_seconds, r.attempt, r.probe
            await self.store.change_job(
                job.id,
                _attached_to(
                    job, lambda j, t: jobstate.complete(j, output, keep, t, attempts, probe), now
                ),
            )
        elif r.state is R.RUNNING and job.status is J.QUEUED:
            await self.store.change_job(
                job.id, _attached_to(job, lambda j, t: jobstate.start(j, r, t), now)
            )
        elif job.manual_start and not r.manual and r.state in (R.PENDING, R.DISPATCHED):
            await self.store.change_rendition(r.key, _live(lambda x: jobstate.mark_manual(x, now)))

    async def _maybe_unhold(self, job: JobRecord, now: float) -> None:
        limit = self.settings.max_cached_per_user
        if not device_limited(job):
            limit = 0  # a native job held by an older version: the device limit is not its own
        free = limit - self.view.device_load(job.device_id) if limit else 1_000_000
        if free <= 0:
            return
        first = self.view.held_in_order(job.device_id)[:free] if limit else [job]
        if any(held.id == job.id for held in first):
            await self.store.change_job(job.id, _only(J.HELD, lambda j: jobstate.unhold(j, now)))

    # ---- renditions ------------------------------------------------------------------------
    async def rendition(self, key: str) -> None:
        r = self.view.renditions.get(key)
        if r is None:
            return
        now = time.time()
        if r.state in jobstate.RENDITION_LIVE:
            if not self.view.followers(r) and now - r.updated_at >= ORPHAN_GRACE:
                await self.cancel_if_unwanted(r.key)
        elif r.state is R.DONE:
            if not self.view.needs_output(r, now):
                await self.release_if_unneeded(r.key)
        elif (
            not self.view.jobs_of_rendition(key)
            and now - r.updated_at >= self.settings.keep_seconds
        ):
            versioned = self.view.renditions.versioned(key)
            if versioned is not None:
                await self.store.delete_rendition(key, versioned.revision)

    async def cancel_if_unwanted(self, key: str) -> None:
        """Stop a live rendition that no active job follows any more."""
        now = time.time()

        def cancel(current: Rendition | None) -> Rendition | None:
            if current is None or current.state not in jobstate.RENDITION_LIVE:
                return None
            if self.view.followers(current):
                return None
            return jobstate.cancel_rendition(current, now)

        r, changed = await self.store.change_rendition(key, cancel)
        if changed:
            log.info("rendition.cancelled", rendition=key)

    async def release_if_unneeded(
        self,
        key: str,
        *,
        request_id: str = "",
        ignoring: Callable[[JobRecord], bool] | None = None,
    ) -> str | None:
        """Release a done rendition no job needs; its blob is handed to the storage service.

        With `request_id` (a cache clear) the blob is returned for the clear to delete instead,
        and only jobs that `ignoring` does not pass count as needing it (None: none count).
        """
        now = time.time()

        def release(current: Rendition | None) -> Rendition | None:
            if current is None or current.state is not R.DONE:
                return None
            if request_id and ignoring is None:
                return jobstate.release_rendition(current, now)
            if self.view.needs_output(current, now, ignoring=ignoring):
                return None
            return jobstate.release_rendition(current, now)

        r, changed = await self.store.change_rendition(key, release)
        if not changed or r is None or r.output is None:
            return None
        log.info("rendition.released", rendition=key, blob=r.output.blob)
        if r.output.store:
            return None  # in the user's own storage: theirs to keep
        if not request_id:
            await self.delete_blobs(
                [r.output.blob], reason="released", msg_id=f"release:{key}:{r.generation}"
            )
        return r.output.blob

    async def delete_blobs(
        self,
        blobs: list[str],
        *,
        reason: str,
        msg_id: str,
        request_id: str = "",
        sweep_orphans: bool = False,
    ) -> None:
        command = commands.DeleteBlobs(
            command_id=msg_id,
            at=time.time(),
            blobs=blobs,
            reason=reason,
            request_id=request_id,
            sweep_orphans=sweep_orphans,
        )
        subject = self.store.names.storage_command("delete_blobs")
        await publish_command(self.store.js, subject, command, msg_id=msg_id)


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
    seen: JobRecord, change: Callable[[JobRecord, float], JobRecord], now: float
) -> JobFn:
    """Apply `change(job, now)` only while the job is still active on the same rendition."""

    def fn(job: JobRecord | None) -> JobRecord | None:
        if job is None or job.status not in (J.QUEUED, J.RUNNING):
            return None
        if job.rendition != seen.rendition or job.generation != seen.generation:
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
