"""Where a pool's concurrency leases live: one KV key per lease in the leases bucket.

- `<pool>.slot.<n>`: an automatic lease on slot n, 0 <= n < the pool's limit. Creating the key is
  the claim: NATS refuses a second create of the same key, so however many schedulers race,
  at most `limit` automatic leases exist while the limit stays the same.
- `<pool>.manual.<rendition>`: a manual start (`POST /start-job`), beyond the limit.

Each value is a small `Lease` (the rendition's key, its generation, when): a record's size never
grows with the number of clients, however many leases a pool holds. A key without a dot is a
record of the old layout (a `LeaseSet` per pool), migrated by the scheduler when it starts.
"""

from __future__ import annotations

from shared.messages.records import Lease
from shared.nats.kv import TypedKV

SLOT = "slot"
MANUAL = "manual"


def slot_key(pool: str, n: int) -> str:
    return f"{pool}.{SLOT}.{n}"


def manual_key(pool: str, rendition: str) -> str:
    return f"{pool}.{MANUAL}.{rendition}"


def holder(lease: Lease) -> str:
    """What holds the lease: its rendition, or one part of it (`<rendition>.<generation>.<part>`,
    the part's key)."""
    if not lease.part:
        return lease.rendition
    return f"{lease.rendition}.{lease.generation}.{lease.part}"


def pool_of(key: str) -> str:
    """The pool a lease key belongs to ("" for a key of the old layout)."""
    pool, dot, _ = key.partition(".")
    return pool if dot else ""


def slot_of(key: str) -> int | None:
    """The slot number of an automatic lease's key; None for a manual one."""
    parts = key.split(".")
    if len(parts) == 3 and parts[1] == SLOT and parts[2].isdigit():
        return int(parts[2])
    return None


async def leases_of(kv: TypedKV[Lease], pool: str) -> dict[str, Lease]:
    """Every lease of one pool by key, read in one pass over the bucket."""
    return await kv.values(under=pool)
