"""OpenEncoder's ids: integers from counters in NATS (one per kind, in the face's own bucket,
advanced by compare-and-set, so two gateways never hand out the same one), the 20-character
`guid` a job carries beside its integer id (time-ordered, like the xid the original used), and
how a path's id is read (ASCII digits only, bounded: "²" or a 5,000-digit number names nothing,
it is no 500)."""

from __future__ import annotations

import base64
import os
import re
import time
import uuid

import msgspec

from shared.nats.kv import TypedKV

JOBS = "jobs"
PRESETS = "presets"

_ID = re.compile(r"[0-9]{1,18}", re.ASCII)


def parse_id(raw: str) -> int | None:
    """The integer a path's id names; None (so: no such record) unless it is 1-18 ASCII
    digits."""
    return int(raw) if _ID.fullmatch(raw) else None


class Counter(msgspec.Struct, frozen=True, kw_only=True):
    """The last id a counter handed out, and the claim that took it (two gateways that take the
    same next value write different claims, so a retried write is never taken for another's)."""

    last: int
    claim: str


class Counters:
    """The face's counters of integer ids."""

    def __init__(self, store: TypedKV[Counter]) -> None:
        self.store = store

    async def next(self, kind: str, *, after: int = 0) -> int:
        """A new id of this kind (the first is `after` + 1)."""
        claim = uuid.uuid4().hex

        def advance(current: Counter | None) -> Counter:
            return Counter(last=(current.last if current else after) + 1, claim=claim)

        done = await self.store.replace(kind, advance)
        assert done.record is not None
        return done.record.last


def new_guid() -> str:
    """20 characters of base32hex (0-9, a-v): 4 bytes of seconds, then 8 random bytes."""
    raw = int(time.time()).to_bytes(4, "big") + os.urandom(8)
    return base64.b32hexencode(raw).decode().rstrip("=").lower()
