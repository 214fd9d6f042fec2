"""Reading and changing the fleet's KV records: pools, settings, live transcoders, sessions and
capability probes. One place for the gateway, the scheduler and the transcoders."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from shared.media.presets import PresetSpec, within_ceilings
from shared.messages.fleet import (
    DEFAULT_POOL,
    Capability,
    Pool,
    TranscodeSession,
    TranscodingSettings,
    WorkerInfo,
)
from shared.messages.records import Lease
from shared.nats.kv import TypedKV
from shared.nats.leases import leases_of
from shared.nats.topology import Buckets

SETTINGS_KEY = "transcoding"
T = TypeVar("T", bound=msgspec.Struct)


class Fleet:
    """Typed access to the fleet's buckets."""

    def __init__(self, buckets: Buckets) -> None:
        self.pools = TypedKV(buckets.pools, Pool)
        self.settings = TypedKV(buckets.settings, TranscodingSettings)
        self.workers = TypedKV(buckets.workers, WorkerInfo)
        self.sessions = TypedKV(buckets.sessions, TranscodeSession)
        self.capabilities = TypedKV(buckets.capabilities, Capability)
        self.leases = TypedKV(buckets.leases, Lease)

    async def pool(self, pool_id: str) -> Pool | None:
        """A pool by id; the default pool exists even before anyone configured it."""
        found = await self.pools.get(pool_id)
        if found is not None:
            return found.value
        return Pool(id=DEFAULT_POOL, concurrency=0) if pool_id == DEFAULT_POOL else None

    async def all_pools(self) -> list[Pool]:
        """Every pool, the default one first."""
        pools = {p.id: p for p in await _values(self.pools)}
        pools.setdefault(DEFAULT_POOL, Pool(id=DEFAULT_POOL, concurrency=0))
        return sorted(pools.values(), key=lambda p: (p.id != DEFAULT_POOL, p.id))

    async def transcoding_settings(self) -> TranscodingSettings:
        found = await self.settings.get(SETTINGS_KEY)
        return found.value if found else TranscodingSettings()

    async def within_ceilings(self, spec: PresetSpec) -> PresetSpec:
        """A new job's spec, capped to the fleet's quality ceilings."""
        return capped(spec, await self.transcoding_settings())

    async def live_workers(self) -> list[WorkerInfo]:
        return sorted(await _values(self.workers), key=lambda w: (w.pool, w.host, w.id))

    async def all_sessions(self) -> list[TranscodeSession]:
        return sorted(await _values(self.sessions), key=lambda s: -s.started_at)

    async def leases_of(self, pool_id: str) -> list[Lease]:
        """The pool's leases (one KV key each), ordered by rendition."""
        found = await leases_of(self.leases, pool_id)
        return sorted(found.values(), key=lambda lease: lease.rendition)


def capped(spec: PresetSpec, settings: TranscodingSettings) -> PresetSpec:
    """`spec` within the quality ceilings of the fleet's `settings`."""
    return within_ceilings(
        spec,
        max_height=settings.max_height,
        max_video_bitrate_kbps=settings.max_video_bitrate_kbps,
    )


async def _values(kv: TypedKV[T]) -> list[T]:
    return list((await kv.values()).values())
