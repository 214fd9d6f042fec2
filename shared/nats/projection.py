"""An in-memory copy of a KV bucket, kept current by a watch (initial values, then every change).

Reads are answered from memory, so a request never scans KV. After a reconnect the watch is
restarted and the copy re-synchronised, dropping keys deleted in the meantime.

Named secondary indexes (a key function: record -> the index keys it files under) are kept exact
on every change, whichever way it arrives (the watch, read-your-writes `apply()`, a resync), so a
read can take the records under one key and cost what it returns, never a walk over every record.
What a read derives again and again (a record rendered, a whole answer) can be kept beside them
and is forgotten as soon as a record it came from changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar, cast

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.js.kv import KV_DEL, KV_PURGE

from shared.nats.kv import TypedKV, Versioned
from shared.tasks import stop_tasks

T = TypeVar("T", bound=msgspec.Struct)
R = TypeVar("R")

log = structlog.get_logger("vidmesh.projection")

# Answers derived from the records under index keys that are kept at most (then all forgotten).
MAX_DERIVED_UNDER = 4096

# An index's key function: the keys a record is filed under (none: not in that index).
KeyFn = Callable[[T], Iterable[Hashable]]


class Projection(Generic[T]):
    """Records of one bucket by key, with their revisions; call `start()` before reading."""

    def __init__(
        self,
        store: TypedKV[T],
        name: str,
        *,
        nc: NATS | None = None,
        indexes: Mapping[str, KeyFn[T]] | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.nc = nc
        self.ready = asyncio.Event()
        self._records: dict[str, Versioned[T]] = {}
        self._key_fns: dict[str, KeyFn[T]] = dict(indexes or {})
        # index name -> index key -> the record keys filed under it
        self._indexes: dict[str, dict[Hashable, set[str]]] = {name: {} for name in self._key_fns}
        # derivation name -> record key -> (the record it was derived from, what was derived)
        self._derived: dict[str, dict[str, tuple[T, object]]] = {}
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
        found = self._records.get(key)
        return found.value if found else None

    def versioned(self, key: str) -> Versioned[T] | None:
        return self._records.get(key)

    def values(self) -> Iterator[T]:
        return (v.value for v in list(self._records.values()))

    def items(self) -> Iterator[tuple[str, T]]:
        return ((k, v.value) for k, v in list(self._records.items()))

    def __len__(self) -> int:
        return len(self._records)

    # ---- indexed reading ---------------------------------------------------------------
    def find(self, index: str, key: Hashable) -> list[T]:
        """The records filed under `key` in `index` (in no particular order: sort the answer)."""
        ids = self._indexes[index].get(key)
        if not ids:
            return []
        records = self._records
        return [records[record_key].value for record_key in ids]

    def find_any(self, index: str, keys: Iterable[Hashable]) -> list[T]:
        """The records filed under any of `keys` in `index` (each once)."""
        found: dict[str, T] = {}
        bucket = self._indexes[index]
        records = self._records
        for key in keys:
            for record_key in bucket.get(key, ()):
                found[record_key] = records[record_key].value
        return list(found.values())

    def keys_of(self, index: str, key: Hashable) -> Collection[str]:
        """The record keys filed under `key` in `index` (a copy)."""
        return frozenset(self._indexes[index].get(key, ()))

    def count(self, index: str, key: Hashable) -> int:
        """How many records are filed under `key` in `index`."""
        return len(self._indexes[index].get(key, ()))

    def counts(self, index: str) -> dict[Hashable, int]:
        """Index key -> how many records are filed under it (keys with none left out)."""
        return {key: len(ids) for key, ids in self._indexes[index].items()}

    def derived(self, key: str, record: T, name: str, make: Callable[[T], R]) -> R:
        """`make(record)`, computed once per stored version of the record at `key` and kept
        until the record changes or goes: for what every read derives again (a rendering)."""
        memo = self._derived.setdefault(name, {})
        found = memo.get(key)
        if found is not None and found[0] is record:
            return cast(R, found[1])
        value = make(record)
        held = self._records.get(key)
        if held is not None and held.value is record:  # what is held here is forgotten in time
            memo[key] = (record, value)
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
        """Take a value we know is stored at `revision`; older news than we have is ignored."""
        known = self._records.get(key)
        if known is not None and known.revision >= revision:
            return
        old = known.value if known else None
        if value is None:
            if known is None:
                return
            del self._records[key]
        else:
            self._records[key] = Versioned(value, revision)
        self._reindex(key, old, value)
        self._notify(key, old, value)

    def _reindex(self, key: str, old: T | None, new: T | None) -> None:
        """File `key` under the new record's index keys and take it out of the old one's, and
        forget what was derived from the old one, or from the records under its keys."""
        for memo in self._derived.values():
            memo.pop(key, None)
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
                ids = index.get(gone)
                if ids is not None:
                    ids.discard(key)
                    if not ids:
                        del index[gone]
            for added in set(after).difference(before):
                index.setdefault(added, set()).add(key)

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
        try:
            async for entry in watcher:
                if entry is None:
                    if initial:
                        initial = False
                        for gone in set(self._records) - seen:
                            old = self._records.pop(gone).value
                            self._reindex(gone, old, None)
                            self._notify(gone, old, None)
                        self.ready.set()
                    continue
                key = entry.key
                if initial:
                    seen.add(key)
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self._drop(key, entry.revision or 0)
                    continue
                try:
                    value = self.store.decode(entry.value)
                except msgspec.DecodeError:
                    log.error("projection.undecodable", projection=self.name, key=key)
                    continue
                self.apply(key, value, entry.revision or 0)
        finally:
            self._watcher = None
            if not self._restart:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    def _drop(self, key: str, revision: int) -> None:
        known = self._records.get(key)
        if known is None or known.revision > revision:
            return
        del self._records[key]
        self._reindex(key, known.value, None)
        self._notify(key, known.value, None)
