"""The scheduler's command handlers: dispatch on type, change records, return a settlement
(the consumer kit decodes, binds the command's ids to the log context, and settles).

A handler changes the job record a command names and wakes the reconcile loop, which decides what
follows (a rendition nobody follows any more is cancelled, an output nobody holds is released, a
job asked to start now is placed): handlers never decide scheduling themselves. A cache clear is
the exception that proves it: its releases are decided by `decide.decide_clear` and applied here,
so the files it frees are counted in its own request.

A command may reach its handler before the submission of the job it names (commands are handled
several at a time): the job's pending `SubmitJob` is then taken from the commands stream and
stored first (`Intake.submit_pending`), so no command for an accepted job is lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import structlog

from services.scheduler.apply import Applier
from services.scheduler.changes import ClearOutput
from services.scheduler.config import SchedulerSettings
from services.scheduler.decide import decide_clear
from services.scheduler.intake import Intake
from services.scheduler.view import View
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.messages import commands as cmd
from shared.messages import events
from shared.messages.records import JobRecord, JobStatus
from shared.nats.consumer import ACK, Received, Settle

log = structlog.get_logger("vidmesh.scheduler")


class CommandHandler:
    """Applies client intents (submit, cancel, release, start, clear cache) to job records."""

    def __init__(
        self,
        store: RecordStore,
        view: View,
        applier: Applier,
        settings: SchedulerSettings,
        wake: Callable[[], None],
        intake: Intake,
    ) -> None:
        self.intake = intake
        self.store = store
        self.view = view
        self.applier = applier
        self.settings = settings
        self._wake = wake

    async def __call__(self, received: Received[cmd.SchedulerCommand]) -> Settle:
        command = received.message
        # Commands are handled several at a time: one may overtake the submission of its job.
        for job_id in jobs_named(command):
            await self.intake.submit_pending(job_id)
        match command:
            case cmd.SubmitJob():
                if await self.intake.submit(command) is not None:
                    self._wake_up()
            case cmd.CancelJob(job_id=job_id, pending_only=pending_only):
                await self.cancel(job_id, release=False, pending_only=pending_only)
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
                await self.change(job_id, lambda j, now: jobstate.confirm_download(j, keep, now))
            case cmd.DeleteOutput(job_id=job_id):
                await self.change(job_id, jobstate.delete_output)
            case cmd.PurgeJob(job_id=job_id, remove_file=remove_file):
                await self.purge(job_id, remove_file=remove_file)
            case cmd.StartBatch(job_ids=job_ids):
                for job_id in job_ids:
                    await self.change(job_id, jobstate.unpause, only=JobStatus.PAUSED)
            case cmd.RenameOutputs(names=names):
                for job_id, name in names.items():
                    await self.change(job_id, partial(_rename, name=name))
            case cmd.CleanupJobs():
                await self.clean_up(command)
            case cmd.ClearCache():
                await self.clear_cache(command)
        return ACK

    async def cancel(self, job_id: str, *, release: bool, pending_only: bool = False) -> None:
        now = time.time()
        keep = self.settings.keep_seconds
        remove_now = self.settings.remove_file_after_right_download

        def change(job: JobRecord | None) -> JobRecord | None:
            if job is None or (pending_only and job.status is JobStatus.RUNNING):
                return None
            if release:
                return jobstate.release(job, remove_file_now=remove_now, keep_seconds=keep, now=now)
            return jobstate.cancel(job, now)

        # its rendition, if nobody else follows it or holds its output, goes on the loop's pass
        await self.store.change_job(job_id, change)
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

        def apply(job: JobRecord | None) -> JobRecord | None:
            if job is None or (only is not None and job.status is not only):
                return None
            return transition(job, now)

        try:
            job = await self.store.change_job(job_id, apply)
        except jobstate.InvalidTransition as exc:
            log.info("command.refused", job_id=job_id, reason=exc.message)
            return
        if job is not None:  # its old rendition, if no job holds its output now, goes on a pass
            self._wake_up()

    async def purge(self, job_id: str, *, remove_file: bool) -> None:
        """Delete a finished job's record; with `remove_file`, one that still holds its output
        lets it go first (its rendition is released on the loop's pass if no other job holds it)."""
        now = time.time()

        def let_go(job: JobRecord | None) -> JobRecord | None:
            if job is None or not remove_file or not jobstate.holds_output(job, now):
                return None
            return jobstate.delete_output(job, now)

        job = await self.store.change_job(job_id, let_go)
        versioned = self.view.jobs.versioned(job_id)
        if job is None or versioned is None:
            return
        if jobstate.is_active(job) or jobstate.holds_output(job, time.time()):
            log.info("command.purge_refused", job_id=job_id, status=job.status)
            return
        await self.store.delete_job(job, versioned.revision)
        self._wake_up()

    async def clean_up(self, command: cmd.CleanupJobs) -> None:
        """Finished jobs older than `command.before`: completed ones let their outputs go, the
        others (and those) have their records purged; then say what it did (`cleanup.finished`:
        the task history shows it)."""
        before, statuses = command.before, command.statuses
        wanted = jobstate.cleanable(statuses)
        started = events.now()
        now = time.time()
        matched = 0
        for job in list(self.view.jobs.values()):
            if not jobstate.cleanup_due(job, before, wanted):
                continue
            matched += 1
            cleared = await self.store.change_job(
                job.id,
                lambda j: jobstate.clear_output(jobstate.clean_up(j, now), now) if j else None,
            )
            versioned = self.view.jobs.versioned(job.id)
            if cleared is not None and versioned is not None:
                await self.store.delete_job(cleared, versioned.revision)
        log.info("jobs.cleaned_up", jobs=matched)
        self._wake_up()
        finished = events.CleanupFinished(
            event_id=f"cleanup:{command.command_id}",
            time=events.now(),
            cleanup_id=command.command_id,
            by=command.by,
            before=datetime.fromtimestamp(before, UTC),
            statuses=sorted(status.value for status in wanted),
            jobs=matched,
            started_at=started,
        )
        await self.store.emit(finished)

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
        self._wake_up()  # placed (or its rendition marked manual) on the loop's next pass

    async def clear_cache(self, command: cmd.ClearCache) -> None:
        """Let go of the finished outputs in the service's store that this clear covers (an
        administrator's: all; a user's: what their own jobs hold), then have the storage service
        delete the files no other job holds.

        Renditions go first, so the files are counted in this clear and not released one by one
        as their jobs change; the files are deleted only after no job holds them.
        """
        request_id, now = command.command_id, time.time()
        changes = decide_clear(
            self.view, now, request_id=request_id, admin=command.admin, owner=command.owner
        )
        applied = await self.applier.apply(changes, now)
        await self.applier.delete_blobs(
            applied.blobs,
            reason="cache cleared",
            msg_id=f"clear:{request_id}",
            request_id=request_id,
            sweep_orphans=command.admin,
        )
        jobs = sum(1 for change in changes if isinstance(change, ClearOutput))
        log.info("cache.cleared", outputs=len(applied.blobs), jobs=jobs, admin=command.admin)
        self._wake_up()

    def _wake_up(self) -> None:
        self._wake()


def jobs_named(command: cmd.SchedulerCommand) -> list[str]:
    """The jobs a command acts on (a submission names the job it creates, not one it acts on)."""
    match command:
        case cmd.SubmitJob() | cmd.CleanupJobs() | cmd.ClearCache():
            return []
        case cmd.StartBatch(job_ids=job_ids):
            return list(job_ids)
        case cmd.RenameOutputs(names=names):
            return list(names)
        case _:
            return [command.job_id]


def _restart(job: JobRecord, now: float, *, nonce: str) -> JobRecord:
    return jobstate.restart_job(job, now, nonce)


def _rename(job: JobRecord, now: float, *, name: str) -> JobRecord:
    return jobstate.rename(job, name, now)
