"""A transcoder's hold on one part of a split rendition in KV: claim it, record how the attempt
ended (or hand it back), notice when it stops being ours, and, for the join, finish the rendition.

The same rules as a whole rendition's (`records.py`): every write is a compare-and-set that
applies only while this worker still owns the attempt, so a part that was cancelled or taken over
never overwrites its current owner's record, and a file stored by an attempt that lost is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from services.transcoder.attempt import scrub_error
from services.transcoder.helpers import watch_key
from services.transcoder.records import STOPPED
from shared.blobs.users import Stores
from shared.jobs import state as jobstate
from shared.jobs.parts import JOIN
from shared.jobs.store import RecordStore
from shared.media.failures import gave_up
from shared.messages.records import Output, Part, Rendition, RenditionState
from shared.messages.work import JoinWork, SegmentWork
from shared.nats.consumer import ABANDON, ACK, RETRY, Settle
from shared.nats.kv import TypedKV
from shared.tasks import stop_tasks
from shared.wire import JobError

log = structlog.get_logger("vidmesh.transcoder")

R = RenditionState


class PartRecords:
    """This transcoder's reads and writes of part records, one attempt at a time."""

    def __init__(
        self,
        store: RecordStore,
        parts: TypedKV[Part],
        stores: Stores,
        *,
        worker_id: str,
        max_attempts: int,
    ) -> None:
        self.store = store
        self.parts = parts
        self.stores = stores
        self.worker_id = worker_id
        self.max_attempts = max_attempts

    def _owns(self, current: Part | None, p: Part) -> bool:
        return current is not None and jobstate.part_owned_by(current, self.worker_id, p.attempt)

    async def claim(
        self, work: SegmentWork | JoinWork, *, redelivered: bool, ack_subject: str
    ) -> tuple[Part, Rendition] | None:
        """Take the part, with its rendition as read; None when there is nothing (left) for us
        to do: the rendition is no longer split at this generation, or the part is done,
        cancelled or running here."""
        name = work.part if isinstance(work, SegmentWork) else JOIN
        found = await self.store.renditions.get(work.key)
        r = found.value if found else None
        now = time.time()

        def take(current: Part | None) -> Part | None:
            if current is None or not jobstate.can_claim_part(
                current, r, self.worker_id, redelivered=redelivered
            ):
                return None
            return jobstate.claim_part(current, self.worker_id, now, ack_subject)

        key = jobstate.part_key(work.key, work.generation, name)
        done = await self.parts.replace(key, take)
        if not done.changed or done.record is None or r is None:
            log.info("part.skipped", part=name, state=done.record.state if done.record else None)
            return None
        log.info("part.claimed", part=name, attempt=done.record.attempt, redelivered=redelivered)
        return done.record, r

    async def parts_of(self, r: Rendition) -> list[Part]:
        """Every part of the rendition's generation, in work order."""
        found = await self.parts.values(under=f"{r.key}.{r.generation}")
        return sorted(found.values(), key=jobstate.part_order)

    async def record_success(self, p: Part, output: Output) -> Settle:
        """Record the part's file; a file no longer ours is deleted at once."""
        now = time.time()

        def done(current: Part | None) -> Part | None:
            if current is None or not self._owns(current, p):
                return None
            return jobstate.succeed_part(current, output, now)

        record, _, changed = await self.parts.change(p.key, done)
        if not changed:
            await self.discard(output)
            log.info("part.discarded", part=p.name, state=record.state if record else None)
            return ABANDON
        log.info("part.succeeded", part=p.name, blob=output.blob, size=output.size)
        return ACK

    async def record_join(self, r: Rendition, join: Part, output: Output, wall: float) -> Settle:
        """The joined output becomes the rendition's (once: only while it is still split at the
        join's generation and the join is ours), then the join part is done. An output that
        lost is deleted (from the service's store; a user's destination keeps its name, and its
        current owner writes it again)."""
        now = time.time()
        current = await self.parts.get(join.key)
        if current is None or not self._owns(current.value, join):
            await self.discard(output)
            log.info("part.discarded", part=join.name)
            return ABANDON

        def finish(current: Rendition | None) -> Rendition | None:
            if current is None or not jobstate.split_live(current, join.generation):
                return None
            return jobstate.joined(current, join.generation, output, now)

        record, changed = await self.store.change_rendition(r.key, finish, wall_seconds=wall)
        if not changed:
            await self.discard(output)
            log.info("work.discarded", state=record.state if record else None)
            return ABANDON
        log.info("work.succeeded", blob=output.blob, size=output.size, wall_s=round(wall, 2))
        return await self.record_success(join, output)

    async def record_failure(self, p: Part, error: JobError) -> Settle:
        """Record the failure: the part runs again while retryable attempts remain, else it
        failed for good (and the scheduler fails its rendition)."""
        error = scrub_error(error)
        now = time.time()
        again = error.retryable and p.attempt < self.max_attempts
        if error.retryable and not again:
            error = gave_up(error, p.attempt)

        def record(current: Part | None) -> Part | None:
            if current is None or not self._owns(current, p):
                return None
            if again:
                return jobstate.retry_part(current, error, now)
            return jobstate.fail_part(current, error, now)

        _, _, changed = await self.parts.change(p.key, record)
        log.warning(
            "part.failed",
            part=p.name,
            code=error.code,
            reason=error.reason,
            retry=again and changed,
            attempt=p.attempt,
            detail=error.detail[-500:],
        )
        if not changed:
            return ABANDON
        return RETRY if again else ACK

    async def hand_back(self, p: Part) -> None:
        """Shutting down mid-part: put it back so another transcoder takes it."""
        now = time.time()

        def back(current: Part | None) -> Part | None:
            if current is None or not self._owns(current, p):
                return None
            return jobstate.retry_part(current, STOPPED, now)

        with contextlib.suppress(Exception):
            await self.parts.change(p.key, back)
            log.info("part.handed_back", part=p.name)

    async def watch(self, p: Part, r: Rendition, lost: asyncio.Future[str]) -> None:
        """Stop when the part is cancelled or taken over, or its rendition is no longer split at
        the part's generation (cancelled, failed, renewed, gone)."""

        def part_gone(current: Part) -> str | None:
            if self._owns(current, p):
                return None
            return "cancelled" if current.state is R.CANCELLED else "taken over"

        def rendition_gone(current: Rendition) -> str | None:
            return None if jobstate.split_live(current, p.generation) else "cancelled"

        watches = [
            asyncio.create_task(watch_key(self.parts, p.key, part_gone, lost)),
            asyncio.create_task(watch_key(self.store.renditions, r.key, rendition_gone, lost)),
        ]
        try:
            await lost
        finally:
            await stop_tasks(watches)

    async def discard(self, output: Output) -> None:
        """Delete a file of the service's store that is nobody's now."""
        if output.store:
            return
        with contextlib.suppress(Exception):
            await self.stores.service.delete(output.blob)
