"""An in-memory copy of a KV bucket, kept current by a watch (initial values, then every change).

Reads are answered from memory, so a request never scans KV. After a reconnect the watch is
restarted and the copy re-synchronised, dropping keys deleted in the meantime.

Named secondary indexes (a key function: record -> the index keys it files under) are kept exact
on every change, whichever way it arrives (the watch, read-your-writes `apply()`, a resync), so a
read can take the records under one key and cost what it returns, never a walk over every record.
What a read derives again and again (a record rendered, a whole answer) can be kept beside them
(a bounded number) and is forgotten as soon as a record it came from changes.

The records are held decoded, or packed (`shared.nats.packed`) for a bucket whose history grows
with use, such as the jobs a gateway lists: then memory grows by about 0.4 KiB a record
beside the indexes, and a read decodes what it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar, cast

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.js.kv import KV_DEL, KV_PURGE

from shared.nats.kv import TypedKV, Versioned
from shared.nats.packed import Packed, Packing, Plain, Records
from shared.tasks import stop_tasks

T = TypeVar("T", bound=msgspec.Struct)
R = TypeVar("R")

log = structlog.get_logger("vidmesh.projection")

# Answers derived from the records under index keys that are kept at most (then all forgotten).
MAX_DERIVED_UNDER = 4096
# What is derived from single records kept at most, per derivation (the oldest forgotten first).
MAX_DERIVED = 4096

# An index's key function: the keys a record is filed under (none: not in that index).
KeyFn = Callable[[T], Iterable[Hashable]]
# The record keys filed under one index key: one key alone (most renditions have one job), or a
# set of them.
Members = str | set[str]


def _members(found: Members | None) -> Collection[str]:
    if found is None:
        return ()
    return (found,) if isinstance(found, str) else found


def _file_in(index: dict[Hashable, Members], index_key: Hashable, key: str) -> None:
    found = index.get(index_key)
    if found is None:
        index[index_key] = key
    elif isinstance(found, str):
        if found != key:
            index[index_key] = {found, key}
    else:
        found.add(key)


def _file_out(index: dict[Hashable, Members], index_key: Hashable, key: str) -> None:
    found = index.get(index_key)
    if found is None:
        return
    if isinstance(found, str):
        if found == key:
            del index[index_key]
        return
    found.discard(key)
    if len(found) == 1:
        index[index_key] = next(iter(found))  # one key alone again
    elif not found:
        del index[index_key]


class Projection(Generic[T]):
    """Records of one bucket by key, with their revisions; call `start()` before reading."""

    def __init__(
        self,
        store: TypedKV[T],
        name: str,
        *,
        nc: NATS | None = None,
        indexes: Mapping[str, KeyFn[T]] | None = None,
        packing: Packing[T] | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.nc = nc
        self.ready = asyncio.Event()
        self._records: Records[T] = Plain() if packing is None else Packed(packing)
        self._key_fns: dict[str, KeyFn[T]] = dict(indexes or {})
        # index name -> index key -> the record keys filed under it
        self._indexes: dict[str, dict[Hashable, Members]] = {name: {} for name in self._key_fns}
        # derivation name -> record key -> (the revision it was derived from, what was derived),
        # oldest first
        self._derived: dict[str, OrderedDict[str, tuple[int, object]]] = {}
        # what was derived from the records under some index keys, and, by (index, index key),
        # which of those to forget when a record under that key changes
        self._derived_under: dict[tuple[str, tuple[Hashable, ...], str], object] = {}
        self._derived_by_key: dict[
            tuple[str, Hashable], set[tuple[str, tuple[Hashable, ...], str]]
        ] = {}
        self._listeners: list[Callable[[str, T | None, T | None], None]] = []
        self._waiters: dict[str, list[tuple[Callable[[T | None], bool], asyncio.Future[None]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._watcher: object | None = None
        self._restart = False
        self._stopped = False

    # ---- reading -----------------------------------------------------------------------
    def get(self, key: str) -> T | None:
        return self._records.get(key)

    def versioned(self, key: str) -> Versioned[T] | None:
        return self._records.versioned(key)

    def values(self) -> Iterator[T]:
        return (record for _, record in self._records.items())

    def items(self) -> Iterator[tuple[str, T]]:
        return self._records.items()

    def __len__(self) -> int:
        return len(self._records)

    # ---- indexed reading ---------------------------------------------------------------
    def find(self, index: str, key: Hashable) -> list[T]:
        """The records filed under `key` in `index` (in no particular order: sort the answer)."""
        get = self._records.get
        return [cast(T, get(record_key)) for record_key in _members(self._indexes[index].get(key))]

    def find_any(self, index: str, keys: Iterable[Hashable]) -> list[T]:
        """The records filed under any of `keys` in `index` (each once)."""
        found: dict[str, T] = {}
        bucket = self._indexes[index]
        get = self._records.get
        for key in keys:
            for record_key in _members(bucket.get(key)):
                if record_key not in found:
                    found[record_key] = cast(T, get(record_key))
        return list(found.values())

    def keys_of(self, index: str, key: Hashable) -> Collection[str]:
        """The record keys filed under `key` in `index` (a copy)."""
        return frozenset(_members(self._indexes[index].get(key)))

    def count(self, index: str, key: Hashable) -> int:
        """How many records are filed under `key` in `index`."""
        return len(_members(self._indexes[index].get(key)))

    def counts(self, index: str) -> dict[Hashable, int]:
        """Index key -> how many records are filed under it (keys with none left out)."""
        return {key: len(_members(ids)) for key, ids in self._indexes[index].items()}

    def derived(self, key: str, record: T, name: str, make: Callable[[T], R]) -> R:
        """`make(record)`, computed once per stored version of the record at `key` and kept
        until the record changes or goes (at most MAX_DERIVED per `name`, the oldest forgotten
        first): for what every read derives again (a rendering)."""
        memo = self._derived.setdefault(name, OrderedDict())
        records = self._records
        current = records.is_current(key, record)  # not an older copy, nor another record
        found = memo.get(key)
        if current and found is not None and found[0] == records.revision(key):
            return cast(R, found[1])
        value = make(record)
        revision = records.revision(key)
        if current and revision is not None:  # what is kept here is forgotten in time
            if key not in memo and len(memo) >= MAX_DERIVED:
                memo.popitem(last=False)
            memo[key] = (revision, value)
        return value

    def listen(self, fn: Callable[[str, T | None, T | None], None]) -> None:
        """Call `fn(key, old, new)` on every change (new is None when the key was deleted)."""
        self._listeners.append(fn)

    async def wait_for(
        self, key: str, predicate: Callable[[T | None], bool], timeout: float
    ) -> bool:
        """Wait until the record at `key` satisfies `predicate`; False on timeout."""
        if predicate(self.get(key)):
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.setdefault(key, []).append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return predicate(self.get(key))
        finally:
            waiters = self._waiters.get(key, [])
            if entry in waiters:
                waiters.remove(entry)
            if not waiters:
                self._waiters.pop(key, None)

    def derived_under(
        self,
        index: str,
        keys: tuple[Hashable, ...],
        name: str,
        make: Callable[[], tuple[R, bool]],
    ) -> R:
        """What `make()` derives from the records filed under `keys` in `index` (an answer
        rendered whole), kept until a record filed under one of them changes, comes or goes;
        `make` returns the value and whether it may be kept (not when it also depends on
        something else that moves). At most MAX_DERIVED_UNDER are kept."""
        memo_key = (index, keys, name)
        if memo_key in self._derived_under:
            return cast(R, self._derived_under[memo_key])
        value, keep = make()
        if keep:
            if len(self._derived_under) >= MAX_DERIVED_UNDER:
                self._derived_under.clear()
                self._derived_by_key.clear()
            self._derived_under[memo_key] = value
            for index_key in keys:
                self._derived_by_key.setdefault((index, index_key), set()).add(memo_key)
        return value

    # ---- writing (from the watch, or read-your-writes after our own update) ------------------
    async def create(self, key: str, value: T) -> int:
        """Store a new record (raises `Stale` if the key exists) and see it here at once."""
        revision = await self.store.create(key, value)
        self.apply(key, value, revision)
        return revision

    async def update(self, key: str, value: T, revision: int) -> int:
        """Compare-and-set the record stored at `revision` and see the new one here at once."""
        stored = await self.store.update(key, value, revision)
        self.apply(key, value, stored)
        return stored

    def apply(self, key: str, value: T | None, revision: int) -> None:
        """Take a value we know is stored at `revision`; older news than we have is ignored.
        Revision 0 is a record not stored yet, shown as what is about to be stored asks for it
        (a submitted job): any stored revision replaces it, and a resync keeps it."""
        self._take(key, value, revision, None)

    def _take(self, key: str, value: T | None, revision: int, data: bytes | None) -> None:
        """`apply`, with the value's JSON when the watch delivered it (packed as it came)."""
        records = self._records
        known = records.revision(key)
        if known is not None and known >= revision:
            return
        # the record replaced: only what files it, or is told of it, needs it decoded
        wanted = self._key_fns or self._listeners
        old = records.get(key) if known is not None and wanted else None
        if value is None:
            if known is None:
                return
            records.pop(key)
        else:
            records.put(key, value, revision, data)
        self._reindex(key, old, value)
        self._notify(key, old, value)

    def _reindex(self, key: str, old: T | None, new: T | None) -> None:
        """File `key` under the new record's index keys and take it out of the old one's, and
        forget what was derived from the old one, or from the records under its keys."""
        for memo in self._derived.values():
            memo.pop(key, None)
        if old is None and new is not None and not self._derived_by_key:
            for name, key_fn in self._key_fns.items():  # a new record: only filed in
                index = self._indexes[name]
                for added in key_fn(new):
                    _file_in(index, added, key)
            return
        for name, key_fn in self._key_fns.items():
            before = tuple(key_fn(old)) if old is not None else ()
            after = tuple(key_fn(new)) if new is not None else ()
            if self._derived_by_key:
                for index_key in (*before, *after):
                    for memo_key in self._derived_by_key.pop((name, index_key), ()):
                        self._derived_under.pop(memo_key, None)
            if before == after:
                continue
            index = self._indexes[name]
            for gone in set(before).difference(after):
                _file_out(index, gone, key)
            for added in set(after).difference(before):
                _file_in(index, added, key)

    def _notify(self, key: str, old: T | None, new: T | None) -> None:
        for fn in self._listeners:
            try:
                fn(key, old, new)
            except Exception:
                log.exception("projection.listener_failed", projection=self.name, key=key)
        for predicate, fut in list(self._waiters.get(key, [])):
            if not fut.done() and predicate(new):
                fut.set_result(None)

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> None:
        """Begin watching; returns once the initial values are loaded."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"projection:{self.name}")
        if self.nc is not None and self._monitor is None:
            self._monitor = asyncio.create_task(self._resync_on_reconnect(self.nc))
        await asyncio.wait_for(self.ready.wait(), timeout)

    async def _resync_on_reconnect(self, nc: NATS) -> None:
        seen = nc.stats["reconnects"]
        while True:
            await asyncio.sleep(0.5)
            if nc.stats["reconnects"] != seen and nc.is_connected:
                seen = nc.stats["reconnects"]
                log.info("projection.resync", projection=self.name)
                self.resync()

    def resync(self) -> None:
        """Restart the watch (after a reconnect) and reconcile the copy with the bucket."""
        self._restart = True
        watcher = self._watcher
        if watcher is not None:
            asyncio.get_running_loop().create_task(watcher.stop())  # type: ignore[attr-defined]

    async def stop(self) -> None:
        self._stopped = True
        # cancelled until they stop: a cancellation that lands as a NATS request completes can be
        # lost on 3.11
        await stop_tasks([task for task in (self._monitor, self._task) if task is not None])
        self._task = self._monitor = None

    async def _run(self) -> None:
        delay = 0.2
        while not self._stopped:
            try:
                await self._watch_once()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("projection.watch_failed", projection=self.name, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _watch_once(self) -> None:
        self._restart = False
        watcher = await self.store.kv.watchall()
        self._watcher = watcher
        seen: set[str] = set()
        initial = True
        packing = self._records.packing if isinstance(self._records, Packed) else None
        # the JSON of a packed record is packed as it came, never encoded again
        decode = self.store.decode if packing is None else packing.decode
        try:
            async for entry in watcher:
                if entry is None:
                    if initial:
                        initial = False
                        for gone in set(self._records.keys()) - seen:
                            if self._records.revision(gone):  # 0: not stored yet, kept
                                self._drop(gone, None)
                        seen = set()  # not needed any more: a set as large as the bucket
                        self.ready.set()
                    continue
                key = entry.key
                if initial:
                    seen.add(key)
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self._drop(key, entry.revision or 0)
                    continue
                try:
                    value = decode(entry.value)
                except msgspec.DecodeError:
                    log.error("projection.undecodable", projection=self.name, key=key)
                    continue
                data = None if packing is None else entry.value
                self._take(key, value, entry.revision or 0, data)
        finally:
            self._watcher = None
            if not self._restart:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    def _drop(self, key: str, revision: int | None) -> None:
        """Forget `key`, deleted at `revision` (None: whatever is held, gone from the bucket)."""
        records = self._records
        known = records.revision(key)
        if known is None or (revision is not None and known > revision):
            return
        old = records.get(key)
        records.pop(key)
        self._reindex(key, old, None)
        self._notify(key, old, None)
