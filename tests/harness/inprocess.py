"""A whole vidmesh in the test's own process and event loop, in one namespace: every service
object started against the session's nats-server, and stopped with its namespace dropped."""

from __future__ import annotations

import asyncio
import contextlib
import io
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from services.gateway import GatewayService, GatewaySettings
from services.notifier import Notifier, NotifierSettings
from services.scheduler import Scheduler, SchedulerSettings
from services.statistics import Statistics, StatisticsSettings
from services.storage import Storage, StorageSettings
from services.transcoder import Transcoder, TranscoderSettings
from shared import config
from shared.blobs.store import LocalBlobStore
from shared.config import CommonSettings
from shared.nats.client import connect_with
from shared.nats.subjects import Names
from shared.runtime import Service
from tests.harness.environment import Configured

SERVICES = ("scheduler", "storage", "statistics", "notifier", "transcoder", "gateway")


@dataclass
class System(Configured):
    """Every vidmesh service running in this process, in one namespace."""

    env: dict[str, str]
    nc: NATS
    services: dict[str, Service] = field(default_factory=dict)
    url: str = ""

    @property
    def blobs(self) -> LocalBlobStore:
        return LocalBlobStore(self.data_dir / "blobs")

    @property
    def gateway(self) -> GatewayService:
        service = self.services["gateway"]
        assert isinstance(service, GatewayService)
        return service

    @property
    def scheduler(self) -> Scheduler:
        service = self.services["scheduler"]
        assert isinstance(service, Scheduler)
        return service

    async def start(self, *only: str) -> System:
        for name in only or SERVICES:
            service = build_service(name, self.nc, self.env)
            await service.start()
            self.services[name] = service
        if "gateway" in self.services:
            self.url = self.gateway.url
        return self

    async def stop(self, *only: str) -> None:
        for name in only or list(reversed(list(self.services))):
            service = self.services.pop(name, None)
            if service is not None:
                await service.shutdown()


def build_service(name: str, nc: NATS, env: dict[str, str]) -> Service:
    """The service called `name`, with its settings read from `env`, not started."""
    if name == "gateway":
        return GatewayService(nc, config.load(GatewaySettings, env))
    if name == "scheduler":
        return Scheduler(nc, config.load(SchedulerSettings, env))
    if name == "transcoder":
        return Transcoder(nc, config.load(TranscoderSettings, env))
    if name == "storage":
        return Storage(nc, config.load(StorageSettings, env))
    if name == "notifier":
        return Notifier(nc, config.load(NotifierSettings, env))
    return Statistics(nc, config.load(StatisticsSettings, env))


async def start_system(env: dict[str, str], *only: str) -> System:
    """Connect to NATS and start the services named (all of them when none is)."""
    nc = await connect_with(config.load(CommonSettings, env), "vidmesh-test")
    return await System(env=env, nc=nc).start(*only)


async def stop_system(system: System) -> None:
    """Stop the services, drop the namespace, close NATS; a step stuck for 30 s fails the test
    with every task's stack."""
    for step, action in (
        ("stop services", system.stop),
        ("drop namespace", lambda: drop_namespace(system.nc, system.names)),
        ("close NATS", system.nc.close),
    ):
        try:
            await asyncio.wait_for(action(), 30)
        except TimeoutError:
            out = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(file=out)
            raise AssertionError(
                f"stop_system stuck at {step}:\n{out.getvalue()[-20000:]}"
            ) from None


async def drop_namespace(nc: NATS, names: Names) -> None:
    """Delete a test's streams and buckets, so the shared server stays small."""
    js = nc.jetstream()
    for stream in names.all_streams():
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
