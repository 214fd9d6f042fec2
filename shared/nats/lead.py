"""One holder at a time: a lead kept in a KV key, for work that replicas must not do side by
side (folding a stream in order, a batch at a time).

The holder writes the key again every `ttl / 3` (compare-and-set on the revision it wrote last);
another replica takes the key over once its revision has not moved for `ttl`, timed on its own
clock, so no two clocks need to agree. A holder that cannot renew (NATS away, the key taken)
stops holding at once; one that stalls longer than `ttl` finds the key taken when it wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.lead")


class Lead:
    """Whether this process holds the lead named `key` in `kv` (see the module)."""

    def __init__(self, kv: KeyValue, key: str, holder: str, *, ttl: float = 10.0) -> None:
        self.kv = kv
        self.key = key
        self.holder = holder.encode()
        self.ttl = ttl
        self._revision: int | None = None  # the revision this process wrote last, while held
        self._seen: tuple[int, float] | None = None  # another holder's revision, when first seen
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # set whenever `held` changes

    @property
    def held(self) -> bool:
        return self._revision is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name=f"lead.{self.key}")

    async def stop(self) -> None:
        """Stop holding (the key is deleted if this process holds it: another takes it now)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        revision, self._revision = self._revision, None
        if revision is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(self.key, last=revision)

    async def _keep(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.held:
                    log.warning("lead.lost", key=self.key, **describe(exc))
                self._set(None)
            await asyncio.sleep(self.ttl / 3)

    async def _step(self) -> None:
        if self._revision is not None:
            try:
                self._set(await self.kv.update(self.key, self.holder, last=self._revision))
            except KeyWrongLastSequenceError:
                log.warning("lead.taken", key=self.key)
                self._set(None)
            return
        try:
            entry = await self.kv.get(self.key)
        except NotFoundError:  # never written, or given back
            entry = None
        if entry is None or not entry.value:  # free (never held, or given back)
            last = entry.revision if entry is not None else None
            await self._take(last)
            return
        revision = entry.revision or 0
        now = time.monotonic()
        if self._seen is None or self._seen[0] != revision:
            self._seen = (revision, now)  # the holder renewed it
        elif now - self._seen[1] >= self.ttl:
            await self._take(revision)  # not renewed for a whole ttl

    async def _take(self, last: int | None) -> None:
        try:
            if last is None:
                revision = await self.kv.create(self.key, self.holder)
            else:
                revision = await self.kv.update(self.key, self.holder, last=last)
        except KeyWrongLastSequenceError:
            return  # another replica took it first
        log.info("lead.taken_over" if last else "lead.held", key=self.key)
        self._seen = None
        self._set(revision)

    def _set(self, revision: int | None) -> None:
        was = self.held
        self._revision = revision
        if was != self.held:
            self.changed.set()
