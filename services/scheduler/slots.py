"""What one dispatch pass may still lease: each pool's automatic slots under its limit, and the
room the fleet's `global_concurrency` leaves across pools. Both are used up as the pass decides,
first by each pool's own work, then by the video parts its helper pools take on."""

from __future__ import annotations

from services.scheduler.config import SchedulerSettings
from services.scheduler.view import LeaseView
from shared.nats.leases import pool_of, slot_key, slot_of


class Slots:
    """One pool's automatic slots during a pass: the numbers held (or claimed in this pass),
    and its limit."""

    def __init__(self, pool_id: str, limit: int, taken: set[int]) -> None:
        self.pool_id = pool_id
        self.limit = limit
        self.taken = taken

    def free(self) -> bool:
        return len(self.taken) < self.limit

    def take(self) -> str:
        """The key of the lowest free slot, now taken (only while `free`)."""
        number = next(n for n in range(self.limit) if n not in self.taken)
        self.taken.add(number)
        return slot_key(self.pool_id, number)


class Room:
    """What the fleet's `global_concurrency` leaves to lease in this pass (None: no bound)."""

    def __init__(self, left: int | None) -> None:
        self.left = left

    def has(self) -> bool:
        return self.left is None or self.left > 0

    def use(self) -> None:
        if self.left is not None:
            self.left -= 1


def pool_slots(
    leases: LeaseView, pool_id: str, settings: SchedulerSettings, gone: set[str]
) -> Slots:
    """The pool's limit and the automatic slots it holds, less those released in this pass."""
    pool = leases.pool(pool_id)
    default = leases.dispatch_concurrency or settings.max_concurrent_jobs
    limit = pool.concurrency if pool and pool.concurrency else default
    released = {slot_of(key) for key in gone if pool_of(key) == pool_id}
    return Slots(pool_id, limit, set(leases.slots.get(pool_id, ())) - released)
