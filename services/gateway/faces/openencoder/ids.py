"""OpenEncoder's ids: integers from counters in NATS (one per kind, in the face's own bucket,
advanced by compare-and-set, so two gateways never hand out the same one), the integer a
machine (a transcoder) keeps for as long as it lives, the 20-character `guid` a job carries
beside its integer id (time-ordered, like the xid the original used), and how a path's id is
read (ASCII digits only, bounded: "²" or a 5,000-digit number names nothing, it is no 500)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
import uuid

import msgspec
from nats.js.kv import KeyValue

from shared.nats.kv import Stale, TypedKV, valid_key

JOBS = "jobs"
PRESETS = "presets"
MACHINES = "machines"

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


class MachineNumber(msgspec.Struct, frozen=True, kw_only=True):
    """The integer id a transcoder is known by on this face."""

    number: int
    worker: str


class Reserved(msgspec.Struct, frozen=True, kw_only=True):
    """Machine ids answered for machines asked of a pool that have not started yet: the next
    transcoders of the pool take them, oldest first, so a created machine is listed under the
    id its creation answered."""

    numbers: list[int]


class Counters:
    """The face's counters of integer ids, and the machines' numbers, in its bucket."""

    def __init__(self, bucket: KeyValue) -> None:
        self.store = TypedKV(bucket, Counter)
        self.machines = TypedKV(bucket, MachineNumber)
        self.reserved = TypedKV(bucket, Reserved)

    async def next(self, kind: str, *, after: int = 0, count: int = 1) -> int:
        """A new id of this kind (the first is `after` + 1); with `count`, the last of that
        many new ones in a row."""
        claim = uuid.uuid4().hex

        def advance(current: Counter | None) -> Counter:
            return Counter(last=(current.last if current else after) + count, claim=claim)

        done = await self.store.replace(kind, advance)
        assert done.record is not None
        return done.record.last

    async def reserve(self, pool: str, count: int) -> list[int]:
        """`count` new machine ids, kept for the pool's next transcoders."""
        last = await self.next(MACHINES, count=count)
        numbers = list(range(last - count + 1, last + 1))
        await self.reserved.replace(
            f"reserved.{pool}",
            lambda now: Reserved(numbers=(now.numbers if now else []) + numbers),
        )
        return numbers

    async def machine(self, worker: str, pool: str) -> int:
        """The transcoder's machine id: the one it was given, else the oldest kept for its
        pool, else a new one."""
        key = _machine_key(worker)
        found = await self.machines.get(key)
        if found is not None:
            return found.value.number
        number = await self._take_reserved(pool) or await self.next(MACHINES)
        try:
            await self.machines.create(key, MachineNumber(number=number, worker=worker))
        except Stale:  # another gateway numbered it first
            again = await self.machines.get(key)
            assert again is not None
            return again.value.number
        return number

    async def _take_reserved(self, pool: str) -> int | None:
        done = await self.reserved.replace(
            f"reserved.{pool}",
            lambda now: Reserved(numbers=now.numbers[1:]) if now and now.numbers else None,
        )
        return done.before.value.numbers[0] if done.changed and done.before else None


def _machine_key(worker: str) -> str:
    key = f"machine.{worker}"
    return key if valid_key(key) else f"machine.{hashlib.sha256(worker.encode()).hexdigest()}"


def new_guid() -> str:
    """20 characters of base32hex (0-9, a-v): 4 bytes of seconds, then 8 random bytes."""
    raw = int(time.time()).to_bytes(4, "big") + os.urandom(8)
    return base64.b32hexencode(raw).decode().rstrip("=").lower()
