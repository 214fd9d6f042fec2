"""What every service process shares: a lifecycle with one stop order, and the entry-point loop
around it.

A service offers `start()` (returns once it is ready), `shutdown()` (idempotent, waits), and
`async with`. SIGTERM and SIGINT only set an event; the entry point then shuts the service down,
drains the NATS connection as the last step of that shutdown, and the summary line comes after.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import structlog
from nats.aio.client import Client as NATS

from shared import config
from shared import logging as vlog
from shared.config import CommonSettings, masked
from shared.metrics import MetricsServer
from shared.nats.client import connect_with
from shared.nats.topology import describe

if TYPE_CHECKING:
    from shared.nats.consumer import SlotLoops

log = structlog.get_logger("vidmesh.runtime")

# Seconds in-flight messages may finish on shutdown when a service names no grace of its own
# (services take theirs from `stop_grace_seconds`).
DEFAULT_GRACE = 5.0
# Seconds cancelled handlers get to hand their messages back before the stop goes on without them,
# when a service names no deadline of its own (services take theirs from `stop_deadline_seconds`).
DEFAULT_DEADLINE = 5.0

S = TypeVar("S", bound=CommonSettings)


class Service:
    """Base of every long-running service.

    A subclass starts its consumers in `start()` and registers them with `consume()`; the base
    stops them in order on `shutdown()`: stop fetching (heartbeats of running work go on), let
    in-flight messages finish for one grace period (`grace`, from the settings), cancel what is
    left under a hard deadline (`deadline`, from the settings; the kit hands each cancelled
    message back), stop listening; then `stop()` closes what the subclass opened, the entry point's
    `drain` (the NATS connection) runs, and one summary line says how it went: the last line, and
    written even when a step before it raised.
    """

    name = "service"
    # Whether, after the grace, to wait for slots still in a fetch (`fetch_timeout`) so that
    # what such a fetch brings is handed back now, not after its ack_wait: worth it for long
    # ack_waits (the transcoder's work), not for every stop of every service.
    wait_for_last_fetch = False

    def __init__(self, *, grace: float = DEFAULT_GRACE, deadline: float = DEFAULT_DEADLINE) -> None:
        self.grace = grace
        self.deadline = deadline
        self.consumers: list[SlotLoops[Any]] = []
        self._shutdown_started = False
        self._shutdown_done = asyncio.Event()
        self.started_at = time.time()

    async def start(self) -> None:
        raise NotImplementedError

    def consume(self, loops: SlotLoops[Any]) -> None:
        """Have `shutdown()` stop these slot loops in order."""
        self.consumers.append(loops)

    def stopping(self) -> None:
        """Called first on shutdown, before fetching stops (override: say that it drains)."""

    async def stop(self) -> None:
        """Close what the service opened, once its consumers have stopped (override)."""

    def ready(self) -> bool:
        """Whether the service does its job now (override for more than "started")."""
        return True

    async def shutdown(self, *, drain: Callable[[], Awaitable[object]] | None = None) -> None:
        """Idempotent; every caller returns once the service has stopped. `drain` (the entry
        point's: drain the NATS connection) runs last, before the summary line; a step that
        raises is logged in the summary and raised after it."""
        if self._shutdown_started:
            await self._shutdown_done.wait()
            return
        self._shutdown_started = True
        in_time, cancelled = True, 0
        failure: BaseException | None = None
        try:
            self.stopping()
            in_time, cancelled = await self._stop_consumers()
            await self.stop()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                if drain is not None:
                    await drain()
            finally:
                self._shutdown_done.set()
                log.info(
                    "service.stopped",
                    service=self.name,
                    handled=sum(c.handled for c in self.consumers),
                    handed_back=sum(c.handed_back for c in self.consumers),
                    cancelled=cancelled,
                    finished_in_time=in_time,
                    grace_s=self.grace,
                    deadline_s=self.deadline,
                    uptime_s=round(time.time() - self.started_at, 1),
                    **({} if failure is None else {"stop_failed": True, **describe(failure)}),
                )

    async def _stop_consumers(self) -> tuple[bool, int]:
        """Stop fetching, wait the grace, cancel under the deadline, stop listening: whether the
        in-flight work finished within the grace, and how many handlers were cancelled."""
        for loops in self.consumers:
            loops.stop_fetching()
        until = time.monotonic() + self.grace
        in_time = True
        for loops in self.consumers:
            in_time = await loops.wait_idle(max(0.0, until - time.monotonic())) and in_time
        if self.wait_for_last_fetch and self.grace > 0:
            for loops in self.consumers:
                await loops.wait_stopped(loops.fetch_timeout + 0.5)
        cancelled = 0
        for loops in self.consumers:
            cancelled += await loops.cancel(self.deadline)
        for loops in self.consumers:
            await loops.close()
        return in_time, cancelled

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
    """Connect, start the service, wait for SIGTERM/SIGINT, shut down, drain; the service's
    summary line (service.stopped) comes last."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    log.info("service.starting", service=name, settings=masked(settings))
    metrics = MetricsServer(settings.metrics_port) if settings.metrics_port else None
    if metrics is not None:
        await metrics.start()  # alive from here; ready once the service is
    nc = await connect_with(settings, f"vidmesh-{name}")

    async def drain() -> None:
        if metrics is not None:
            await metrics.stop()
        # A drain speaks only on failure: the summary line stays the last.
        try:
            await asyncio.wait_for(nc.drain(), 10)
        except Exception as exc:
            log.warning("service.drain_failed", service=name, **describe(exc))

    started: Service | None = None
    try:
        service = await build(nc)
        await service.start()
        started = service
        settle_garbage_collector()
        if metrics is not None:
            metrics.ready = lambda: nc.is_connected and service.ready()
        log.info("service.ready", service=name)
        await stop.wait()
        log.info("service.stopping", service=name)
        if metrics is not None:
            metrics.ready = lambda: False
    finally:
        if started is not None:
            await started.shutdown(drain=drain)
        else:
            await drain()


def main(settings: CommonSettings, name: str, build: Callable[[NATS], Awaitable[Service]]) -> None:
    """Entry point body for `python -m services.<name>` and `vidmesh <name>`."""
    vlog.configure(settings.log_level, settings.log_format, service=name)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, name, build))


# Allocations between two collections of the youngest generation (Python's default is 700): a
# service allocates and frees many small objects per message, and each collection costs a pause.
GC_YOUNG_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """Once started: what the service holds for good (modules, settings, the records loaded so
    far) leaves the collector's generations (`gc.freeze`), so a full collection walks only what
    came since, and the youngest generation is collected less often. A full collection of a
    gateway holding 20,000 jobs paused it for up to 94 ms, which every request in flight waited
    out."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


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
