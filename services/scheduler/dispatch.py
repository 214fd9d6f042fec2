"""Dispatch: give pending renditions (and the pending parts of split renditions) a pool's
concurrency slots and publish them as work.

`decide_dispatch` is the pure part of `decide`: which leases to take and give back, and which
work to publish; `apply` creates and deletes the lease keys and publishes.

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

A split rendition's parts are work items of their own (see `services.scheduler.parts`): each
takes a lease (`Lease.part`) under the same limit, room and slots, in the same order as the
renditions, its rendition's client counting for it; the split rendition itself holds none. A
manual rendition's parts go first, at most one of them at a time on a manual key beyond the
limit. A pool's video parts it has no slot for may be leased in its `segment_helpers` pools,
after their own work, and go to their subject (one work stream: the message id de-duplicates a
part published to two pools); `Part.pool` then names the helper.

Upgrading from the one-record layout (a `LeaseSet` per pool under the key `<pool>`): the
scheduler turns each live holder into a lease key when it starts, then deletes the old record at
the revision it read. Renditions that held old leases keep running and keep their slots; none is
published twice, because only a pending rendition is ever published.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Iterable

import msgspec
import structlog

from services.scheduler.changes import Change, Claim, Publish, PublishPart, Release
from services.scheduler.config import SchedulerSettings
from services.scheduler.parts import held_parts, part_rank, publish_part
from services.scheduler.slots import Room, Slots, pool_slots
from services.scheduler.view import LeaseView, View, client_of
from shared.jobs import state as jobstate
from shared.messages.records import Lease, LeaseSet, Part, Rendition, RenditionState
from shared.messages.work import TranscodeWork
from shared.nats.kv import Stale, TypedKV
from shared.nats.leases import holder, manual_key, pool_of, slot_key

log = structlog.get_logger("vidmesh.scheduler")

R = RenditionState

# A lease whose rendition never got dispatched (the scheduler died in between) is reclaimed.
STALE_LEASE_SECONDS = 15.0
# A released lease's delete marker is purged from the bucket this long after: every replica's
# view has seen it by then (one that has not finds the key gone on its next full check), and the
# bucket keeps no key per rendition ever leased.
FORGET_RELEASED_SECONDS = 2 * STALE_LEASE_SECONDS / 3


def decide_dispatch(
    view: View,
    leases: LeaseView,
    now: float,
    settings: SchedulerSettings,
    recheck: Iterable[str] | None = None,
) -> list[Change]:
    """Leases to give back and to take, and work to publish, in every pool with pending work.

    Each pool has its own lease keys and limit (its `concurrency`, or else the processing
    settings' dispatch concurrency, or else MAX_CONCURRENT_JOBS); a disabled pool is given
    nothing (its ended leases are still released). The fleet's `global_concurrency` bounds the
    leases of all pools together (a soft bound: two scheduler replicas leasing in different
    pools at the same instant may pass it by one each; each pool's own limit is exact). The
    leases are read from a projection of the bucket, which may lag; the create that claims a
    slot is what decides, so a lagging view costs a retry, never a slot too many. Leases whose
    rendition ended are looked for among `recheck` (None: every lease; leases of renditions that
    stay pending time out without any change). Once every pool has leased its own work, the
    video parts a pool had no slot for go to its segment helpers (`lend_to_helpers`).
    """
    fleet = leases.settings()
    left = None
    if fleet is not None and fleet.global_concurrency is not None:
        left = fleet.global_concurrency - len(leases)
    room = Room(left)
    looked_at = None if recheck is None else set(recheck)
    leased = {pool for pool, held in leases.of_pool.items() if held}
    pools = sorted({settings.pool} | view.pending_pools() | leased)
    released = {pool_id: _release_ended(view, leases, pool_id, now, looked_at) for pool_id in pools}
    gone = {change.key for changes in released.values() for change in changes}
    changes: list[Change] = []
    slots: dict[str, Slots] = {}
    for pool_id in pools:
        changes.extend(released[pool_id])
        pool = leases.pool(pool_id)
        if pool is not None and not pool.enabled:
            continue
        slots[pool_id] = pool_slots(leases, pool_id, settings, gone)
        changes.extend(_lease_pending(view, leases, slots[pool_id], room, now, gone))
    changes.extend(lend_to_helpers(view, leases, settings, slots, room, now, gone, changes))
    return changes


def _release_ended(
    view: View, leases: LeaseView, pool_id: str, now: float, looked_at: set[str] | None
) -> list[Release]:
    """The pool's leases whose holder (rendition or part) no longer holds them, and a holder's
    second lease (the lowest key stays)."""
    held = leases.of_pool.get(pool_id, {})
    candidates = set(held) if looked_at is None else {k for k in looked_at if k in held}
    released: list[Release] = []
    for key in sorted(candidates):
        lease = held[key]
        first = min(leases.keys_of.get(holder(lease)) or {key})
        if still_held(view, lease, now) and first == key:
            continue
        revision = leases.revision(key)
        if revision is not None:
            released.append(Release(key, revision))
    return released


def _lease_pending(
    view: View, leases: LeaseView, slots: Slots, room: Room, now: float, gone: set[str]
) -> list[Change]:
    pool_id = slots.pool_id
    held = {key for key in leases.of_pool.get(pool_id, {}) if key not in gone}
    changes: list[Change] = []
    # With no automatic slot free (as with a long queue), only a manual start or a rendition
    # leased earlier can be dispatched: the rest of the queue is not even ordered.
    slot_free = slots.free() and room.has()
    # Split renditions with a part on a manual key: their other parts wait for slots.
    manual_parts = {
        lease.rendition
        for key, lease in leases.of_pool.get(pool_id, {}).items()
        if key in held and lease.part and lease.manual
    }
    for r, p in work_in_order(view, leases, pool_id, slot_free=slot_free):
        holding = r.key if p is None else p.key
        keys = [key for key in leases.keys_of.get(holding, ()) if key not in gone]
        if any(key in held for key in keys):
            changes.append(_publish(view, r, p, now))  # leased earlier, never dispatched: again
            continue
        if p is not None and keys:
            continue  # leased by a helper pool, whose turn publishes it again
        lease = Lease(
            generation=r.generation if p is None else p.generation,
            since=now,
            manual=r.manual,
            rendition=r.key,
            pool=pool_id,
            part="" if p is None else p.name,
        )
        if r.manual and (p is None or r.key not in manual_parts):
            key = manual_key(pool_id, holding)
            if p is not None:
                manual_parts.add(r.key)
        elif slots.free() and room.has():
            key = slots.take()
            room.use()
            lease = msgspec.structs.replace(lease, manual=False)
        else:
            continue
        changes.append(Claim(key, lease, _publish(view, r, p, now)))
    return changes


def lend_to_helpers(
    view: View,
    leases: LeaseView,
    settings: SchedulerSettings,
    slots: dict[str, Slots],
    room: Room,
    now: float,
    gone: set[str],
    decided: list[Change],
) -> list[Change]:
    """Video parts that their own pool (enabled, with `segment_helpers`) had no slot for, leased
    in its first helper pool with a free slot under that pool's own limit, in the pool's work
    order; a part a helper leased earlier and never dispatched is published there again. A
    helper must be an enabled pool of the fleet. Audio and joins stay in their own pool."""
    claimed = {
        change.then.part.key
        for change in decided
        if isinstance(change, Claim) and isinstance(change.then, PublishPart)
    }
    changes: list[Change] = []
    for pool_id in sorted(view.pending_pools()):
        pool = leases.pool(pool_id)
        if pool is None or not pool.enabled or pool_id not in slots:
            continue
        helpers: list[Slots] = []
        for helper_id in pool.segment_helpers:
            helper = leases.pool(helper_id)
            if helper_id == pool_id or helper is None or not helper.enabled:
                continue
            if helper_id not in slots:
                slots[helper_id] = pool_slots(leases, helper_id, settings, gone)
            helpers.append(slots[helper_id])
        if not helpers:
            continue
        lent = {h.pool_id for h in helpers}
        # with no helper slot free, only parts a helper leased already (cheap to find)
        room_left = room.has() and any(h.free() for h in helpers)
        for r, p in work_in_order(view, leases, pool_id, slot_free=room_left):
            if p is None or p.kind != "video" or p.key in claimed:
                continue
            keys = [key for key in leases.keys_of.get(p.key, ()) if key not in gone]
            if keys:
                if pool_of(min(keys)) in lent:  # leased by a helper, never dispatched: again
                    changes.append(publish_part(view, r, p, now, pool_of(min(keys))))
                continue
            free = next((h for h in helpers if h.free()), None)
            if free is None or not room.has():
                continue
            lease = Lease(
                generation=p.generation,
                since=now,
                rendition=r.key,
                pool=free.pool_id,
                part=p.name,
            )
            changes.append(Claim(free.take(), lease, publish_part(view, r, p, now, free.pool_id)))
            room.use()
    return changes


def _publish(view: View, r: Rendition, p: Part | None, now: float) -> Publish | PublishPart:
    return publish(view, r, now) if p is None else publish_part(view, r, p, now)


def still_held(view: View, lease: Lease, now: float) -> bool:
    """Whether the lease's holder (this generation) still holds it: dispatched or running, or
    pending and leased a moment ago (its work about to be published). A split rendition holds
    no lease (its parts do), and a part holds one only while its rendition runs split."""
    r = view.renditions.get(lease.rendition)
    if r is None or r.generation != lease.generation:
        return False
    if lease.part:
        found = view.parts.get(holder(lease)) if view.parts is not None else None
        if found is None or not jobstate.split_live(r, found.generation):
            return False
        state, since = found.state, lease.since
    elif r.split is not None:
        return False
    else:
        state, since = r.state, lease.since
    if state in (R.DISPATCHED, R.RUNNING):
        return True
    return state is R.PENDING and now - since < STALE_LEASE_SECONDS


def work_in_order(
    view: View, leases: LeaseView, pool_id: str, *, slot_free: bool = True
) -> list[tuple[Rendition, Part | None]]:
    """The pool's pending renditions (`pending_in_order`) and pending parts someone waits for,
    together in that order: a part goes by its rendition's manual start, priority, client's
    leases (plus the parts its rendition holds and its place among those waiting, see
    `part_rank`) and age, then in work order. With no `slot_free`, only the parts that need
    none: leased already, or of a rendition started by hand."""
    busy = leases.busy.get(pool_id) or Counter()
    renditions = pending_in_order(view, leases, pool_id, slot_free=slot_free)
    found: list[tuple[tuple[object, ...], Rendition, Part | None]] = [
        ((not r.manual, -r.priority, busy.get(client_of(r), 0), r.created_at, r.key, -1), r, None)
        for r in renditions
    ]
    waiting: dict[str, list[tuple[Rendition, Part]]] = {}
    for r, p in view.pending_parts_in(pool_id):
        if slot_free or r.manual or p.key in leases.keys_of:
            waiting.setdefault(r.key, []).append((r, p))
    for pairs in waiting.values():
        r = pairs[0][0]
        if not view.followers(r):
            continue
        rank = part_rank((p for _, p in pairs), held_parts(view, r, pool_id))
        client = busy.get(client_of(r), 0)
        for _, p in pairs:
            order = jobstate.part_order(p)
            key = (not r.manual, -r.priority, client + rank[p.key], r.created_at, r.key, *order)
            found.append((key, r, p))
    found.sort(key=lambda item: item[0])
    return [(r, p) for _, r, p in found]


def pending_in_order(
    view: View, leases: LeaseView, pool_id: str, *, slot_free: bool = True
) -> list[Rendition]:
    """Pending renditions someone waits for (with no `slot_free`, only those that need none):
    manual starts first, then the highest priority, then the least busy client (see
    `client_of`), then the oldest."""
    if slot_free:
        candidates = view.pending_in(pool_id)
    else:
        candidates = view.pending_taking_no_slot(pool_id, leases.keys_of)
    pending = [r for r in candidates if view.followers(r)]
    busy = leases.busy.get(pool_id) or Counter()
    return sorted(
        pending,
        key=lambda r: (not r.manual, -r.priority, busy.get(client_of(r), 0), r.created_at),
    )


def publish(view: View, r: Rendition, now: float) -> Publish:
    """The work item of a pending rendition's next dispatch, naming the jobs that follow it."""
    work = TranscodeWork(
        key=r.key,
        generation=r.generation,
        dispatch_seq=r.dispatch_seq + 1,
        source=r.source,
        profile=r.profile,
        spec=r.spec,
        container=r.container,
        owner=r.owner,
        destination=r.destination,
        output_name=r.output_name,
        duration_hint=r.duration_hint,
        jobs=[job.id for job in view.followers(r)],
        dispatched_at=now,
    )
    return Publish(r, work)


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
