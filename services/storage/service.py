"""The storage service: deletes blobs it is told to, sweeps files no rendition records, and keeps
the store's summary (files, bytes) current in KV."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS

from services.storage.config import StorageSettings
from shared.blobs.backends import open_store
from shared.blobs.keys import OUTPUTS, PARTS, parts_owner
from shared.blobs.store import BlobStore
from shared.blobs.users import service_config
from shared.messages import commands as cmd
from shared.messages import events
from shared.messages.records import Rendition, RenditionState, StorageSummary
from shared.nats.consumer import ACK, Consumer, Received, Settle
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import describe, ensure_topology, publish_event, retention_of
from shared.runtime import Service

log = structlog.get_logger("vidmesh.storage")

SUMMARY_KEY = "summary"


class Storage(Service):
    name = "storage"

    def __init__(self, nc: NATS, settings: StorageSettings) -> None:
        super().__init__(grace=settings.stop_grace_seconds, deadline=settings.stop_deadline_seconds)
        self.nc = nc
        self.settings = settings
        self.names = Names(settings.namespace)
        self.blobs: BlobStore = open_store(service_config(settings))
        # The transcoders' work files on this machine (vidmesh up), when it can see them.
        self.scratch = Path(settings.data_dir) / "scratch"
        self._sweeper: asyncio.Task[None] | None = None
        self._measure = asyncio.Event()

    async def start(self) -> None:
        self.js = self.nc.jetstream()
        buckets = await ensure_topology(
            self.js,
            self.names,
            replicas=self.settings.replicas,
            retention=retention_of(self.settings),
        )
        self.summary = TypedKV(buckets.storage, StorageSummary)
        self.renditions = Projection(
            TypedKV(buckets.renditions, Rendition), "storage.renditions", nc=self.nc
        )
        await self.renditions.start()
        self.renditions.listen(self._rendition_changed)
        consumer = Consumer.durable(
            self.names.commands_stream,
            self.names.storage_consumer,
            self.names.storage_commands,
            cmd.STORAGE_DECODER,
            family="command",
            ack_wait=60.0,
            max_attempts=self.settings.message_attempts,
        )
        self.consume(await consumer.open(self.js, "storage.commands", self._handle))
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="storage.sweep")
        log.info("storage.started", store=self.blobs.name)

    def _rendition_changed(self, key: str, old: Rendition | None, new: Rendition | None) -> None:
        if new is not None and new.state is RenditionState.DONE:
            self._measure.set()

    async def _handle(self, received: Received[cmd.StorageCommand]) -> Settle:
        match received.message:
            case cmd.DeleteBlobs() as command:
                await self.delete_blobs(command)
        return ACK

    async def delete_blobs(self, command: cmd.DeleteBlobs) -> None:
        freed, count = 0, 0
        for key in command.blobs:
            if self._recorded(key):
                # A rendition records this blob again (renewed before we got here): keep it.
                continue
            size = await self.blobs.delete(key)
            freed += size
            count += 1 if size else 0
        if command.sweep_orphans:
            extra_count, extra_bytes = await self.sweep_orphans()
            freed, count = freed + extra_bytes, count + extra_count
        await self.measure()
        log.info("blobs.deleted", files=count, bytes=freed, reason=command.reason)
        event = events.BlobsDeleted(
            event_id=f"blobs:{command.command_id}",
            time=events.now(),
            request_id=command.request_id,
            blobs=count,
            bytes=freed,
        )
        await publish_event(self.js, self.names, event)

    def _recorded(self, key: str) -> bool:
        for r in self.renditions.values():
            if r.state is RenditionState.DONE and r.output is not None and r.output.blob == key:
                return True
        return False

    def _splitting(self, key: str) -> bool:
        """Whether a file under `parts/<k2>/<rendition>/<generation>/` belongs to a rendition
        running split at that generation (its parts are still being made or joined)."""
        owner = parts_owner(key)
        if owner is None:
            return False
        rendition, generation = owner
        r = self.renditions.get(rendition)
        return (
            r is not None
            and r.state is RenditionState.RUNNING
            and r.split is not None
            and str(r.generation) == generation
        )

    async def sweep_orphans(self) -> tuple[int, int]:
        """Delete stored files that no done rendition records, and parts of renditions no longer
        running split, older than the orphan grace: always, so a file stored a moment ago,
        about to be recorded, is never taken."""
        grace = self.settings.orphan_grace
        recorded = {
            r.output.blob
            for r in self.renditions.values()
            if r.state is RenditionState.DONE and r.output is not None
        }
        now = time.time()
        count = freed = 0
        for blob in await self.blobs.list_blobs(OUTPUTS):
            if blob.key in recorded or now - blob.modified < grace:
                continue
            freed += await self.blobs.delete(blob.key)
            count += 1
        for blob in await self.blobs.list_blobs(PARTS):
            # a split rendition's segments and audio: kept while it runs split at that generation
            if self._splitting(blob.key) or now - blob.modified < grace:
                continue
            freed += await self.blobs.delete(blob.key)
            count += 1
        if count:
            log.info("blobs.orphans_deleted", files=count, bytes=freed)
        return count, freed

    async def measure(self) -> StorageSummary:
        listing = await self.blobs.list_blobs()
        cache_files, cache_bytes = await asyncio.to_thread(_folder_size, self.scratch)
        summary = StorageSummary(
            store=self.blobs.name,
            files=len(listing),
            bytes=sum(b.size for b in listing),
            cache_files=cache_files,
            cache_bytes=cache_bytes,
            updated_at=time.time(),
        )
        await self.summary.put(SUMMARY_KEY, summary)
        return summary

    async def _sweep_forever(self) -> None:
        next_sweep = 0.0
        while True:
            timeout = max(0.0, next_sweep - time.monotonic())
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._measure.wait()
            self._measure.clear()
            try:
                if time.monotonic() >= next_sweep:
                    await self.sweep_orphans()
                    next_sweep = time.monotonic() + self.settings.sweep_interval
                await self.measure()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("storage.sweep_failed", **describe(exc))

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.renditions.stop()


def _folder_size(folder: Path) -> tuple[int, int]:
    """Files and bytes under a folder (0, 0 when it does not exist)."""
    files = size = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                files += 1
                size += path.stat().st_size
    return files, size
