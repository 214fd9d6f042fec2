"""Share checks run beside the scheduler's loop, never in it.

A queued job that would share an output another job's request made (its URL carries other
credentials) stays unattached while its own URL is checked, within VIDMESH_SHARE_CHECK_TIMEOUT;
the loop goes on placing and dispatching other jobs meanwhile. The answer is kept in the view
(`ShareAnswers`) and the job is looked at again: a 2xx attaches it to the shared rendition;
anything else gives it a rendition of its own, transcoded from its own URL (a job never fails
for its check). The decisions are `decide`'s; this module only asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from services.scheduler.access import AccessCheck, Verdict
from services.scheduler.view import View, waiting
from shared.messages.records import JobRecord
from shared.nats.topology import describe
from shared.tasks import stop_tasks

log = structlog.get_logger("vidmesh.scheduler")


class ShareChecks:
    """The share checks in flight, one per job, and the answers they brought back."""

    def __init__(self, view: View, access: AccessCheck, decided: Callable[[str], None]) -> None:
        self.view = view
        self.shares = view.shares
        self.access = access
        self._decided = decided  # the job is looked at again (its record may not have changed)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        view.jobs.listen(self._job_changed)

    def _job_changed(self, key: str, old: JobRecord | None, new: JobRecord | None) -> None:
        """A job that no longer waits for a rendition (placed, cancelled, deleted...) needs no
        check or answer: its check ends at once rather than ask the source, and make a rendition,
        for nobody."""
        if new is not None and waiting(new):
            return
        self.shares.answers.pop(key, None)
        task = self._tasks.get(key)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def pending(self, job_id: str) -> bool:
        """Whether the job's check is still in flight (the loop leaves the job alone)."""
        return job_id in self._tasks

    def start(self, job: JobRecord, key: str) -> None:
        """Check, beside the loop, whether `job` may share rendition `key`."""
        if job.id not in self._tasks:
            self.shares.pending.add(job.id)
            self._tasks[job.id] = asyncio.create_task(
                self._ask(job, key), name=f"scheduler.share_check.{job.id}"
            )

    async def _ask(self, job: JobRecord, key: str) -> None:
        try:
            answer = await self.access.answer(job.source)
            log.info(
                "job.share_checked", job_id=job.id, verdict=answer.verdict.value, why=answer.why
            )
            current = self.view.jobs.get(job.id)
            if current is not None and waiting(current):
                self.shares.answers[job.id] = (key, answer.verdict is Verdict.ALLOWED)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The job stays queued and unattached: a later pass places it again.
            log.warning("share_check.failed", job_id=job.id, **describe(exc))
        finally:
            self._tasks.pop(job.id, None)
            self.shares.pending.discard(job.id)
            self._decided(job.id)

    async def close(self) -> None:
        await stop_tasks(list(self._tasks.values()))
