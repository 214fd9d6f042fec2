"""The scheduler's command handlers: decode, dispatch on type, change records, return an outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import msgspec
import structlog
from nats.aio.msg import Msg
from structlog.contextvars import bound_contextvars

from services.scheduler.config import SchedulerSettings
from services.scheduler.intake import Intake
from services.scheduler.reconcile import Reconciler
from services.scheduler.view import View
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.messages import commands as cmd
from shared.messages.records import JobRecord, JobStatus, RenditionState
from shared.nats.consumer import Outcome

log = structlog.get_logger("vidmesh.scheduler")


class CommandHandler:
    """Applies client intents (submit, cancel, release, start, clear cache) to job records."""

    def __init__(
        self,
        store: RecordStore,
        view: View,
        reconciler: Reconciler,
        settings: SchedulerSettings,
        wake: Callable[[], None],
        intake: Intake,
    ) -> None:
        self.intake = intake
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
                case cmd.SubmitJob():
                    if await self.intake.submit(command) is not None:
                        self._wake_up()
                case cmd.CancelJob(job_id=job_id):
                    await self.cancel(job_id, release=False)
                case cmd.ReleaseJob(job_id=job_id):
                    await self.cancel(job_id, release=True)
                case cmd.StartJob(job_id=job_id):
                    await self.start(job_id)
                case cmd.RetryJob(job_id=job_id):
                    await self.change(job_id, jobstate.retry_job)
                case cmd.RestartJob(job_id=job_id, nonce=nonce):
                    await self.change(job_id, partial(_restart, nonce=nonce))
                case cmd.ConfirmDownload(job_id=job_id):
                    keep = self.settings.keep_seconds
                    await self.change(
                        job_id, lambda j, now: jobstate.confirm_download(j, keep, now)
                    )
                case cmd.DeleteOutput(job_id=job_id):
                    await self.change(job_id, jobstate.delete_output)
                case cmd.StartBatch(job_ids=job_ids):
                    for job_id in job_ids:
                        await self.change(job_id, jobstate.unpause, only=JobStatus.PAUSED)
                case cmd.RenameOutputs(names=names):
                    for job_id, name in names.items():
                        await self.change(job_id, partial(_rename, name=name))
                case cmd.CleanupJobs(before=before, statuses=statuses):
                    await self.clean_up(before, statuses)
                case cmd.ClearCache():
                    await self.clear_cache(command)
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

    async def change(
        self,
        job_id: str,
        transition: Callable[[JobRecord, float], JobRecord],
        *,
        only: JobStatus | None = None,
    ) -> None:
        """Apply one state-machine transition; one the job's state does not allow is logged."""
        now = time.time()
        before = self.view.jobs.get(job_id)

        def apply(job: JobRecord | None) -> JobRecord | None:
            if job is None or (only is not None and job.status is not only):
                return None
            return transition(job, now)

        try:
            job = await self.store.change_job(job_id, apply)
        except jobstate.InvalidTransition as exc:
            log.info("command.refused", job_id=job_id, reason=exc.message)
            return
        if before is not None and before.rendition and job is not None:
            await self.reconciler.release_if_unneeded(before.rendition)
        self._wake_up()

    async def clean_up(self, before: float, statuses: list[str]) -> None:
        """Finished jobs older than `before`: completed ones let their outputs go, the others
        (and those) have their records purged."""
        known = {s for s in statuses if s in JobStatus.__members__.values()}
        wanted = {JobStatus(s) for s in known} or jobstate.FINISHED | {JobStatus.REMOVED}
        now = time.time()
        matched = 0
        for job in list(self.view.jobs.values()):
            ended = job.removed_at or job.finished_at
            if job.status not in wanted or ended is None or ended >= before:
                continue
            matched += 1
            cleared = await self.store.change_job(
                job.id,
                lambda j: jobstate.clear_output(jobstate.clean_up(j, now), now) if j else None,
            )
            versioned = self.view.jobs.versioned(job.id)
            if cleared is not None and versioned is not None:
                await self.store.delete_job(cleared, versioned.revision)
            if job.rendition:
                await self.reconciler.release_if_unneeded(job.rendition)
        log.info("jobs.cleaned_up", jobs=matched)
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

    async def clear_cache(self, command: cmd.ClearCache) -> None:
        """Let go of the finished outputs in the service's store that this clear covers (an
        administrator's: all; a user's: what their own jobs hold), then have the storage service
        delete the files no other job holds.

        Renditions go first, so the files are counted in this clear and not released one by one
        as their jobs change; the files are deleted only after no job holds them.
        """
        request_id, now = command.command_id, time.time()

        def cleared(job: JobRecord) -> bool:
            """Whether this clear takes the job's output from it."""
            if job.output is None or job.output.store or not jobstate.holds_output(job, now):
                return False  # outputs in users' own storage are not the service's cache
            return command.admin or (bool(command.owner) and job.owner == command.owner)

        jobs = [job for job in list(self.view.jobs.values()) if cleared(job)]
        keys = {r.key for r in self.view.renditions.values()} if command.admin else set()
        keys |= {job.rendition for job in jobs if job.rendition}
        blobs: list[str] = []
        for key in sorted(keys):
            r = self.view.renditions.get(key)
            if r is None or r.state is not RenditionState.DONE or r.output is None:
                continue
            if r.output.store:
                continue
            blob = await self.reconciler.release_if_unneeded(
                key, request_id=request_id, ignoring=None if command.admin else cleared
            )
            if blob:
                blobs.append(blob)
        for job in jobs:
            await self.store.change_job(
                job.id, lambda j: jobstate.clear_output(j, now) if j else None
            )
        await self.reconciler.delete_blobs(
            blobs,
            reason="cache cleared",
            msg_id=f"clear:{request_id}",
            request_id=request_id,
            sweep_orphans=command.admin,
        )
        log.info("cache.cleared", outputs=len(blobs), jobs=len(jobs), admin=command.admin)
        self._wake_up()

    def _wake_up(self) -> None:
        self._wake()


def _restart(job: JobRecord, now: float, *, nonce: str) -> JobRecord:
    return jobstate.restart_job(job, now, nonce)


def _rename(job: JobRecord, now: float, *, name: str) -> JobRecord:
    return jobstate.rename(job, name, now)
