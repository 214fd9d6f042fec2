"""Bounded intake from a pull consumer: N slot loops, each fetching one message when it is free.

Handlers return an `Outcome`; `settle()` is the one place that acks, naks or terminates. A handler
that raises is retried with backoff; a shutdown (CancelledError) hands the message back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.nats.topology import describe
from shared.tasks import stop_tasks

log = structlog.get_logger("vidmesh.consumer")


class Outcome(enum.Enum):
    ACK = "ack"  # done (or nothing left to do): remove from the stream
    RETRY = "retry"  # failed in a way that may pass: redeliver after a backoff
    HAND_BACK = "hand_back"  # not ours to finish (shutting down): redeliver now
    TERM = "term"  # poison: never redeliver
    ABANDON = "abandon"  # another holder owns the work now: leave the message to it


def backoff(num_delivered: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds before redelivery after `num_delivered` failed attempts."""
    return float(min(cap, base * 2 ** max(0, num_delivered - 1)))


async def settle(msg: Msg, outcome: Outcome, *, delay: float | None = None) -> None:
    """Map an outcome onto the JetStream acknowledgement."""
    if outcome is Outcome.ABANDON:
        return
    if outcome is Outcome.ACK:
        await msg.ack()
    elif outcome is Outcome.TERM:
        await msg.term()
    elif outcome is Outcome.HAND_BACK:
        await msg.nak()
    else:
        if delay is None:
            delay = backoff(msg.metadata.num_delivered or 1)
        await msg.nak(delay=delay)


Handler = Callable[[Msg], Awaitable[Outcome]]


@dataclass(slots=True)
class Consumer:
    """A durable pull consumer declared by its owning service."""

    stream: str
    config: ConsumerConfig

    @classmethod
    def durable(
        cls,
        stream: str,
        name: str,
        subjects: str,
        *,
        ack_wait: float,
        max_ack_pending: int = 1000,
    ) -> Consumer:
        """Explicit acks, from the start of the stream, and never given up on by JetStream:
        attempts are counted by the handlers, which settle every message themselves."""
        return cls(
            stream,
            ConsumerConfig(
                durable_name=name,
                filter_subject=subjects,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ack_wait,
                max_deliver=-1,
                max_ack_pending=max_ack_pending,
            ),
        )

    async def open(
        self, js: JetStreamContext, name: str, handler: Handler, *, slots: int = 1
    ) -> SlotLoops:
        """Declare the consumer, bind to it, and start `slots` loops handling its messages."""
        await self.declare(js)
        loops = SlotLoops(name, await self.subscribe(js), handler, slots=slots)
        loops.start()
        return loops

    async def declare(self, js: JetStreamContext) -> None:
        await js.add_consumer(self.stream, config=self.config)

    async def subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        assert self.config.durable_name is not None
        return await js.pull_subscribe_bind(durable=self.config.durable_name, stream=self.stream)


class SlotLoops:
    """Run `slots` loops that each fetch one message, handle it, settle it, and repeat."""

    def __init__(
        self,
        name: str,
        sub: JetStreamContext.PullSubscription,
        handler: Handler,
        *,
        slots: int = 1,
        fetch_timeout: float = 2.0,
    ) -> None:
        self.name = name
        self.sub = sub
        self.handler = handler
        self.slots = slots
        self.fetch_timeout = fetch_timeout
        self.busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._handling: set[asyncio.Task[None]] = set()
        self._fetch_failing = False  # in a spell of failed fetches (reported once)

    def start(self) -> None:
        for i in range(self.slots):
            self._tasks.append(asyncio.create_task(self._slot(i), name=f"{self.name}:slot{i}"))

    def stop_fetching(self) -> None:
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        return self.busy

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no message is being handled; False if `timeout` passed first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self.busy == 0

    async def wait_stopped(self, timeout: float) -> None:
        """After `stop_fetching`, wait (bounded) for the slots to leave their loops: a slot waiting
        on a fetch returns within `fetch_timeout` and hands back what that fetch brings, where
        cancelling it would leave such a message unacknowledged until ack_wait."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    async def close(self, grace: float) -> None:
        """Stop fetching, let in-flight messages finish for `grace` seconds, then cancel them."""
        self.stop_fetching()
        await self.wait_idle(grace)
        await stop_tasks(list(self._tasks))  # cancelled again should one swallow it (3.11)
        self._tasks.clear()
        # Every message is settled; a late "request expired" reply left in the subscription's
        # queue would otherwise keep nc.drain() waiting forever (nats-py 2.16).
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()

    async def _slot(self, index: int) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                msgs = await self.sub.fetch(1, timeout=self.fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # While a cluster elects a consumer leader every slot fails: say so once per spell,
                # and keep the pause short so work resumes soon after the election.
                report = log.debug if self._fetch_failing else log.warning
                self._fetch_failing = True
                report("consumer.fetch_failed", consumer=self.name, **describe(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.2
            self._fetch_failing = False
            for msg in msgs:
                if self._stopping.is_set():  # arrived on a fetch made before the stop: not ours
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    log.info("consumer.handed_back_on_stop", consumer=self.name)
                    continue
                await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        self.busy += 1
        self._idle.clear()
        started = time.monotonic()
        try:
            try:
                outcome = await self.handler(msg)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.shield(settle(msg, Outcome.HAND_BACK))
                raise
            except Exception as exc:
                log.exception(
                    "consumer.handler_failed",
                    consumer=self.name,
                    attempt=msg.metadata.num_delivered,
                    **describe(exc),
                )
                outcome = Outcome.RETRY
            try:
                await settle(msg, outcome)
            except Exception as exc:
                log.warning("consumer.settle_failed", consumer=self.name, **describe(exc))
            log.debug(
                "consumer.handled",
                consumer=self.name,
                outcome=outcome.value,
                attempt=msg.metadata.num_delivered,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
        finally:
            self.busy -= 1
            if self.busy == 0:
                self._idle.set()
