"""The scheduler: owns the job state machine, enforces limits, dispatches work, retires outputs.

It consumes commands, and reconciles every record that changes (and, every `sweep_interval`, all
of them) until jobs follow their renditions, limits hold, and expired outputs are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.aio.client import Client as NATS

from services.scheduler.access import AccessCheck
from services.scheduler.commands import CommandHandler
from services.scheduler.config import SchedulerSettings
from services.scheduler.dispatch import Dispatcher, migrate_lease_sets
from services.scheduler.events_repair import EventRepair
from services.scheduler.intake import Intake
from services.scheduler.metrics import observe_job, sample_forever
from services.scheduler.reconcile import Reconciler
from services.scheduler.sharing import ShareChecks
from services.scheduler.view import View
from shared.jobs.store import RecordStore
from shared.messages.fleet import Pool, TranscodingSettings
from shared.messages.records import JobRecord, Lease, LeaseSet, Rendition
from shared.nats.consumer import Consumer, SlotLoops
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import describe, ensure_topology, retention_of
from shared.runtime import Service, stop_tasks

log = structlog.get_logger("vidmesh.scheduler")


class Scheduler(Service):
    name = "scheduler"

    def __init__(self, nc: NATS, settings: SchedulerSettings) -> None:
        super().__init__()
        self.nc = nc
        self.settings = settings
        self.names = Names(settings.namespace)
        self._dirty_jobs: set[str] = set()
        self._dirty_renditions: set[str] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._loops: SlotLoops | None = None
        self.passes = 0

    async def start(self) -> None:
        js = self.nc.jetstream()
        buckets = await ensure_topology(
            js,
            self.names,
            replicas=self.settings.replicas,
            retention=retention_of(self.settings),
        )
        self.store = RecordStore(js, self.names, buckets)
        self.jobs = Projection(self.store.jobs, "scheduler.jobs", nc=self.nc)
        self.renditions = Projection(self.store.renditions, "scheduler.renditions", nc=self.nc)
        self.store.job_view, self.store.rendition_view = self.jobs, self.renditions
        self.view = View(self.jobs, self.renditions)
        self.jobs.listen(self._job_changed)
        self.renditions.listen(self._rendition_changed)
        await self.jobs.start()
        await self.renditions.start()
        self.event_repair = EventRepair(self.store, self.jobs)
        self.access = AccessCheck(self.settings.policy, timeout=self.settings.share_check_timeout)
        self.sharing = ShareChecks(
            self.store, self.view, self.settings, self.access, self._share_decided
        )
        self.reconciler = Reconciler(self.store, self.view, self.settings, self.sharing)
        self.pools = Projection(TypedKV(buckets.pools, Pool), "scheduler.pools", nc=self.nc)
        self.fleet_settings = Projection(
            TypedKV(buckets.settings, TranscodingSettings), "scheduler.settings", nc=self.nc
        )
        for fleet in (self.pools, self.fleet_settings):
            fleet.listen(lambda *_: self._wake.set())  # a raised limit may let work out now
            await fleet.start()
        lease_keys = TypedKV(buckets.leases, Lease)
        await migrate_lease_sets(lease_keys, TypedKV(buckets.leases, LeaseSet))
        self.leases = Projection(lease_keys, "scheduler.leases", nc=self.nc)
        await self.leases.start()
        self.dispatcher = Dispatcher(
            self.store,
            self.view,
            self.leases,
            self.settings,
            self.pools,
            self.fleet_settings,
        )
        consumer = Consumer.durable(
            self.names.commands_stream,
            self.names.scheduler_consumer,
            self.names.scheduler_commands,
            ack_wait=30.0,
            max_ack_pending=self.settings.command_slots * 4,
        )
        intake = Intake(js, self.names, self.store, self.fleet_settings)
        handler = CommandHandler(
            self.store, self.view, self.reconciler, self.settings, self._wake.set, intake
        )
        self._loops = await consumer.open(
            js, "scheduler.commands", handler, slots=self.settings.command_slots
        )
        self._loop_task = asyncio.create_task(self._reconcile_forever(), name="scheduler.reconcile")
        self._metrics_task = asyncio.create_task(
            sample_forever(js, self.names, self.view), name="scheduler.metrics"
        )
        log.info(
            "scheduler.started",
            jobs=len(self.jobs),
            renditions=len(self.renditions),
            max_concurrent_jobs=self.settings.max_concurrent_jobs,
        )

    def _job_changed(self, key: str, old: JobRecord | None, new: JobRecord | None) -> None:
        observe_job(old, new)
        self._dirty_jobs.add(key)
        for record in (old, new):
            if record is not None and record.rendition:
                self._dirty_renditions.add(record.rendition)
            # A change of one job can free (or fill) its device's share: look at its held jobs.
            if record is not None:
                self._dirty_jobs.update(j.id for j in self.view.held_in_order(record.device_id))
                self._dirty_jobs.update(j.id for j in self._admissible_next(record.owner))
        self._wake.set()

    def _share_decided(self, job_id: str) -> None:
        self._dirty_jobs.add(job_id)
        self._wake.set()

    def _admissible_next(self, owner: str) -> list[JobRecord]:
        """The user's waiting jobs that the active limit has room for now (the first in line)."""
        limit = self.settings.max_active_jobs_per_user
        waiting = self.view.waiting_in_order(owner)
        if not limit:
            return waiting
        return waiting[: max(0, limit - self.view.active_count(owner))]

    def _rendition_changed(self, key: str, old: Rendition | None, new: Rendition | None) -> None:
        self._dirty_renditions.add(key)
        self._dirty_jobs.update(job.id for job in self.view.jobs_of_rendition(key))
        self._wake.set()

    async def _reconcile_forever(self) -> None:
        next_sweep = 0.0
        while True:
            timeout = max(0.0, next_sweep - time.monotonic())
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that
            # lands as its timeout expires, and the loop would never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            if time.monotonic() >= next_sweep:
                self._dirty_jobs.update(key for key, _ in self.jobs.items())
                self._dirty_renditions.update(key for key, _ in self.renditions.items())
                next_sweep = time.monotonic() + self.settings.sweep_interval
                await self.event_repair.run_once()
                try:
                    await self.dispatcher.forget_released()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("leases.forget_failed", **describe(exc))
            try:
                await self.reconcile_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("scheduler.pass_failed", **describe(exc))
                await asyncio.sleep(0.5)
                self._wake.set()

    async def reconcile_pass(self) -> None:
        """One pass over everything that changed since the last, then dispatch."""
        renditions, self._dirty_renditions = self._dirty_renditions, set()
        jobs, self._dirty_jobs = self._dirty_jobs, set()
        try:
            for key in sorted(renditions):
                await self.reconciler.rendition(key)
            for job_id in sorted(jobs, key=self._created_at):
                await self.reconciler.job(job_id)
            if not await self.dispatcher.run_once():
                self._wake.set()
        except BaseException:
            self._dirty_renditions |= renditions
            self._dirty_jobs |= jobs
            raise
        self.passes += 1

    def _created_at(self, job_id: str) -> float:
        job = self.jobs.get(job_id)
        return job.created_at if job else 0.0

    async def stop(self) -> None:
        if self._loops is not None:
            await self._loops.close(grace=5.0)
        # cancelled until they stop: their NATS requests can swallow a cancellation on 3.11
        await stop_tasks([t for t in (self._metrics_task, self._loop_task) if t is not None])
        projections = (self.jobs, self.renditions, self.pools, self.fleet_settings, self.leases)
        for projection in projections:
            await projection.stop()
        await self.sharing.close()
        await self.access.close()
        log.info("scheduler.stopped", passes=self.passes)
