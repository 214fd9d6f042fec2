"""Telemetry: the statistics service samples the fleet every `interval_seconds` into the
`<NS>_TELEMETRY` stream (raw, plus minute and hour averages), and answers the gateway's questions
over request/reply: every pool now, and a job's estimate.

The settings (KV `settings`, key `telemetry`) apply at once: a watch on the key wakes the loop,
and each tick re-reads them in case a watch missed a change. The stream's max_age follows
`retention_hours`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from services.statistics.digests import JobDigest, RenditionDigest, SessionDigest
from services.statistics.estimate import estimate
from services.statistics.rollups import Rollup
from services.statistics.snapshot import FleetState, finished_sessions, pool_metrics, readings
from shared.errors import VidmeshError
from shared.messages.fleet import Pool, WorkerInfo
from shared.messages.records import Progress, Totals
from shared.messages.telemetry import (
    ENCODER,
    ESTIMATE_REQUEST,
    RAW,
    ROLLUPS,
    SETTINGS_KEY,
    EstimateReply,
    PoolMetricsReply,
    TelemetrySample,
    TelemetrySettings,
)
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import Buckets, describe
from shared.tasks import stop_tasks

log = structlog.get_logger("vidmesh.statistics")

T = TypeVar("T", bound=msgspec.Struct)

HOUR = 3600.0
RPC_QUEUE = "statistics"


class Telemetry:
    """Samples every metric into the telemetry stream; answers pool-metric and estimate requests."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        buckets: Buckets,
        read_totals: Callable[[], Awaitable[Totals]],
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.names = names
        self.read_totals = read_totals
        self.jobs = _watch(nc, buckets.jobs, JobDigest, "jobs")
        self.renditions = _watch(nc, buckets.renditions, RenditionDigest, "renditions")
        self.sessions = _watch(nc, buckets.sessions, SessionDigest, "sessions")
        self.workers = _watch(nc, buckets.workers, WorkerInfo, "workers")
        self.progress = _watch(nc, buckets.progress, Progress, "progress")
        self.pools = _watch(nc, buckets.pools, Pool, "pools")
        self.settings = TypedKV(buckets.settings, TelemetrySettings)
        self.rollups = [Rollup(level, period) for level, period in ROLLUPS.items()]
        self.current = TelemetrySettings()
        self._wake = asyncio.Event()
        self._max_age: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Subscription] = []

    @property
    def _projections(self) -> list[Projection[Any]]:
        return [self.jobs, self.renditions, self.sessions, self.workers, self.progress, self.pools]

    async def start(self) -> None:
        for projection in self._projections:
            await projection.start()
        for kind, answer in (("pools", self._answer_pools), ("estimate", self._answer_estimate)):
            subject = self.names.statistics_rpc(kind)
            self._subs.append(await self.nc.subscribe(subject, queue=RPC_QUEUE, cb=answer))
        self._tasks = [
            asyncio.create_task(self._sample_forever(), name="telemetry.sample"),
            asyncio.create_task(self._watch_settings(), name="telemetry.settings"),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        await stop_tasks(self._tasks)
        self._tasks = []
        for projection in self._projections:
            await projection.stop()

    def state(self, now: float, totals: Totals | None = None) -> FleetState:
        """The records a sample or an answer is computed from, as this copy holds them now."""
        return FleetState(
            now=now,
            pools=[pool.id for pool in self.pools.values()],
            jobs=list(self.jobs.values()),
            renditions=dict(self.renditions.items()),
            sessions=list(self.sessions.values()),
            workers=list(self.workers.values()),
            progress=list(self.progress.values()),
            totals=totals or Totals(),
        )

    # ---- sampling ------------------------------------------------------------------------
    async def _sample_forever(self) -> None:
        due = 0.0
        while True:
            self._wake.clear()
            settings = await self._read_settings()
            await self._follow_retention(settings)
            interval = float(settings.interval_seconds)
            now = time.time()
            tick = _next_tick(now, interval)
            if settings.enabled and now >= due:
                await self._sample(now, interval)
                due = tick
            else:
                # a shorter interval takes effect now, not after the longer one ends
                due = min(due, tick) if due > now else tick
            # asyncio.timeout, not wait_for: on 3.11 wait_for lost a cancellation that landed
            # as a zero timeout expired, and stop() waited for this loop for ever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(due - time.time(), 0.0)):
                    await self._wake.wait()

    async def _sample(self, now: float, interval: float) -> None:
        try:
            totals = await self.read_totals()
            sample = TelemetrySample(
                at=round(now, 3), period=interval, readings=readings(self.state(now, totals))
            )
            # replicas sampling the same tick publish one message (JetStream de-duplicates)
            await self._publish(RAW, sample, f"{RAW}:{math.floor(now / interval) * interval:.0f}")
            for rollup in self.rollups:
                closed = rollup.add(sample)
                if closed is not None:
                    await self._publish(rollup.level, closed, f"{rollup.level}:{closed.at:.0f}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("telemetry.sample_failed", **describe(exc))

    async def _publish(self, level: str, sample: TelemetrySample, msg_id: str) -> None:
        await self.js.publish(
            self.names.telemetry(level), ENCODER.encode(sample), headers={"Nats-Msg-Id": msg_id}
        )

    # ---- settings ------------------------------------------------------------------------
    async def _read_settings(self) -> TelemetrySettings:
        try:
            found = await self.settings.get(SETTINGS_KEY)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("telemetry.settings_unreadable", **describe(exc))
            return self.current  # NATS is away for now: keep going as before
        settings = found.value if found else TelemetrySettings()
        if settings != self.current:
            log.info(
                "telemetry.settings",
                enabled=settings.enabled,
                interval_seconds=settings.interval_seconds,
                retention_hours=settings.retention_hours,
            )
            self.current = settings
        return settings

    async def _follow_retention(self, settings: TelemetrySettings) -> None:
        max_age = settings.retention_hours * HOUR
        if self._max_age == max_age:
            return
        try:
            info = await self.js.stream_info(self.names.telemetry_stream)
            if info.config.max_age != max_age:
                await self.js.update_stream(info.config.evolve(max_age=max_age))
                log.info("telemetry.retention", hours=settings.retention_hours)
            self._max_age = max_age
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # tried again next tick
            log.warning("telemetry.retention_failed", **describe(exc))

    async def _watch_settings(self) -> None:
        """Wake the sampling loop whenever the settings key changes."""
        delay = 0.2
        while True:
            try:
                watcher = await self.settings.kv.watch(SETTINGS_KEY)
                try:
                    async for entry in watcher:
                        delay = 0.2
                        if entry is not None:
                            self._wake.set()
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop re-reads the settings each tick meanwhile
                log.debug("telemetry.settings_watch_failed", **describe(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # ---- request/reply -------------------------------------------------------------------
    async def _answer_pools(self, msg: Msg) -> None:
        """`GET /api/admin/telemetry/pool-metrics`: every pool now."""
        now = time.time()
        reply = PoolMetricsReply(at=round(now, 3), pools=pool_metrics(self.state(now)))
        if msg.reply:
            await msg.respond(ENCODER.encode(reply))

    async def _answer_estimate(self, msg: Msg) -> None:
        """`POST /api/admin/jobs/estimate`: the wall time and size of a probed source's job."""
        try:
            request = ESTIMATE_REQUEST.decode(msg.data)
            history = finished_sessions(self.state(time.time()), request.pool)
            reply = EstimateReply(estimate=estimate(request, history))
        except msgspec.DecodeError:
            reply = EstimateReply(error="The estimate request was not understood.")
        except VidmeshError as exc:
            reply = EstimateReply(error=exc.message)
        if msg.reply:
            await msg.respond(ENCODER.encode(reply))


def _watch(nc: NATS, kv: KeyValue, type_: type[T], name: str) -> Projection[T]:
    return Projection(TypedKV(kv, type_), f"statistics.{name}", nc=nc)


def _next_tick(now: float, interval: float) -> float:
    """The next multiple of `interval` after `now`: replicas sample the same instants."""
    return (math.floor(now / interval) + 1) * interval
