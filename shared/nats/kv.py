"""Typed access to a KV bucket, with compare-and-set as the only way to change a record."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

T = TypeVar("T", bound=msgspec.Struct)

Stale = KeyWrongLastSequenceError

_MAX_CAS_ROUNDS = 64
_READ_BATCH = 256
_WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a refused expected revision
_READER_IDLE_S = 30.0


_KEY = re.compile(r"^[A-Za-z0-9_=.-]{1,255}$")


def _deleted(msg: Msg) -> bool:
    """Whether a message of a bucket's stream is a delete (or purge) marker."""
    return (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE")


def valid_key(key: str) -> bool:
    """Whether `key` can name a KV entry (NATS refuses others): check ids from URLs with it."""
    return (
        bool(_KEY.match(key))
        and not key.startswith(".")
        and not key.endswith(".")
        and ".." not in key  # an empty token
    )


class Versioned(msgspec.Struct, Generic[T], frozen=True):
    """A record and the revision it was read at."""

    value: T
    revision: int


class Replaced(msgspec.Struct, Generic[T], frozen=True):
    """What a compare-and-set change did: the record it replaced (None: there was none), the
    record as it now is and its revision, and whether this change stored it."""

    before: Versioned[T] | None
    record: T | None
    revision: int | None
    changed: bool


class ReadOnlyKV(Generic[T]):
    """A KV bucket of msgspec Structs that its holder may only read: `get` and nothing else.

    For a process that must never write a bucket another service owns (the gateway reads job
    records the scheduler writes): it has no write method, so such a write cannot be typed."""

    def __init__(self, kv: KeyValue, type_: type[T]) -> None:
        self._records = TypedKV(kv, type_)

    async def get(self, key: str) -> Versioned[T] | None:
        """The record at `key` and its revision, None when there is none."""
        return await self._records.get(key)


class TypedKV(Generic[T]):
    """A KV bucket whose values are msgspec Structs of one type."""

    def __init__(self, kv: KeyValue, type_: type[T]) -> None:
        self.kv = kv
        self.type = type_
        self._decoder = msgspec.json.Decoder(type_)
        self._encoder = msgspec.json.Encoder()

    def decode(self, data: bytes) -> T:
        return self._decoder.decode(data)

    def encode(self, value: T) -> bytes:
        return self._encoder.encode(value)

    async def keys(self) -> list[str]:
        """Every key with a value or a tombstone (get() tells them apart), read from the stream's
        subject index in one request. nats-py's `keys()` builds a watcher and may report an
        empty bucket while a key is being rewritten; this cannot."""
        kv: Any = self.kv
        prefix: str = kv._pre
        info = await kv._js.stream_info(kv._stream, subjects_filter=f"{prefix}>")
        subjects = info.state.subjects or {}
        return sorted(subject[len(prefix) :] for subject in subjects)

    async def values(self, *, under: str = "") -> dict[str, T]:
        """Every key's current value (only keys `<under>.*` when given), read in one pass over
        the bucket's stream by a consumer that delivers the last message of each key (one
        request per key is ~7x slower at 2,000 keys). Deleted keys are left out."""
        found: dict[str, T] = {}
        async for key, msg in self._last_of_each(under):
            if _deleted(msg):
                found.pop(key, None)
            else:
                found[key] = self.decode(msg.data)
        return found

    async def forget_deleted(self, older_than: float) -> int:
        """Remove the delete markers older than `older_than` seconds from the bucket's stream,
        so a bucket whose keys come and go (one per lease) does not grow with every key it ever
        held. Each marker goes with a purge of its key up to the marker's own sequence: a key
        created again meanwhile is kept. Returns how many keys were forgotten."""
        kv: Any = self.kv
        cutoff = time.time() - older_than
        markers: list[tuple[str, int]] = []
        async for key, msg in self._last_of_each(""):
            meta = msg.metadata
            if _deleted(msg) and meta.timestamp.timestamp() < cutoff:
                markers.append((key, meta.sequence.stream))
        for key, sequence in markers:
            await kv._js.purge_stream(kv._stream, subject=f"{kv._pre}{key}", seq=sequence + 1)
        return len(markers)

    async def _last_of_each(self, under: str) -> AsyncIterator[tuple[str, Msg]]:
        """The last message of each key (`<under>.*` when given), delete markers included."""
        kv: Any = self.kv
        prefix: str = kv._pre
        subjects = f"{prefix}{under}.>" if under else f"{prefix}>"
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=_READER_IDLE_S,  # gone by itself if this process dies mid-read
            mem_storage=True,
            num_replicas=1,
        )
        sub = await kv._js.pull_subscribe(subjects, stream=kv._stream, config=config)
        name = ""
        try:
            info = await sub.consumer_info()
            name, remaining = info.name, info.num_pending
            while remaining > 0:
                try:
                    msgs = await sub.fetch(min(remaining, _READ_BATCH), timeout=5)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                for msg in msgs:
                    remaining = msg.metadata.num_pending  # what is left after this one
                    yield msg.subject[len(prefix) :], msg
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if name:
                with contextlib.suppress(Exception):
                    await kv._js.delete_consumer(kv._stream, name)

    async def get(self, key: str) -> Versioned[T] | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return Versioned(self.decode(entry.value), entry.revision or 0)

    async def create(self, key: str, value: T) -> int:
        """Store a new record; raises `Stale` if the key exists."""
        data = self.encode(value)
        try:
            return await self.kv.create(key, data)
        except Stale:
            landed = await self._landed(key, data)
            if landed is None:
                raise
            return landed

    async def update(self, key: str, value: T, revision: int) -> int:
        """Compare-and-set: store `value` only if the record is still at `revision`."""
        data = self.encode(value)
        try:
            return await self.kv.update(key, data, last=revision)
        except Stale:
            landed = await self._landed(key, data)
            if landed is None:
                raise
            return landed

    async def _landed(self, key: str, data: bytes) -> int | None:
        """After a refused compare-and-set: the revision of our own write if the key holds it
        (it landed, its answer was lost in a failover, and the write was sent again); None when
        the refusal stands."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        return (entry.revision or 0) if entry.value == data else None

    async def put(self, key: str, value: T) -> int:
        """Last writer wins; only for values one writer owns (progress, heartbeats)."""
        return await self.kv.put(key, self.encode(value))

    async def delete(self, key: str, revision: int | None = None) -> None:
        try:
            await self.kv.delete(key, last=revision)
        except (Stale, BadRequestError) as exc:
            stale = isinstance(exc, Stale) or exc.err_code == _WRONG_LAST_SEQUENCE
            if not stale or await self.get(key) is not None:
                raise  # changed meanwhile; gone already means our delete landed before

    async def change(
        self, key: str, fn: Callable[[T | None], T | None]
    ) -> tuple[T | None, int | None, bool]:
        """Apply `fn` to the current record with compare-and-set, re-reading on conflict.

        `fn` returns the new record, or None to leave it as it is (it may raise to refuse).
        Returns (record, revision, changed).
        """
        done = await self.replace(key, fn)
        return done.record, done.revision, done.changed

    async def replace(
        self,
        key: str,
        fn: Callable[[T | None], T | None],
        *,
        known: Versioned[T] | None = None,
        absent: bool = False,
    ) -> Replaced[T]:
        """`change`, saying also which version of the record the change replaced. A caller that
        knows the record (`known`, as it last stored or read it) or knows there is none
        (`absent`) saves the first read; a guess proved wrong by the compare-and-set costs a
        read and another round, and "nothing to change" (or `fn` refusing) is decided on a read,
        never on a guess."""
        guess = known is not None or absent
        for _ in range(_MAX_CAS_ROUNDS):
            current = known if guess else await self.get(key)
            try:
                new = fn(current.value if current else None)
            except Exception:
                if not guess:
                    raise
                guess = False  # a refusal, too, is taken from the bucket only
                continue
            if guess and (new is None or (current is not None and new == current.value)):
                guess = False  # "nothing to change" is taken from the bucket only
                continue
            guess = False
            if new is None or (current is not None and new == current.value):
                if current is None:
                    return Replaced(before=None, record=None, revision=None, changed=False)
                return Replaced(current, current.value, current.revision, changed=False)
            try:
                if current is None:
                    revision = await self.create(key, new)
                else:
                    revision = await self.update(key, new, current.revision)
            except Stale:
                continue
            return Replaced(before=current, record=new, revision=revision, changed=True)
        raise RuntimeError(f"too much contention on {self.kv._name}/{key}")
