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
from shared.fleet import SETTINGS_KEY
from shared.kv import Stale, TypedKV
from shared.messages.fleet import Pool, TranscodingSettings
from shared.messages.records import Lease, LeaseSet, Rendition, RenditionState
from shared.messages.work import ENCODER, TranscodeWork
from shared.projection import Projection
from shared.recordstore import RecordStore

log = structlog.get_logger("vidmesh.scheduler")

R = RenditionState

# A lease whose rendition never got dispatched (the scheduler died in between) is reclaimed.
STALE_LEASE_SECONDS = 15.0


class Dispatcher:
    """Leases slots of every pool and publishes work for pending renditions.

    Each pool has its own leases record and limit (its `concurrency`, or MAX_CONCURRENT_JOBS
    when unset); a disabled pool is given nothing. The fleet's `global_concurrency` bounds the
    leases of all pools together (a soft bound: two scheduler replicas leasing in different
    pools at the same instant may pass it by one each; each pool's own limit is exact).
    """

    def __init__(
        self,
        store: RecordStore,
        view: View,
        leases: TypedKV[LeaseSet],
        settings: SchedulerSettings,
        pools: Projection[Pool] | None = None,
        fleet_settings: Projection[TranscodingSettings] | None = None,
    ) -> None:
        self.store = store
        self.view = view
        self.leases = leases
        self.settings = settings
        self.pools = pools
        self.fleet_settings = fleet_settings
        self.pool = settings.pool

    async def run_once(self) -> bool:
        """Dispatch in every pool with pending work; False when a concurrent change got in first."""
        wanted = {self.pool} | {
            r.pool for r in self.view.renditions.values() if r.state is R.PENDING
        }
        fleet = self.fleet_settings.get(SETTINGS_KEY) if self.fleet_settings else None
        room: int | None = None
        if fleet is not None and fleet.global_concurrency is not None:
            held = 0
            for pool_id in wanted | set(self._configured()):
                current = await self.leases.get(pool_id)
                held += len(current.value.holders) if current else 0
            room = fleet.global_concurrency - held
        ok = True
        for pool_id in sorted(wanted):
            pool = self.pools.get(pool_id) if self.pools else None
            if pool is not None and not pool.enabled:
                continue
            limit = (
                pool.concurrency if pool and pool.concurrency else self.settings.max_concurrent_jobs
            )
            added, fine = await self._run_pool(pool_id, limit, room)
            ok = ok and fine
            if room is not None:
                room -= added
        return ok

    def _configured(self) -> list[str]:
        return [key for key, _ in self.pools.items()] if self.pools else []

    async def _run_pool(self, pool_id: str, limit: int, room: int | None) -> tuple[int, bool]:
        now = time.time()
        current = await self.leases.get(pool_id)
        lease_set = current.value if current else LeaseSet(pool=pool_id)
        holders = {k: v for k, v in lease_set.holders.items() if self._still_held(k, v, now)}
        chosen: list[Rendition] = []
        added = 0
        for r in self._pending_in_order(pool_id, holders):
            if r.key in holders:
                chosen.append(r)  # leased earlier but never dispatched: publish again
            elif r.manual or (len(holders) < limit and (room is None or added < room)):
                added += 0 if r.manual else 1
                holders[r.key] = Lease(
                    generation=r.generation, since=now, manual=r.manual, device=r.first_device
                )
                chosen.append(r)
        if holders != lease_set.holders:
            new = msgspec.structs.replace(lease_set, holders=holders)
            try:
                if current is None:
                    await self.leases.create(pool_id, new)
                else:
                    await self.leases.update(pool_id, new, current.revision)
            except Stale:
                return 0, False
        for r in chosen:
            await self._publish(r, now)
        return added, True

    def _still_held(self, key: str, lease: Lease, now: float) -> bool:
        r = self.view.renditions.get(key)
        if r is None or r.generation != lease.generation:
            return False
        if r.state in (R.DISPATCHED, R.RUNNING):
            return True
        return r.state is R.PENDING and now - lease.since < STALE_LEASE_SECONDS

    def _pending_in_order(self, pool_id: str, holders: dict[str, Lease]) -> list[Rendition]:
        """Pending renditions someone waits for: manual starts first, then the least busy device."""
        busy: dict[str, int] = {}
        for lease in holders.values():
            busy[lease.device] = busy.get(lease.device, 0) + 1
        pending = [
            r
            for r in self.view.renditions.values()
            if r.state is R.PENDING and r.pool == pool_id and self.view.followers(r)
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
