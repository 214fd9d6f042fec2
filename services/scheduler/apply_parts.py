"""Carrying out the decisions about parts of split renditions (`services.scheduler.parts`): a
part's work item published, then the part marked dispatched; a rendition failed for its failed
part; the live parts of an ended generation cancelled; their files given to the storage service
and their records deleted.

Like `services.scheduler.apply`, every write is a compare-and-set whose function decides again
on the record it reads; a part that changed meanwhile is left as it is, and the next pass looks
at it again (its change marks it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from services.scheduler import parts as decisions
from services.scheduler.changes import CancelParts, DropParts, FailSplit, PublishPart
from services.scheduler.view import View
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.messages.records import Part, Rendition, RenditionState
from shared.messages.work import ENCODER
from shared.nats.kv import Stale
from shared.nats.projection import Projection

log = structlog.get_logger("vidmesh.scheduler")

R = RenditionState

# Has the storage service delete blobs: (blobs, reason, msg_id).
DeleteBlobs = Callable[[list[str], str, str], Awaitable[None]]


class PartWrites:
    """Writes to the parts bucket (and, for a failed part, to its rendition), as decided."""

    def __init__(self, store: RecordStore, view: View, delete_blobs: DeleteBlobs) -> None:
        self.store = store
        self.view = view
        self.delete_blobs = delete_blobs

    @property
    def parts(self) -> Projection[Part]:
        assert self.view.parts is not None, "the scheduler's view has no parts"
        return self.view.parts

    async def _change(self, key: str, fn: Callable[[Part | None], Part | None]) -> bool:
        """Compare-and-set on one part, seen here at once; whether it changed."""
        done = await self.parts.store.replace(key, fn, known=self.parts.versioned(key))
        if done.changed and done.record is not None and done.revision is not None:
            self.parts.apply(key, done.record, done.revision)
        return done.changed

    async def publish(self, change: PublishPart, now: float) -> None:
        """Publish the part's work item to the pool that leased it, then mark it dispatched
        there (in that order, as a rendition's: a crash between means a re-publish with the same
        message id, dropped)."""
        p, work = change.part, change.work
        await self.store.js.publish(
            self.store.names.work(change.pool),
            ENCODER.encode(work),
            headers={"Nats-Msg-Id": f"{p.key}:{work.dispatch_seq}"},
        )

        def mark(current: Part | None) -> Part | None:
            if current is None or current.generation != p.generation:
                return None
            if current.state is not R.PENDING or current.dispatch_seq != p.dispatch_seq:
                return None
            r = self.view.renditions.get(p.rendition)
            if r is None or not jobstate.split_live(r, p.generation):
                return None
            return jobstate.dispatch_part(current, now, change.pool)

        await self._change(p.key, mark)
        log.info(
            "part.dispatched",
            rendition=p.rendition,
            generation=p.generation,
            part=p.name,
            kind=type(work).__name__,
            pool=change.pool,
        )

    async def fail_split(self, change: FailSplit, now: float) -> None:
        """The rendition fails with its failed part's error, while still running split."""

        def fail(current: Rendition | None) -> Rendition | None:
            if current is None or not jobstate.split_live(current, change.generation):
                return None
            error = decisions.failed_with(self.view, change)
            return None if error is None else jobstate.fail_rendition(current, error, now)

        _, changed = await self.store.change_rendition(change.key, fail)
        if changed:
            log.info("rendition.failed_by_part", rendition=change.key, part=change.part)

    async def cancel(self, change: CancelParts, now: float) -> None:
        """Cancel each live part of the ended generation (its transcoder stops)."""
        cancelled = 0
        for key in change.parts:

            def cancel(current: Part | None) -> Part | None:
                if current is None or current.generation != change.generation:
                    return None
                if current.state not in jobstate.RENDITION_LIVE:
                    return None
                r = self.view.renditions.get(change.key)
                if not decisions.generation_ended(r, change.generation):
                    return None
                if decisions.joining(r, current, now):
                    return None
                return jobstate.cancel_part(current, now)

            cancelled += await self._change(key, cancel)
        if cancelled:
            log.info(
                "parts.cancelled",
                rendition=change.key,
                generation=change.generation,
                parts=cancelled,
            )

    async def drop(self, change: DropParts) -> None:
        """Have the storage service delete the parts' files, then delete their records at the
        revisions read (one changed meanwhile stays, for the next pass)."""
        r = self.view.renditions.get(change.key)
        if not decisions.generation_ended(r, change.generation):
            return
        if change.blobs:
            await self.delete_blobs(
                list(change.blobs), "parts", f"parts:{change.key}:{change.generation}"
            )
        dropped = 0
        for key, revision in change.revisions:
            try:
                await self.parts.store.delete(key, revision)
            except Stale:
                continue
            self.parts.apply(key, None, revision + 1)  # the delete marker comes later
            dropped += 1
        log.info(
            "parts.dropped",
            rendition=change.key,
            generation=change.generation,
            parts=dropped,
            blobs=len(change.blobs),
        )
