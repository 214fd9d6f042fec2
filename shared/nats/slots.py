"""The consumer kit's slot loops: each fetches what waits (one message, or a few for a consumer
of quick messages), has it decoded and handled, and settles it; they stop in order on shutdown
(see `shared.nats.consumer` for the handler's contract)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from structlog.contextvars import bound_contextvars

from shared.nats.handler import (
    ACK,
    HAND_BACK,
    RETRY,
    TERM,
    Handler,
    Outcome,
    Received,
    RetryPolicy,
    Settle,
    ids_of,
    retryable,
    settle,
)
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.consumer")

T = TypeVar("T")

# Seconds a slot waits for the further messages of a batch the consumer said were waiting.
_MORE_TIMEOUT = 0.05


class Declared(Protocol[T]):
    """What the loops need of the consumer they run (a `shared.nats.consumer.Consumer`)."""

    family: str
    decoder: msgspec.json.Decoder[T]
    skip_unknown: bool
    policy: Callable[[], RetryPolicy] | None

    def cap_for(self, message: T) -> int | None: ...

    def retry_delay(self, attempt: int) -> float | None: ...

    def retry_policy(self) -> RetryPolicy: ...

    def is_unknown_kind(self, data: bytes) -> bool: ...

    async def follow_ack_wait(self, js: JetStreamContext) -> None: ...


class SlotLoops(Generic[T]):
    """Run `slots` loops that each fetch up to `batch` messages, handle and settle each, and
    repeat."""

    def __init__(
        self,
        consumer: Declared[T],
        name: str,
        sub: JetStreamContext.PullSubscription,
        handler: Handler[T],
        *,
        slots: int = 1,
        batch: int = 1,
        fetch_timeout: float = 2.0,
        js: JetStreamContext | None = None,
    ) -> None:
        self.consumer = consumer
        self.family = consumer.family
        self.name = name
        self.sub = sub
        # Where the consumer is declared again when its policy's ack wait changes (slot 0 looks).
        self.js = js
        self.handler = handler
        self.slots = slots
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.busy = 0
        # What the stop summary reports: messages settled, handed back on stop, cancelled.
        self.handled = 0
        self.handed_back = 0
        self.cancelled = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._cancelling = False
        self._tasks: list[asyncio.Task[None]] = []
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
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
        return self.busy == 0

    async def wait_stopped(self, timeout: float) -> None:
        """After `stop_fetching`, wait (bounded) for the slots to leave their loops: a slot waiting
        on a fetch returns within `fetch_timeout` and hands back what that fetch brings, where
        cancelling it would leave such a message unacknowledged until ack_wait."""
        pending = [task for task in self._tasks if not task.done()]
        if pending and timeout > 0:
            await asyncio.wait(pending, timeout=timeout)

    async def cancel(self, deadline: float) -> int:
        """Cancel the slots (and what they are handling: its message is handed back); wait for
        them at most `deadline` seconds. Returns how many handlers were cancelled."""
        self.stop_fetching()
        self._cancelling = True
        cancelled = self.busy
        pending = {task for task in self._tasks if not task.done()}
        waited_until = time.monotonic() + deadline
        while pending:
            for task in pending:
                task.cancel()  # again, should one have swallowed it (3.11)
            left = waited_until - time.monotonic()
            if left <= 0:
                log.warning(
                    "consumer.cancel_overran",
                    consumer=self.name,
                    tasks=[task.get_name() for task in pending],
                )
                break
            _, pending = await asyncio.wait(pending, timeout=min(1.0, left))
        self._tasks = [task for task in self._tasks if not task.done()]
        return cancelled

    async def close(self) -> None:
        """Stop listening: every message is settled by now."""
        self.stop_fetching()
        # A late "request expired" reply left in the subscription's queue would otherwise keep
        # nc.drain() waiting forever (nats-py 2.16).
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()

    async def _slot(self, index: int) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            if index == 0 and self.js is not None and self.consumer.policy is not None:
                await self._follow_policy(self.js)
            if not await self._may_fetch():
                continue
            try:
                msgs = await self.sub.fetch(1, timeout=self.fetch_timeout)
                if self.batch > 1:
                    msgs += await self._more(msgs[-1])
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
            await self._handle_fetched(msgs)

    async def _handle_fetched(self, msgs: list[Msg]) -> None:
        """Handle and settle what one fetch brought, one after another."""
        for n, msg in enumerate(msgs):
            if self._stopping.is_set():  # arrived on a fetch made before the stop: not ours
                await self._hand_back_on_stop(msgs[n:])
                return
            try:
                await self._handle(msg)
            except asyncio.CancelledError:
                # the rest of the batch goes back now, not after its ack wait
                await asyncio.shield(self._hand_back(msgs[n + 1 :]))
                raise

    async def _hand_back_on_stop(self, msgs: list[Msg]) -> None:
        await self._hand_back(msgs)
        log.info("consumer.handed_back_on_stop", consumer=self.name, messages=len(msgs))

    async def _hand_back(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.nak()
        self.handed_back += len(msgs)

    async def _may_fetch(self) -> bool:
        """Whether to fetch now (a loop that must wait its turn says no, after a while)."""
        return True

    async def _more(self, last: Msg) -> list[Msg]:
        """Up to `batch - 1` more messages, when the consumer says more wait after `last`.

        Asked without waiting: a fetch of several that waits for them keeps its caller until
        all arrive or its timeout ends (nats-py), so a lone message would wait that long."""
        waiting = last.metadata.num_pending or 0
        if waiting <= 0:
            return []
        try:
            return await self.sub.fetch(min(self.batch - 1, waiting), timeout=_MORE_TIMEOUT)
        except (TimeoutError, nats.errors.TimeoutError):
            return []  # another slot took them

    async def _follow_policy(self, js: JetStreamContext) -> None:
        try:
            await self.consumer.follow_ack_wait(js)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next fetch cycle tries again
            log.warning("consumer.redeclare_failed", consumer=self.name, **describe(exc))

    async def _handle(self, msg: Msg) -> None:
        with self._busy():
            await self._handle_one(msg)

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """Counts as handling (`wait_idle` waits for it) while the block runs."""
        self.busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.busy -= 1
            if self.busy == 0:
                self._idle.set()

    def _decoded(self, msg: Msg) -> Received[T] | Settle:
        """The message decoded for its handler, or how to settle it without one: poison
        (terminated), a kind this version does not know (acknowledged, where the consumer skips
        those), or delivered past its attempt cap (terminated); each said in one log line."""
        attempt = msg.metadata.num_delivered or 1
        seq = msg.metadata.sequence.stream
        where = {"consumer": self.name, "attempt": attempt}
        try:
            message = self.consumer.decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            if self.consumer.skip_unknown and self.consumer.is_unknown_kind(msg.data):
                log.debug(f"{self.family}.skipped_unknown", subject=msg.subject, **where)
                return ACK
            log.error(
                f"{self.family}.poison", subject=msg.subject, seq=seq, error=str(exc), **where
            )
            return TERM
        cap = self.consumer.cap_for(message)
        if cap is not None and attempt > cap:
            # Delivered past the cap without failing in a handler: its handling kills or
            # hangs the process every time. Never again.
            ids = ids_of(message)
            log.error(f"{self.family}.gave_up", seq=seq, attempts_allowed=cap, **where, **ids)
            return TERM
        return Received(message, msg.subject, seq, attempt, msg)

    async def _handle_one(self, msg: Msg) -> None:
        started = time.monotonic()
        received = self._decoded(msg)
        if isinstance(received, Settle):
            await self._settle(msg, received)
            return
        where = {"consumer": self.name, "attempt": received.attempt}
        ids = ids_of(received.message)
        with bound_contextvars(**ids):
            decided = await self._decide(msg, received)
            await self._settle(msg, decided)
            log.info(
                f"{self.family}.handled",
                outcome=decided.outcome.value,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                **where,
                **ids,
            )

    async def _decide(self, msg: Msg, received: Received[T]) -> Settle:
        """Run the handler; map what it raised onto a settlement."""
        attempt = received.attempt
        where = {"consumer": self.name, "attempt": attempt, "seq": received.seq}
        try:
            return await self.handler(received)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(settle(msg, HAND_BACK))
            self.handed_back += 1
            if self._cancelling:
                self.cancelled += 1
            raise
        except Exception as exc:
            cap = self.consumer.cap_for(received.message)
            if not retryable(exc):
                log.error(f"{self.family}.not_retryable", **where, **describe(exc))
                return TERM
            if cap is not None and attempt >= cap:
                log.error(f"{self.family}.gave_up", attempts_allowed=cap, **where, **describe(exc))
                return TERM
            log.warning(f"{self.family}.failed", exc_info=True, **where, **describe(exc))
            delay = self.consumer.retry_delay(attempt)
            return RETRY if delay is None else Settle(Outcome.RETRY, delay=delay)

    async def _settle(self, msg: Msg, decided: Settle) -> None:
        try:
            await settle(msg, decided)
        except Exception as exc:
            log.warning("consumer.settle_failed", consumer=self.name, **describe(exc))
        self.handled += 1
