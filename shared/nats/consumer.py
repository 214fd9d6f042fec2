"""The consumer kit: bounded intake from a durable pull consumer, and the one shape of a handler.

N slot loops each fetch a message when they are free (N is what the service can run at once;
nothing waits in a buffer while its ack_wait runs); a consumer of quick messages (commands,
events) may let each slot fetch a few at once (`batch`), handled one after another, so a busy
stream costs fewer pull requests and their acks go out together. The kit decodes each message
with the consumer's msgspec Decoder, binds the ids it carries to the log context, and hands the
handler a typed `Received`; the handler returns a `Settle` and never acknowledges anything itself.
`settle()` is the one place that acks, naks or terminates:

- a message that does not decode is poison: terminated, with one error line;
- an error that says it is not retryable (`shared.errors`) is terminated with one error line;
- any other error is retried with backoff, until the consumer's attempt cap (if it has one):
  then it is terminated with one error line; a message the consumer exempts from its cap
  (`uncapped`: one that must never be dropped, such as a job's submission) is retried until
  its handler succeeds;
- a handler cancelled by a shutdown hands its message back at once (`CancelledError` never acks).

A consumer given a live `policy` (the processing settings group) follows it while it runs: its
attempt cap (a capped consumer's), the base of its retry backoff, and its ack wait (the consumer
is declared again with the new one).

Every handled message gets one info line: outcome, attempt, duration and its ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from structlog.contextvars import bound_contextvars

from shared.nats.handler import (
    ABANDON,
    ACK,
    HAND_BACK,
    RETRY,
    TERM,
    Handler,
    Outcome,
    Received,
    RetryPolicy,
    Settle,
    backoff,
    ids_of,
    retryable,
    settle,
)
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.consumer")

T = TypeVar("T")

# Seconds a slot waits for the further messages of a batch the consumer said were waiting.
_MORE_TIMEOUT = 0.05

# The handler's contract, for the services that import it with the kit.
__all__ = [
    "ABANDON",
    "ACK",
    "HAND_BACK",
    "RETRY",
    "TERM",
    "Consumer",
    "Handler",
    "Outcome",
    "Received",
    "RetryPolicy",
    "Settle",
    "SlotLoops",
    "backoff",
    "ids_of",
    "retryable",
    "settle",
]


@functools.cache
def _tagging(decoded: Any) -> tuple[str, frozenset[str]]:
    """The tag field of a decoder's type and the tags it knows."""
    field, tags = "type", set()
    for cls in typing.get_args(decoded) or (decoded,):
        info = msgspec.inspect.type_info(cls)
        if isinstance(info, msgspec.inspect.StructType) and info.tag is not None:
            field = str(info.tag_field)
            tags.add(str(info.tag))
    return field, frozenset(tags)


@dataclass(slots=True)
class Consumer(Generic[T]):
    """A durable pull consumer declared by its owning service, with what its handler gets.

    `family` names its messages in log lines (`command.poison`, `event.handled`...);
    `max_attempts` caps the deliveries of a message whose handler keeps failing (None: no cap);
    `uncapped` says which messages the cap never applies to (their loss would lose what a client
    was told is accepted: they are retried with backoff until handled);
    `skip_unknown` acks a message whose tag this version does not know (events: newer producers
    may add some) instead of treating it as poison;
    `policy` gives the retry policy in force now (read at each message), where an operator may
    change it while the service runs.
    """

    stream: str
    config: ConsumerConfig
    decoder: msgspec.json.Decoder[T]
    family: str
    max_attempts: int | None = None
    skip_unknown: bool = False
    uncapped: Callable[[T], bool] | None = None
    policy: Callable[[], RetryPolicy] | None = None
    # The ack wait the service declared, while the policy's replaces it.
    _declared_ack_wait: float | None = None

    @classmethod
    def durable(
        cls,
        stream: str,
        name: str,
        subjects: str,
        decoder: msgspec.json.Decoder[T],
        *,
        family: str,
        ack_wait: float,
        max_ack_pending: int = 1000,
        max_attempts: int | None = None,
        skip_unknown: bool = False,
        uncapped: Callable[[T], bool] | None = None,
        policy: Callable[[], RetryPolicy] | None = None,
    ) -> Consumer[T]:
        """Explicit acks, from the start of the stream, and never given up on by JetStream:
        the kit counts attempts (`max_attempts`) and settles every message itself."""
        config = ConsumerConfig(
            durable_name=name,
            filter_subject=subjects,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
        )
        return cls(stream, config, decoder, family, max_attempts, skip_unknown, uncapped, policy)

    def retry_policy(self) -> RetryPolicy:
        """The retry policy in force now (fields left None: the consumer's own)."""
        return self.policy() if self.policy is not None else RetryPolicy()

    def cap_for(self, message: T) -> int | None:
        """How many deliveries `message` gets (None: as many as it takes); the policy's attempts
        replace the cap of a consumer that has one."""
        if self.uncapped is not None and self.uncapped(message):
            return None
        if self.max_attempts is None:
            return None
        return self.retry_policy().attempts or self.max_attempts

    def retry_delay(self, attempt: int) -> float | None:
        """Seconds before a failed message is delivered again (None: the kit's backoff)."""
        base = self.retry_policy().backoff_seconds
        return None if base is None else backoff(attempt, base=base, cap=base + 60.0)

    async def follow_ack_wait(self, js: JetStreamContext) -> None:
        """Declare the consumer again when the policy's ack wait differs from its own (JetStream
        applies it to the deliveries that follow)."""
        wanted = self.retry_policy().ack_wait or self._declared_ack_wait
        if wanted is None or wanted == self.config.ack_wait:
            return
        if self._declared_ack_wait is None:
            self._declared_ack_wait = self.config.ack_wait
        self.config = self.config.evolve(ack_wait=wanted)
        await self.declare(js)
        log.info("consumer.ack_wait_changed", consumer=self.config.durable_name, ack_wait=wanted)

    async def open(
        self,
        js: JetStreamContext,
        name: str,
        handler: Handler[T],
        *,
        slots: int = 1,
        batch: int = 1,
    ) -> SlotLoops[T]:
        """Declare the consumer, bind to it, and start `slots` loops handling its messages, each
        fetching up to `batch` at a time."""
        await self.declare(js)
        sub = await self.subscribe(js)
        loops = SlotLoops(self, name, sub, handler, slots=slots, batch=batch, js=js)
        loops.start()
        return loops

    async def declare(self, js: JetStreamContext) -> None:
        await js.add_consumer(self.stream, config=self.config)

    async def subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        assert self.config.durable_name is not None
        return await js.pull_subscribe_bind(durable=self.config.durable_name, stream=self.stream)

    def is_unknown_kind(self, data: bytes) -> bool:
        """Whether `data` is a well-formed message of a kind (tag) this version does not know."""
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return False
        if not isinstance(raw, dict):
            return False
        decoded: Any = self.decoder.type
        field, known = _tagging(decoded)
        tag = raw.get(field)
        return isinstance(tag, str) and tag not in known


class SlotLoops(Generic[T]):
    """Run `slots` loops that each fetch up to `batch` messages, handle and settle each, and
    repeat."""

    def __init__(
        self,
        consumer: Consumer[T],
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
        self.busy += 1
        self._idle.clear()
        try:
            await self._handle_one(msg)
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
