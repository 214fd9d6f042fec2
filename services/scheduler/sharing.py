"""Share checks run beside the scheduler's loop, never in it.

A queued job that would share an output another job's request made (its URL carries other
credentials) stays unattached while its own URL is checked, within VIDMESH_SHARE_CHECK_TIMEOUT;
the loop goes on placing and dispatching other jobs meanwhile. When the answer comes back it is
applied by compare-and-set: a 2xx attaches the job to the shared rendition; anything else gives it
a rendition of its own, transcoded from its own URL (a job never fails for its check).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from services.scheduler.access import AccessAnswer, AccessCheck, Verdict
from services.scheduler.config import SchedulerSettings
from services.scheduler.view import View, waiting
from shared.jobs import state as jobstate
from shared.jobs.store import JobFn, RecordStore
from shared.messages.records import JobRecord, JobStatus, Rendition
from shared.nats.topology import describe
from shared.tasks import stop_tasks

log = structlog.get_logger("vidmesh.scheduler")


class ShareChecks:
    """The share checks in flight, one per job, and how their answers are applied."""

    def __init__(
        self,
        store: RecordStore,
        view: View,
        settings: SchedulerSettings,
        access: AccessCheck,
        decided: Callable[[str], None],
    ) -> None:
        self.store = store
        self.view = view
        self.settings = settings
        self.access = access
        self._decided = decided  # the job is looked at again (its record may not have changed)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        view.jobs.listen(self._job_changed)

    def _job_changed(self, key: str, old: JobRecord | None, new: JobRecord | None) -> None:
        """A job that no longer waits for a rendition (cancelled, deleted...) needs no check: its
        check ends at once rather than ask the source, and make a rendition, for nobody."""
        task = self._tasks.get(key)
        if task is None or (new is not None and waiting(new)):
            return
        if task is not asyncio.current_task():  # the check's own attach: it ends by itself
            task.cancel()

    def pending(self, job_id: str) -> bool:
        """Whether the job's check is still in flight (the loop leaves the job alone)."""
        return job_id in self._tasks

    def start(self, job: JobRecord, key: str) -> None:
        """Check, beside the loop, whether `job` may share rendition `key`."""
        if job.id not in self._tasks:
            self._tasks[job.id] = asyncio.create_task(
                self._decide(job, key), name=f"scheduler.share_check.{job.id}"
            )

    async def _decide(self, job: JobRecord, key: str) -> None:
        try:
            answer = await self.access.answer(job.source)
            await self._apply(job, key, answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The job stays queued and unattached: a later pass places it again.
            log.warning("share_check.failed", job_id=job.id, **describe(exc))
        finally:
            self._tasks.pop(job.id, None)
            self._decided(job.id)

    async def _apply(self, job: JobRecord, key: str, answer: AccessAnswer) -> None:
        now = time.time()
        log.info("job.share_checked", job_id=job.id, verdict=answer.verdict.value, why=answer.why)
        match answer.verdict:
            case Verdict.ALLOWED:
                r = self.view.renditions.get(key)
                if r is None or r.state in jobstate.RENDITION_ENDED:
                    return  # it ended meanwhile: the next pass places the job anew
                await self._attach(job, r, shared=True, now=now)
            case Verdict.UNKNOWN:
                current = self.view.jobs.get(job.id)
                if current is None or not waiting(current):
                    return  # it was cancelled (or placed) meanwhile: nothing to make for it
                own = jobstate.own_rendition_key(key, job.id)
                pool = job.pool or self.settings.pool

                def want(current: Rendition | None) -> Rendition | None:
                    if current is None:
                        return jobstate.new_rendition(own, job, now, pool=pool)
                    if current.state in jobstate.RENDITION_ENDED:
                        return jobstate.renew(current, job, now)
                    return None  # already made for this job: attach to it as it is

                r, _ = await self.store.change_rendition(own, want)
                if r is not None:
                    await self._attach(job, r, shared=False, now=now)

    async def _attach(self, job: JobRecord, r: Rendition, *, shared: bool, now: float) -> None:
        attached = await self.store.change_job(
            job.id, _unattached(lambda j: jobstate.attach(j, r, now, shared=shared))
        )
        if attached is not None and attached.rendition == r.key:
            log.info("job.attached", job_id=job.id, rendition=r.key, shared=shared)

    async def close(self) -> None:
        await stop_tasks(list(self._tasks.values()))


def _unattached(change: Callable[[JobRecord], JobRecord]) -> JobFn:
    """Apply `change` only to a queued job that still has no rendition."""

    def fn(job: JobRecord | None) -> JobRecord | None:
        if job is None or job.status is not JobStatus.QUEUED or job.rendition is not None:
            return None
        return change(job)

    return fn
