"""A transcoder's hold on one rendition record in KV: claim it, annotate it, record how the
attempt ended (or hand it back), and notice when it stops being ours.

Every write is a compare-and-set that only applies while this worker still owns the attempt, so
a transcoder that was cancelled or taken over can never overwrite the current owner's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TypeGuard

import msgspec
import structlog

from services.transcoder.attempt import scrub_error
from services.transcoder.helpers import watch_key
from services.transcoder.progress import ProgressReporter
from shared.blobs.users import Stores
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.media.failures import gave_up
from shared.media.probe import ProbeResult
from shared.messages.records import Output, Rendition, RenditionState, Split
from shared.messages.work import TranscodeWork
from shared.nats.consumer import ABANDON, ACK, RETRY, Settle
from shared.nats.topology import describe
from shared.wire import JobError

log = structlog.get_logger("vidmesh.transcoder")

R = RenditionState

STOPPED = JobError(
    code="worker_stopped",
    reason="The transcoder running this job stopped; the job will run again.",
    retryable=True,
)


class RenditionRecords:
    """This transcoder's reads and writes of rendition records, one attempt at a time."""

    def __init__(
        self, store: RecordStore, stores: Stores, *, worker_id: str, max_attempts: int
    ) -> None:
        self.store = store
        self.stores = stores
        self.worker_id = worker_id
        self.max_attempts = max_attempts

    def _owns(self, current: Rendition | None, r: Rendition) -> TypeGuard[Rendition]:
        return current is not None and jobstate.owned_by(
            current, self.worker_id, r.generation, r.attempt
        )

    async def claim(
        self, work: TranscodeWork, *, redelivered: bool, ack_subject: str
    ) -> Rendition | None:
        """Take the rendition; None when there is nothing (left) for us to do."""
        now = time.time()

        def take(current: Rendition | None) -> Rendition | None:
            if current is None or current.generation != work.generation:
                return None
            if current.split is not None:  # its parts are its work now (its planner split it)
                return None
            if current.state in (R.PENDING, R.DISPATCHED):
                return jobstate.claim(current, self.worker_id, now, ack_subject)
            # A redelivery means the previous holder stopped heartbeating: take over.
            if current.state is R.RUNNING and redelivered and current.worker != self.worker_id:
                return jobstate.claim(current, self.worker_id, now, ack_subject)
            return None

        r, changed = await self.store.change_rendition(work.key, take)
        if not changed or r is None:
            log.info("work.skipped", state=r.state if r else None)
            return None
        log.info("work.claimed", attempt=r.attempt, redelivered=redelivered)
        return r

    async def record_probe(self, r: Rendition, probe: ProbeResult) -> None:
        """Keep what the source is on the rendition, so jobs can show it."""

        def keep(current: Rendition | None) -> Rendition | None:
            if not self._owns(current, r):
                return None
            return msgspec.structs.replace(current, probe=probe)

        try:
            await self.store.change_rendition(r.key, keep)
        except Exception as exc:
            log.debug("probe.record_failed", **describe(exc))

    async def record_split(self, r: Rendition, split: Split) -> bool:
        """The rendition's work is its parts now (created before): it keeps running with no
        worker of its own. False when the attempt is no longer ours."""
        now = time.time()

        def divide(current: Rendition | None) -> Rendition | None:
            if not self._owns(current, r):
                return None
            return jobstate.split_rendition(current, split, now)

        _, changed = await self.store.change_rendition(r.key, divide)
        log.info("work.split", segments=split.segments, recorded=changed)
        return changed

    async def record_success(
        self, r: Rendition, output: Output, wall: float, reporter: ProgressReporter
    ) -> Settle:
        """Record the output as the rendition's; an output no longer ours is thrown away."""
        now = time.time()

        def done(current: Rendition | None) -> Rendition | None:
            if not self._owns(current, r):
                return None
            return jobstate.succeed(current, output, now)

        record, changed = await self.store.change_rendition(r.key, done, wall_seconds=wall)
        if not changed:
            # Someone else owns it now: this output is not the one recorded, so it goes
            # (a user's destination keeps its name: the current owner writes it again).
            if not output.store:
                await self.stores.service.delete(output.blob)
            log.info("work.discarded", state=record.state if record else None)
            return ABANDON
        await reporter.stored()
        log.info("work.succeeded", blob=output.blob, size=output.size, wall_s=round(wall, 2))
        return ACK

    async def record_failure(self, r: Rendition, error: JobError) -> Settle:
        """Record the failure: queued to run again while retryable attempts remain, else final."""
        error = scrub_error(error)  # the job record, its events and this log line show it
        now = time.time()
        again = error.retryable and r.attempt < self.max_attempts
        if error.retryable and not again:
            error = gave_up(error, r.attempt)

        def record(current: Rendition | None) -> Rendition | None:
            if not self._owns(current, r):
                return None
            if again:
                return jobstate.retry(current, error, now)
            return jobstate.fail_rendition(current, error, now)

        _, changed = await self.store.change_rendition(r.key, record)
        log.warning(
            "work.failed",
            code=error.code,
            reason=error.reason,
            retry=again and changed,
            attempt=r.attempt,
            detail=error.detail[-500:],
        )
        if not changed:
            return ABANDON
        return RETRY if again else ACK

    async def hand_back(self, r: Rendition) -> None:
        """Shutting down mid-transcode: put the rendition back so another transcoder takes it."""
        now = time.time()

        def back(current: Rendition | None) -> Rendition | None:
            if not self._owns(current, r):
                return None
            return jobstate.retry(current, STOPPED, now)

        with contextlib.suppress(Exception):
            await self.store.change_rendition(r.key, back)
            log.info("work.handed_back")

    async def watch_ownership(self, r: Rendition, lost: asyncio.Future[str]) -> None:
        """Stop when the rendition is cancelled, or claimed by another transcoder."""

        def why_not_ours(current: Rendition) -> str | None:
            # splitting it is this attempt's last act: it ends once the split is recorded
            if self._owns(current, r) or jobstate.split_live(current, r.generation):
                return None
            return "cancelled" if current.state is R.CANCELLED else "taken over"

        await watch_key(self.store.renditions, r.key, why_not_ours, lost)
