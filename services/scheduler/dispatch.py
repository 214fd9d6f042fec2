"""Dispatch: give pending renditions a pool's concurrency slots and publish them as work.

A lease is one KV key of its own (see `shared.nats.leases`), so no record grows with the number of
clients or leases, and scheduler replicas never exceed a pool's limit together:

- An automatic lease is the key `<pool>.slot.<n>` with n below the pool's limit, made with a
  create that NATS refuses when the key exists. Two replicas that pick the same free slot: one
  create lands, the other is refused and that replica looks again on its next pass. Distinct
  slots below the limit are at most `limit`, so the limit holds exactly, with no lock and no
  shared counter. A replica also leases nothing while it counts `limit` automatic leases, so
  after the limit is lowered the slots above it are not replaced as their renditions end.
- A manual lease (`POST /start-job`) is `<pool>.manual.<rendition>`, beyond the limit.
- A lease is released by a delete at the revision it was read at: a replica cannot delete a
  slot another one has taken again meanwhile.
- Two replicas whose views lag may lease one rendition twice (on two slots); the work item's
  message id de-duplicates the publish, and the next pass deletes the extra lease. The error is
  toward fewer transcodes, never more.

A work item is published before its rendition is marked dispatched, with a message id derived
from the dispatch, so a crash in between only means a de-duplicated re-publish.

Upgrading from the one-record layout (a `LeaseSet` per pool under the key `<pool>`): the
scheduler turns each live holder into a lease key when it starts, then deletes the old record at
the revision it read. Renditions that held old leases keep running and keep their slots; none is
published twice, because only a pending rendition is ever published.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter, defaultdict

import msgspec
import structlog

from services.scheduler.config import SchedulerSettings
from services.scheduler.view import View
from shared.fleet import SETTINGS_KEY
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.messages.fleet import Pool, TranscodingSettings
from shared.messages.records import Lease, LeaseSet, Rendition, RenditionState
from shared.messages.work import ENCODER, TranscodeWork
from shared.nats.kv import Stale, TypedKV
from shared.nats.leases import manual_key, pool_of, slot_key, slot_of
from shared.nats.projection import Projection

log = structlog.get_logger("vidmesh.scheduler")

R = RenditionState

# A lease whose rendition never got dispatched (the scheduler died in between) is reclaimed.
STALE_LEASE_SECONDS = 15.0
# A released lease's delete marker is purged from the bucket this long after: every replica's
# view has seen it by then (one that has not finds the key gone on its next full check), and the
# bucket keeps no key per rendition ever leased.
FORGET_RELEASED_SECONDS = 2 * STALE_LEASE_SECONDS / 3


# Whose work a rendition is, for taking turns: a Streamyfin device, or a native API user (whose
# jobs have no device: counted as one, every native user would wait behind the busiest).
Client = tuple[str, str]
NO_CLIENT: Client = ("", "")


def client_of(r: Rendition) -> Client:
    """The device the rendition was first asked for from, or else its owner."""
    return ("device", r.first_device) if r.first_device else ("owner", r.owner)


class Dispatcher:
    """Leases slots of every pool and publishes work for pending renditions.

    Each pool has its own lease keys and limit (its `concurrency`, or MAX_CONCURRENT_JOBS
    when unset); a disabled pool is given nothing (its ended leases are still released). The
    fleet's `global_concurrency` bounds the leases of all pools together (a soft bound: two
    scheduler replicas leasing in different pools at the same instant may pass it by one each;
    each pool's own limit is exact). The leases are read from a projection of the bucket, which
    may lag; the create that claims a slot is what decides, so a lagging view costs a retry,
    never a slot too many.
    """

    def __init__(
        self,
        store: RecordStore,
        view: View,
        leases: Projection[Lease],
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
        # Indexes kept from the projections' changes, so a pass costs what changed, not what
        # is held: leases by pool, lease keys by rendition, and leases to look at again.
        self._of_pool: dict[str, dict[str, Lease]] = defaultdict(dict)
        self._keys_of: dict[str, set[str]] = defaultdict(set)
        self._recheck: dict[str, set[str]] = defaultdict(set)
        # Leases per client (see `client_of`) of each leased rendition, per pool.
        self._busy: dict[str, Counter[Client]] = defaultdict(Counter)
        self._client_of: dict[str, Client] = {}
        self._slots: dict[str, set[int]] = defaultdict(set)  # automatic slots taken, per pool
        self._next_full_check = 0.0
        self._next_forget = 0.0
        leases.listen(self._lease_changed)
        view.renditions.listen(self._rendition_changed)
        for key, lease in leases.items():
            self._lease_changed(key, None, lease)

    def _lease_changed(self, key: str, old: Lease | None, new: Lease | None) -> None:
        pool = pool_of(key)
        if not pool:
            return
        if old is not None:
            self._of_pool[pool].pop(key, None)
            self._busy[pool][self._client_of.pop(key, NO_CLIENT)] -= 1
            if (slot := slot_of(key)) is not None:
                self._slots[pool].discard(slot)
            self._keys_of[old.rendition].discard(key)
            if not self._keys_of[old.rendition]:
                del self._keys_of[old.rendition]
        if new is not None:
            self._of_pool[pool][key] = new
            leased = self.view.renditions.get(new.rendition)
            self._client_of[key] = client_of(leased) if leased else NO_CLIENT
            self._busy[pool][self._client_of[key]] += 1
            if (slot := slot_of(key)) is not None:
                self._slots[pool].add(slot)
            self._keys_of[new.rendition].add(key)
            self._recheck[pool].add(key)

    def _rendition_changed(self, key: str, old: Rendition | None, new: Rendition | None) -> None:
        for lease_key in self._keys_of.get(key, ()):
            self._recheck[pool_of(lease_key)].add(lease_key)

    async def run_once(self) -> bool:
        """Dispatch in every pool with pending work; False when a concurrent change got in first."""
        now = time.time()
        # Leases of renditions that stay pending time out without any change: look at every
        # lease now and then, and at the changed ones on every pass.
        full = time.monotonic() >= self._next_full_check
        if full:
            self._next_full_check = time.monotonic() + STALE_LEASE_SECONDS / 3
        fleet = self.fleet_settings.get(SETTINGS_KEY) if self.fleet_settings else None
        room: int | None = None
        if fleet is not None and fleet.global_concurrency is not None:
            room = fleet.global_concurrency - len(self.leases)
        ok = True
        leased = {pool for pool, held in self._of_pool.items() if held}
        for pool_id in sorted({self.pool} | self.view.pending_pools() | leased):
            pool = self.pools.get(pool_id) if self.pools else None
            limit = (
                pool.concurrency if pool and pool.concurrency else self.settings.max_concurrent_jobs
            )
            if not await self._release_ended(pool_id, now, full=full):
                ok = False
            if pool is not None and not pool.enabled:
                continue
            added, fine = await self._lease_pending(pool_id, limit, room, now)
            ok = ok and fine
            if room is not None:
                room -= added
        return ok

    async def forget_released(self) -> None:
        """Purge old delete markers of released leases, now and then (a sweep calls it)."""
        if time.monotonic() < self._next_forget:
            return
        self._next_forget = time.monotonic() + FORGET_RELEASED_SECONDS / 2
        forgotten = await self.leases.store.forget_deleted(FORGET_RELEASED_SECONDS)
        if forgotten:
            log.info("leases.forgotten", keys=forgotten)

    async def _lease_pending(
        self, pool_id: str, limit: int, room: int | None, now: float
    ) -> tuple[int, bool]:
        held = self._of_pool[pool_id]
        auto = set(self._slots[pool_id])
        ok = True
        chosen: list[Rendition] = []
        added = 0
        for r in self._pending_in_order(pool_id):
            if any(held.get(key) for key in self._keys_of.get(r.key, ())):
                chosen.append(r)  # leased earlier but never dispatched: publish again
                continue
            lease = Lease(
                generation=r.generation, since=now, manual=r.manual, rendition=r.key, pool=pool_id
            )
            if r.manual:
                key = manual_key(pool_id, r.key)
            elif len(auto) < limit and (room is None or added < room):
                free = next(n for n in range(limit) if n not in auto)
                key = slot_key(pool_id, free)
            else:
                continue
            if not await self._claim(key, lease):
                ok = False  # another replica got in first: look again on the next pass
                continue
            if not r.manual:
                auto.add(free)
                added += 1
            chosen.append(r)
        for r in chosen:
            await self._publish(r, now)
        return added, ok

    async def _release_ended(self, pool_id: str, now: float, *, full: bool) -> bool:
        """Delete the pool's leases whose rendition no longer holds them, and a rendition's
        second lease (the lowest key stays); False if a delete was refused."""
        held = self._of_pool[pool_id]
        candidates = set(held) if full else self._recheck[pool_id]
        self._recheck[pool_id] = set()
        ok = True
        for key in sorted(candidates):
            lease = held.get(key)
            if lease is None:
                continue
            first = min(self._keys_of.get(lease.rendition, {key}))
            if self._still_held(lease, now) and first == key:
                continue
            if not await self._release(key):
                ok = False
                self._recheck[pool_id].add(key)
        return ok

    async def _claim(self, key: str, lease: Lease) -> bool:
        try:
            revision = await self.leases.store.create(key, lease)
        except Stale:
            return False
        self.leases.apply(key, lease, revision)  # read our own write before the watch brings it
        return True

    async def _release(self, key: str) -> bool:
        versioned = self.leases.versioned(key)
        if versioned is None:
            return True
        try:
            await self.leases.store.delete(key, versioned.revision)
        except Stale:
            return False
        self.leases.apply(key, None, versioned.revision + 1)  # the tombstone comes later
        return True

    def _still_held(self, lease: Lease, now: float) -> bool:
        r = self.view.renditions.get(lease.rendition)
        if r is None or r.generation != lease.generation:
            return False
        if r.state in (R.DISPATCHED, R.RUNNING):
            return True
        return r.state is R.PENDING and now - lease.since < STALE_LEASE_SECONDS

    def _pending_in_order(self, pool_id: str) -> list[Rendition]:
        """Pending renditions someone waits for: manual starts first, then the least busy client."""
        pending = [r for r in self.view.pending_in(pool_id) if self.view.followers(r)]
        busy = self._busy[pool_id]
        return sorted(
            pending,
            key=lambda r: (not r.manual, -r.priority, busy.get(client_of(r), 0), r.created_at),
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


async def migrate_lease_sets(kv: TypedKV[Lease], old: TypedKV[LeaseSet]) -> None:
    """Turn old one-record-per-pool leases into lease keys, then delete the old records.

    Each holder gets a key of its own (a manual one, or the lowest free slot); a key another
    scheduler made meanwhile is left as it is (its create is refused). The old record is deleted
    at the revision read, so one rewritten meanwhile (by a scheduler of the old version, during a
    rolling upgrade) stays for the next start.
    """
    for key in await kv.keys():
        if pool_of(key):
            continue  # a lease key already
        try:
            found = await old.get(key)
        except msgspec.DecodeError:
            log.error("leases.unreadable_old_record", key=key)
            continue
        if found is None:
            continue
        pool = found.value.pool or key
        taken = set(await kv.values(under=pool))
        free = (n for n in itertools.count() if slot_key(pool, n) not in taken)
        for rendition, lease in found.value.holders.items():
            target = manual_key(pool, rendition) if lease.manual else slot_key(pool, next(free))
            new = Lease(
                generation=lease.generation,
                since=lease.since,
                manual=lease.manual,
                rendition=rendition,
                pool=pool,
            )
            with contextlib.suppress(Stale):
                await kv.create(target, new)
        with contextlib.suppress(Stale):
            await old.delete(key, found.revision)
        log.info("leases.migrated", pool=pool, holders=len(found.value.holders))
