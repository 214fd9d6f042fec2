"""What every service process shares: a lifecycle, and the entry-point loop around it.

A service offers `start()` (returns once it is ready), `shutdown()` (idempotent, waits), and
`async with`. SIGTERM and SIGINT only set an event; the entry point then shuts the service down
and drains the NATS connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self, TypeVar

import structlog
from nats.aio.client import Client as NATS

from shared import config
from shared import logging as vlog
from shared.config import CommonSettings, masked
from shared.metrics import MetricsServer
from shared.nats.client import connect_with

log = structlog.get_logger("vidmesh.runtime")

S = TypeVar("S", bound=CommonSettings)


class Service:
    """Base of every long-running service."""

    name = "service"

    def __init__(self) -> None:
        self._shutdown_started = False
        self._shutdown_done = asyncio.Event()
        self.started_at = time.time()

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop intake, finish or hand back in-flight work (override)."""

    def ready(self) -> bool:
        """Whether the service does its job now (override for more than "started")."""
        return True

    async def shutdown(self) -> None:
        """Idempotent; every caller returns once the service has stopped."""
        if self._shutdown_started:
            await self._shutdown_done.wait()
            return
        self._shutdown_started = True
        try:
            await self.stop()
        finally:
            self._shutdown_done.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def serve(
    settings: CommonSettings,
    name: str,
    build: Callable[[NATS], Awaitable[Service]],
) -> None:
    """Connect, start the service, wait for SIGTERM/SIGINT, shut down, drain."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    log.info("service.starting", service=name, settings=masked(settings))
    metrics = MetricsServer(settings.metrics_port) if settings.metrics_port else None
    if metrics is not None:
        await metrics.start()  # alive from here; ready once the service is
    nc = await connect_with(settings, f"vidmesh-{name}")
    started = time.monotonic()
    try:
        service = await build(nc)
        async with service:
            if metrics is not None:
                metrics.ready = lambda: nc.is_connected and service.ready()
            log.info("service.ready", service=name)
            await stop.wait()
            log.info("service.stopping", service=name)
            if metrics is not None:
                metrics.ready = lambda: False
    finally:
        if metrics is not None:
            await metrics.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 10)
        log.info("service.stopped", service=name, uptime_s=round(time.monotonic() - started, 1))


def main(settings: CommonSettings, name: str, build: Callable[[NATS], Awaitable[Service]]) -> None:
    """Entry point body for `python -m services.<name>` and `vidmesh <name>`."""
    vlog.configure(settings.log_level, settings.log_format, service=name)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, name, build))


def run_service(
    name: str,
    settings_type: type[S],
    make: Callable[[NATS, S], Service],
    prepare: Callable[[S], None] | None = None,
) -> None:
    """A service's `__main__`: settings from the environment, `prepare` (before anything
    starts), then `main()`."""
    settings = config.load(settings_type)
    if prepare is not None:
        prepare(settings)

    async def build(nc: NATS) -> Service:
        return make(nc, settings)

    main(settings, name, build)
