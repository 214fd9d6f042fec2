"""Dispatch: give pending renditions a pool's concurrency slots and publish them as work.

The pool's leases are one KV record changed only by compare-and-set, so scheduler replicas never
exceed the limit together. A work item is published before its rendition is marked dispatched,
with a message id derived from the dispatch, so a crash in between only means a de-duplicated
re-publish.
"""

from __future__ import annotations

import time

import msgspec
import structlog

from services.scheduler.config import SchedulerSettings
from services.scheduler.view import View
from shared import jobstate
from shared.kv import Stale, TypedKV
from shared.messages.records import Lease, LeaseSet, Rendition, RenditionState
from shared.messages.work import ENCODER, TranscodeWork
from shared.recordstore import RecordStore

log = structlog.get_logger("vidmesh.scheduler")

R = RenditionState

# A lease whose rendition never got dispatched (the scheduler died in between) is reclaimed.
STALE_LEASE_SECONDS = 15.0


class Dispatcher:
    """Leases slots of one pool and publishes work for pending renditions."""

    def __init__(
        self, store: RecordStore, view: View, leases: TypedKV[LeaseSet], settings: SchedulerSettings
    ) -> None:
        self.store = store
        self.view = view
        self.leases = leases
        self.settings = settings
        self.pool = settings.pool

    async def run_once(self) -> bool:
        """Dispatch what can be dispatched; returns False when a concurrent change got in first."""
        now = time.time()
        current = await self.leases.get(self.pool)
        lease_set = current.value if current else LeaseSet(pool=self.pool)
        holders = {k: v for k, v in lease_set.holders.items() if self._still_held(k, v, now)}
        chosen: list[Rendition] = []
        for r in self._pending_in_order(holders):
            if r.key in holders:
                chosen.append(r)  # leased earlier but never dispatched: publish again
            elif r.manual or len(holders) < self.settings.max_concurrent_jobs:
                holders[r.key] = Lease(
                    generation=r.generation, since=now, manual=r.manual, device=r.first_device
                )
                chosen.append(r)
        if holders != lease_set.holders:
            new = msgspec.structs.replace(lease_set, holders=holders)
            try:
                if current is None:
                    await self.leases.create(self.pool, new)
                else:
                    await self.leases.update(self.pool, new, current.revision)
            except Stale:
                return False
        for r in chosen:
            await self._publish(r, now)
        return True

    def _still_held(self, key: str, lease: Lease, now: float) -> bool:
        r = self.view.renditions.get(key)
        if r is None or r.generation != lease.generation:
            return False
        if r.state in (R.DISPATCHED, R.RUNNING):
            return True
        return r.state is R.PENDING and now - lease.since < STALE_LEASE_SECONDS

    def _pending_in_order(self, holders: dict[str, Lease]) -> list[Rendition]:
        """Pending renditions someone waits for: manual starts first, then the least busy device."""
        busy: dict[str, int] = {}
        for lease in holders.values():
            busy[lease.device] = busy.get(lease.device, 0) + 1
        pending = [
            r
            for r in self.view.renditions.values()
            if r.state is R.PENDING and r.pool == self.pool and self.view.followers(r)
        ]
        return sorted(
            pending,
            key=lambda r: (not r.manual, -r.priority, busy.get(r.first_device, 0), r.created_at),
        )

    async def _publish(self, r: Rendition, now: float) -> None:
        seq = r.dispatch_seq + 1
        work = TranscodeWork(
            key=r.key,
            generation=r.generation,
            dispatch_seq=seq,
            source=r.source,
            profile=r.profile,
            spec=r.spec,
            container=r.container,
            owner=r.owner,
            destination=r.destination,
            output_name=r.output_name,
            duration_hint=r.duration_hint,
            jobs=[job.id for job in self.view.followers(r)],
            dispatched_at=now,
        )
        await self.store.js.publish(
            self.store.names.work(r.pool),
            ENCODER.encode(work),
            headers={"Nats-Msg-Id": f"{r.key}:{r.generation}:{seq}"},
        )

        def mark(current: Rendition | None) -> Rendition | None:
            if current is None or current.generation != r.generation:
                return None
            if current.state is not R.PENDING or current.dispatch_seq != r.dispatch_seq:
                return None
            return jobstate.dispatch(current, now)

        await self.store.change_rendition(r.key, mark)
        log.info("rendition.dispatched", rendition=r.key, generation=r.generation, manual=r.manual)
