"""The scheduler: owns the job state machine, enforces limits, dispatches work, retires outputs.

It consumes commands, and reconciles every record that changes (and, every `sweep_interval`, all
of them) until jobs follow their renditions, limits hold, and expired outputs are released: the
reconcile loop (`reconcile`) asks `decide` what should change and has `apply` write it.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS

from services.scheduler.access import AccessCheck
from services.scheduler.apply import Applier
from services.scheduler.commands import CommandHandler
from services.scheduler.config import SchedulerSettings
from services.scheduler.dispatch import migrate_lease_sets
from services.scheduler.events_repair import EventRepair
from services.scheduler.intake import Intake
from services.scheduler.metrics import observe_job, sample_forever
from services.scheduler.reconcile import ReconcileLoop
from services.scheduler.sharing import ShareChecks
from services.scheduler.view import LeaseView, View
from shared.fleet import SETTINGS_KEY
from shared.jobs.store import RecordStore
from shared.messages import commands as cmd
from shared.messages.fleet import Pool, TranscodingSettings
from shared.messages.records import JobRecord, Lease, LeaseSet, Part
from shared.nats.consumer import Consumer
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import ensure_topology, retention_of
from shared.runtime import Service
from shared.settings import LiveSettings, ServerSettings
from shared.tasks import stop_tasks

log = structlog.get_logger("vidmesh.scheduler")

# Commands a slot fetches at once while they wait (each is quick: a few KV writes).
COMMAND_BATCH = 8


class Scheduler(Service):
    name = "scheduler"

    def __init__(self, nc: NATS, settings: SchedulerSettings) -> None:
        super().__init__(grace=settings.stop_grace_seconds, deadline=settings.stop_deadline_seconds)
        self.nc = nc
        self.settings = settings
        self.names = Names(settings.namespace)
        self._loop_task: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None

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
        self.parts = Projection(TypedKV(buckets.parts, Part), "scheduler.parts", nc=self.nc)
        self.view = View(self.jobs, self.renditions, parts=self.parts)
        self.jobs.listen(_observe_job)
        self.access = AccessCheck(self.settings.policy, timeout=self.settings.share_check_timeout)
        self.sharing = ShareChecks(self.view, self.access, self._share_decided)
        self.applier = Applier(self.store, self.view, sharing=self.sharing)
        self.event_repair = EventRepair(self.store, self.jobs)
        self.loop = ReconcileLoop(
            self.view, self.applier, self.settings, on_sweep=self.event_repair.run_once
        )
        await self.jobs.start()
        await self.renditions.start()
        await self.parts.start()
        self.pools = Projection(TypedKV(buckets.pools, Pool), "scheduler.pools", nc=self.nc)
        self.fleet_settings = Projection(
            TypedKV(buckets.settings, TranscodingSettings), "scheduler.settings", nc=self.nc
        )
        for fleet in (self.pools, self.fleet_settings):
            fleet.listen(lambda *_: self.loop.wake())  # a raised limit may let work out now
            await fleet.start()
        lease_keys = TypedKV(buckets.leases, Lease)
        await migrate_lease_sets(lease_keys, TypedKV(buckets.leases, LeaseSet))
        self.leases = Projection(lease_keys, "scheduler.leases", nc=self.nc)
        await self.leases.start()
        self.lease_view = LeaseView(self.leases, self.renditions, self.pools, self.fleet_settings)
        self.view.leases = self.lease_view
        self.server_settings = LiveSettings(
            buckets.serversettings, "scheduler.serversettings", nc=self.nc
        )
        self.server_settings.listen(self._settings_changed)
        await self.server_settings.start()
        self._settings_changed(self.server_settings.current)
        self.applier.leases = self.leases
        self.loop.watch_leases(self.leases)
        consumer = command_consumer(self.names, self.settings)
        consumer.policy = self.server_settings.retry_policy
        intake = Intake(js, self.names, self.store, self._transcoding_settings)
        handler = CommandHandler(
            self.store, self.view, self.applier, self.settings, self.loop.wake, intake
        )
        slots = self.settings.command_slots
        self.consume(
            await consumer.open(js, "scheduler.commands", handler, slots=slots, batch=COMMAND_BATCH)
        )
        self._loop_task = asyncio.create_task(self.loop.run_forever(), name="scheduler.reconcile")
        self._metrics_task = asyncio.create_task(
            sample_forever(js, self.names, self.view), name="scheduler.metrics"
        )
        log.info(
            "scheduler.started",
            jobs=len(self.jobs),
            renditions=len(self.renditions),
            parts=len(self.parts),
            max_concurrent_jobs=self.settings.max_concurrent_jobs,
        )

    def _settings_changed(self, settings: ServerSettings) -> None:
        """A new dispatch concurrency applies from the next pass (a raised one at once)."""
        self.lease_view.dispatch_concurrency = settings.processing.dispatch_concurrency
        self.loop.wake()

    def _transcoding_settings(self) -> TranscodingSettings:
        return self.fleet_settings.get(SETTINGS_KEY) or TranscodingSettings()

    def _share_decided(self, job_id: str) -> None:
        self.loop.look_at_job(job_id)

    @property
    def passes(self) -> int:
        """Reconcile passes run so far."""
        return self.loop.passes

    async def stop(self) -> None:
        # cancelled until they stop: their NATS requests can swallow a cancellation on 3.11
        await stop_tasks([t for t in (self._metrics_task, self._loop_task) if t is not None])
        projections = (
            self.jobs,
            self.renditions,
            self.parts,
            self.pools,
            self.fleet_settings,
            self.leases,
        )
        for projection in projections:
            await projection.stop()
        await self.server_settings.stop()
        await self.sharing.close()
        await self.access.close()
        log.info("scheduler.stopped", passes=self.passes)


def command_consumer(names: Names, settings: SchedulerSettings) -> Consumer[cmd.SchedulerCommand]:
    """The scheduler's consumer of its commands: a command whose handling keeps failing stops
    at the attempt cap, except a job's submission, retried until it is stored (its face has
    answered 201 already)."""
    return Consumer.durable(
        names.commands_stream,
        names.scheduler_consumer,
        names.scheduler_commands,
        cmd.SCHEDULER_DECODER,
        family="command",
        ack_wait=30.0,
        max_ack_pending=settings.command_slots * COMMAND_BATCH,
        max_attempts=settings.message_attempts,
        uncapped=lambda command: isinstance(command, cmd.SubmitJob),
    )


def _observe_job(key: str, old: JobRecord | None, new: JobRecord | None) -> None:
    observe_job(old, new)
