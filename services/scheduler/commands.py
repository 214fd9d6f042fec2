"""The scheduler's command handlers: decode, dispatch on type, change records, return an outcome."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import structlog
from nats.aio.msg import Msg
from structlog.contextvars import bound_contextvars

from services.scheduler.config import SchedulerSettings
from services.scheduler.reconcile import Reconciler
from services.scheduler.view import View
from shared import jobstate
from shared.consumer import Outcome
from shared.messages import commands as cmd
from shared.messages.records import JobRecord, JobStatus, RenditionState
from shared.recordstore import RecordStore

log = structlog.get_logger("vidmesh.scheduler")


class CommandHandler:
    """Applies client intents (cancel, release, start, clear cache) to job records."""

    def __init__(
        self,
        store: RecordStore,
        view: View,
        reconciler: Reconciler,
        settings: SchedulerSettings,
        wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.view = view
        self.reconciler = reconciler
        self.settings = settings
        self._wake = wake

    async def __call__(self, msg: Msg) -> Outcome:
        try:
            command = cmd.SCHEDULER_DECODER.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.error("command.poison", subject=msg.subject, error=str(exc))
            return Outcome.TERM
        started = time.monotonic()
        with bound_contextvars(command_id=command.command_id, command=type(command).__name__):
            match command:
                case cmd.CancelJob(job_id=job_id):
                    await self.cancel(job_id, release=False)
                case cmd.ReleaseJob(job_id=job_id):
                    await self.cancel(job_id, release=True)
                case cmd.StartJob(job_id=job_id):
                    await self.start(job_id)
                case cmd.ClearCache():
                    await self.clear_cache(command.command_id)
            log.info(
                "command.handled",
                attempt=msg.metadata.num_delivered,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
        return Outcome.ACK

    async def cancel(self, job_id: str, *, release: bool) -> None:
        now = time.time()
        keep = self.settings.keep_seconds
        remove_now = self.settings.remove_file_after_right_download

        def change(job: JobRecord | None) -> JobRecord | None:
            if job is None:
                return None
            if release:
                return jobstate.release(job, remove_file_now=remove_now, keep_seconds=keep, now=now)
            return jobstate.cancel(job, now)

        before = self.view.jobs.get(job_id)
        job = await self.store.change_job(job_id, change)
        if job is None or before is None or before.rendition is None:
            return
        if job.status is JobStatus.CANCELLED:
            await self.reconciler.cancel_if_unwanted(before.rendition)
        elif job.status is JobStatus.REMOVED:
            await self.reconciler.release_if_unneeded(before.rendition)
        self._wake_up()

    async def start(self, job_id: str) -> None:
        now = time.time()

        def change(job: JobRecord | None) -> JobRecord | None:
            if job is None or job.manual_start or not jobstate.can_start(job):
                return None
            return jobstate.request_start(job, now)

        job = await self.store.change_job(job_id, change)
        if job is None or not job.manual_start:
            log.info("command.start_refused", job_id=job_id, status=job.status if job else None)
            return
        await self.reconciler.job(job_id)
        self._wake_up()

    async def clear_cache(self, request_id: str) -> None:
        """Let go of every finished output, then have the storage service delete the files.

        Renditions go first, so the files are counted in this clear and not released one by one
        as their jobs change; the files are deleted only after no job holds them.
        """
        now = time.time()
        blobs: list[str] = []
        for r in list(self.view.renditions.values()):
            if r.state is RenditionState.DONE:
                blob = await self.reconciler.release_if_unneeded(r.key, request_id=request_id)
                if blob:
                    blobs.append(blob)
        for job in list(self.view.jobs.values()):
            if jobstate.holds_output(job, now):
                await self.store.change_job(
                    job.id, lambda j: jobstate.clear_output(j, now) if j else None
                )
        await self.reconciler.delete_blobs(
            blobs, reason="cache cleared", msg_id=f"clear:{request_id}", request_id=request_id
        )
        log.info("cache.cleared", outputs=len(blobs))
        self._wake_up()

    def _wake_up(self) -> None:
        self._wake()
