"""The reconcile loop: level-triggered, one pass at a time.

Every change of a job, rendition or lease (seen through the projections, our own writes at once)
marks what it may affect and wakes the loop; each pass takes what was marked, asks `decide` what
should change (a pure function of the view), and has `apply` write it by compare-and-set. Every
`sweep_interval` a pass also looks at the jobs whose time ran out (outputs to expire, records to
purge: a time index kept from the changes), and, for anything a lost message left undone, at
the next records in turns, a bounded number each sweep, so a sweep's work does not grow with
every job queued. Every step is idempotent: after a crash the scheduler looks at every job
again (its projection, loading, reports each as changed) and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from services.scheduler.apply import Applier
from services.scheduler.config import SchedulerSettings
from services.scheduler.decide import decide
from services.scheduler.dispatch import FORGET_RELEASED_SECONDS, STALE_LEASE_SECONDS
from services.scheduler.view import View, admitted, waiting
from shared.jobs.queries import counts_toward_device_limit
from shared.messages.records import JobRecord, JobStatus, Lease, Part, Rendition
from shared.nats.projection import Projection
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.scheduler")

# After a failed step, seconds before the loop goes on (a failing NATS is not hammered).
FAILURE_BACKOFF_SECONDS = 0.5
# After a failed sweep, seconds before the next one (not a whole `sweep_interval`).
SWEEP_RETRY_SECONDS = 5.0
# Jobs (and renditions) a sweep looks at besides those whose time ran out.
SWEEP_SLICE = 2_000


class ReconcileLoop:
    """What changed since the last pass, and the loop that decides and applies for it."""

    def __init__(
        self,
        view: View,
        applier: Applier,
        settings: SchedulerSettings,
        *,
        on_sweep: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.view = view
        self.applier = applier
        self.settings = settings
        self._on_sweep = on_sweep
        self._dirty_jobs: set[str] = set()
        self._dirty_renditions: set[str] = set()
        self._dirty_leases: set[str] = set()
        self._wake = asyncio.Event()
        self._next_full_check = 0.0
        self._next_forget = 0.0
        self.passes = 0
        # (when, job id): jobs whose time runs out then (an output to expire, a record to purge)
        self._due: list[tuple[float, str]] = []
        # What each sweep looks at besides what is due: the next records, in turns.
        self._job_turns: Turns = Turns(SWEEP_SLICE)
        self._rendition_turns: Turns = Turns(SWEEP_SLICE)
        view.jobs.listen(self._job_changed)
        view.renditions.listen(self._rendition_changed)
        if view.parts is not None:
            view.parts.listen(self._part_changed)

    def watch_leases(self, leases: Projection[Lease]) -> None:
        """Look at a lease again when it changes (its rendition's changes too, see below)."""
        leases.listen(self._lease_changed)

    def wake(self) -> None:
        """Run a pass soon (a command changed a record, or a limit was raised)."""
        self._wake.set()

    def look_at_job(self, job_id: str) -> None:
        """Look at a job again on the next pass (its share check came back)."""
        self._dirty_jobs.add(job_id)
        self._wake.set()

    def _job_changed(self, key: str, old: JobRecord | None, new: JobRecord | None) -> None:
        self._dirty_jobs.add(key)
        due = None if new is None else due_at(new, self.settings.keep_seconds)
        if due is not None:
            heapq.heappush(self._due, (due, key))
        for record in (old, new):
            if record is not None and record.rendition:
                self._dirty_renditions.add(record.rendition)
        if old is not None:
            # A job that leaves its device's share, or the device's held jobs, may let one of
            # them go: look at them; one that leaves its user's admitted or waiting jobs may
            # let the next waiting one in. A job that fills a share is looked at itself.
            if _frees_device_room(old, new):
                self._dirty_jobs.update(j.id for j in self.view.held_in_order(old.device_id))
            if _frees_user_room(old, new):
                self._dirty_jobs.update(j.id for j in self._admissible_next(old.owner))
        self._wake.set()

    def _admissible_next(self, owner: str) -> list[JobRecord]:
        """The user's waiting jobs that the active limit has room for now (the first in line)."""
        limit = self.settings.max_active_jobs_per_user
        waiting = self.view.waiting_in_order(owner)
        if not limit:
            return waiting
        return waiting[: max(0, limit - self.view.active_count(owner))]

    def _rendition_changed(self, key: str, old: Rendition | None, new: Rendition | None) -> None:
        self._dirty_renditions.add(key)
        self._dirty_jobs.update(job.id for job in self.view.jobs_of_rendition(key))
        if self.view.leases is not None:
            self._dirty_leases.update(self.view.leases.keys_of.get(key, ()))
            for p in self.view.all_parts_of(key):
                self._dirty_leases.update(self.view.leases.keys_of.get(p.key, ()))
        self._wake.set()

    def _part_changed(self, key: str, old: Part | None, new: Part | None) -> None:
        """A part's change may fail, finish or free its rendition's work (its join may go out
        now), and may end its lease."""
        for record in (old, new):
            if record is not None:
                self._dirty_renditions.add(record.rendition)
        if self.view.leases is not None:
            self._dirty_leases.update(self.view.leases.keys_of.get(key, ()))
        self._wake.set()

    def _lease_changed(self, key: str, old: Lease | None, new: Lease | None) -> None:
        if new is not None:
            self._dirty_leases.add(key)

    async def run_forever(self) -> None:
        """Passes until cancelled. Each step of a pass (the sweep's extras, the pass itself) is
        guarded alike: one that fails is logged, the loop backs off briefly and goes on, so no
        exception ends scheduling."""
        next_sweep = 0.0
        while True:
            timeout = max(0.0, next_sweep - time.monotonic())
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that
            # lands as its timeout expires, and the loop would never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            if time.monotonic() >= next_sweep:
                self._dirty_jobs.update(self._due_jobs(time.time()))
                self._dirty_jobs.update(self._job_turns.next(self.view.jobs))
                self._dirty_renditions.update(self._rendition_turns.next(self.view.renditions))
                next_sweep = time.monotonic() + self.settings.sweep_interval
                if self._on_sweep is not None and not await self._guarded(
                    "scheduler.sweep_failed", self._on_sweep
                ):
                    # what the sweep repairs (the events) should not wait a whole interval more
                    next_sweep = min(next_sweep, time.monotonic() + SWEEP_RETRY_SECONDS)
                await self._guarded("leases.forget_failed", self._forget_released)
                await self._guarded("parts.forget_failed", self._forget_dropped_parts)
            await self._guarded("scheduler.pass_failed", self.run_pass)

    def _due_jobs(self, now: float) -> list[str]:
        """The jobs whose time ran out by `now` (each looked at again; one that changed since is
        decided as it is now)."""
        found = []
        while self._due and self._due[0][0] <= now:
            found.append(heapq.heappop(self._due)[1])
        return found

    async def _guarded(self, event: str, step: Callable[[], Awaitable[object]]) -> bool:
        """Run one step of the loop; on an error log it, back off briefly and ask for another
        pass. Whether the step succeeded."""
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(event, **describe(exc))
            await asyncio.sleep(FAILURE_BACKOFF_SECONDS)
            self._wake.set()
            return False
        return True

    async def _forget_released(self) -> None:
        """Purge old delete markers of released leases, now and then."""
        leases = self.applier.leases
        if leases is None or time.monotonic() < self._next_forget:
            return
        self._next_forget = time.monotonic() + FORGET_RELEASED_SECONDS / 2
        forgotten = await leases.store.forget_deleted(FORGET_RELEASED_SECONDS)
        if forgotten:
            log.info("leases.forgotten", keys=forgotten)

    async def _forget_dropped_parts(self) -> None:
        """Purge old delete markers of dropped parts, once a sweep (parts come and go by the
        hundred with every long film)."""
        if self.view.parts is None:
            return
        forgotten = await self.view.parts.store.forget_deleted(FORGET_RELEASED_SECONDS)
        if forgotten:
            log.info("parts.forgotten", keys=forgotten)

    async def run_pass(self) -> None:
        """One pass over everything that changed since the last: decide, then apply."""
        renditions, self._dirty_renditions = self._dirty_renditions, set()
        jobs, self._dirty_jobs = self._dirty_jobs, set()
        leases, self._dirty_leases = self._dirty_leases, set()
        # Leases of renditions that stay pending time out without any change: look at every
        # lease now and then, and at the changed ones on every pass.
        full = time.monotonic() >= self._next_full_check
        if full:
            self._next_full_check = time.monotonic() + STALE_LEASE_SECONDS / 3
        try:
            now = time.time()
            changes = decide(
                self.view,
                now,
                self.settings,
                renditions=renditions,
                jobs=jobs,
                leases=None if full else leases,
            )
            applied = await self.applier.apply(changes, now)
        except BaseException:
            self._dirty_renditions |= renditions
            self._dirty_jobs |= jobs
            self._dirty_leases |= leases
            raise
        self._dirty_leases |= applied.again
        if not applied.ok:
            self._wake.set()
        self.passes += 1


def _frees_device_room(old: JobRecord, new: JobRecord | None) -> bool:
    """Whether a job's change may let one of its device's held jobs go: it no longer occupies
    the device's share, or it is no longer one of the held."""
    held = JobStatus.HELD
    if new is None or new.device_id != old.device_id:
        return counts_toward_device_limit(old) or old.status is held
    left = counts_toward_device_limit(old) and not counts_toward_device_limit(new)
    return left or (old.status is held and new.status is not held)


def _frees_user_room(old: JobRecord, new: JobRecord | None) -> bool:
    """Whether a job's change may let its user's next waiting job in: it is no longer admitted,
    or no longer one of the waiting."""
    if new is None or new.owner != old.owner:
        return admitted(old) or waiting(old)
    return (admitted(old) and not admitted(new)) or (waiting(old) and not waiting(new))


def due_at(job: JobRecord, keep_seconds: float) -> float | None:
    """When a job's time runs out, if it can: a completed job's output expires at its
    `keep_until`; an ended job's record may be purged `keep_seconds` after it ended."""
    if job.status is JobStatus.COMPLETED:
        return job.keep_until
    if job.status is JobStatus.REMOVED:
        return (job.removed_at or job.updated_at) + keep_seconds
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return (job.finished_at or job.updated_at) + keep_seconds
    return None


class Turns:
    """The keys of a projection, `size` at a time, round and round: what a sweep looks at
    besides what is due, so its work does not grow with every record held (each record is still
    looked at every len/size sweeps)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: list[str] = []
        self._at = 0

    def next(self, records: Projection[Any]) -> list[str]:
        if self._at >= len(self._keys):
            self._keys = [key for key, _ in records.items()]  # a new round
            self._at = 0
        turn = self._keys[self._at : self._at + self.size]
        self._at += self.size
        return turn
