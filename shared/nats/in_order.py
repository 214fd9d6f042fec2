"""Folding a stream in order, a batch at a time: for a consumer whose handler keeps a running
result (totals, a history) that remembers the last stream sequence it took in.

One loop fetches what waits (up to `batch` messages), decodes them as the consumer kit does
(poison, unknown kinds and messages past their cap are logged and passed over), and hands the
rest to the fold together, in stream order; the fold stores its result once for the whole batch,
then one acknowledgement of the batch's last message settles all of it (the consumer acks all
up to a message). So a busy stream costs one write and one ack per batch instead of one each
per message, and the order holds: nothing of a batch is acknowledged before its result is
stored, and a batch that fails is held here for its backoff and then handed back whole, so
JetStream delivers it again before anything after it (max_ack_pending is the batch, and
redeliveries come first). Replicas sharing the consumer fold one at a time: only the holder of
a lead (`shared.nats.lead`) fetches. A fold that keeps failing on a batch of several is tried
one message at a time until past that batch, so the one that fails meets its attempt cap alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from shared.nats.consumer import Consumer
from shared.nats.handler import ACK, HAND_BACK, Received, Settle, backoff, retryable, settle
from shared.nats.lead import Lead
from shared.nats.slots import SlotLoops
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.consumer")

T = TypeVar("T")

Fold = Callable[[list[Received[T]]], Awaitable[None]]

# Seconds a failed batch is held at most before it is handed back (inside any ack wait).
_MAX_HOLD = 10.0


async def open_in_order(
    consumer: Consumer[T],
    js: JetStreamContext,
    name: str,
    fold: Fold[T],
    *,
    batch: int,
    replaces: Sequence[str] = (),
    lead: Lead | None = None,
) -> InOrderLoops[T]:
    """Declare `consumer` to ack all up to a message, with `batch` messages pending at most;
    bind to it, and start folding, while this process holds `lead` where replicas share the
    consumer. `replaces` names durable consumers of the same stream whose folds this one now
    makes (see `declare_ack_all`)."""
    await declare_ack_all(consumer, js, batch, replaces=replaces)
    sub = await consumer.subscribe(js)
    loops = InOrderLoops(consumer, name, sub, fold, batch=batch, js=js, lead=lead)
    loops.start()
    return loops


async def declare_ack_all(
    consumer: Consumer[T], js: JetStreamContext, batch: int, *, replaces: Sequence[str] = ()
) -> None:
    """Declare the consumer with AckPolicy.ALL. A consumer that exists keeps where it starts
    from. One declared before with explicit acks (its ack policy cannot be changed in place),
    or one that takes over the folds of the consumers `replaces` names, is declared again from
    the first message that one of them had not acknowledged, and those are deleted: its folds
    remember what they took in, so what one of them had folded already changes nothing."""
    config = consumer.config.evolve(ack_policy=AckPolicy.ALL, max_ack_pending=batch)
    assert config.durable_name is not None
    found = {
        name: await _info(js, consumer.stream, name) for name in (config.durable_name, *replaces)
    }
    existing = {name: info for name, info in found.items() if info is not None}
    own = existing.get(config.durable_name)
    if own is not None and own.config.ack_policy == AckPolicy.ALL and len(existing) == 1:
        config = config.evolve(
            deliver_policy=own.config.deliver_policy, opt_start_seq=own.config.opt_start_seq
        )
    elif existing:
        start = min(_acked(info) for info in existing.values()) + 1
        for name in existing:
            await js.delete_consumer(consumer.stream, name)
        config = config.evolve(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        log.info(
            "consumer.now_acks_all",
            consumer=config.durable_name,
            from_seq=start,
            replaced=list(existing),
        )
    consumer.config = config
    await consumer.declare(js)


async def _info(js: JetStreamContext, stream: str, name: str) -> ConsumerInfo | None:
    try:
        info: ConsumerInfo = await js.consumer_info(stream, name)
    except NotFoundError:
        return None
    return info


def _acked(info: ConsumerInfo) -> int:
    """The stream sequence up to which the consumer had acknowledged everything."""
    return (info.ack_floor.stream_seq if info.ack_floor else 0) or 0


class InOrderLoops(SlotLoops[T]):
    """One slot loop whose fetched messages are folded together (see the module)."""

    def __init__(
        self,
        consumer: Consumer[T],
        name: str,
        sub: JetStreamContext.PullSubscription,
        fold: Fold[T],
        *,
        batch: int,
        js: JetStreamContext | None = None,
        lead: Lead | None = None,
    ) -> None:
        super().__init__(consumer, name, sub, _unused, slots=1, batch=batch, js=js)
        self.fold = fold
        self.lead = lead
        self._leading = False  # holding the lead, and nothing left out with an earlier holder
        self._outstanding_until: float | None = None
        self._declared = consumer  # as declared (the loops see it through a protocol)
        self._full_batch = batch
        # One message at a time until past this stream sequence (a batch that kept failing).
        self._alone_until = 0

    async def _may_fetch(self) -> bool:
        """Only the holder of the lead folds: two replicas folding batches side by side would
        each skip what the other folded later, and one's ack would settle the other's batch."""
        lead = self.lead
        if lead is None or (lead.held and self._leading):
            return True
        if lead.held:
            # Just taken: what the last holder fetched and never settled is delivered again
            # once its ack wait ends, before anything after it; folding what comes after it
            # first would skip it, and this holder's ack would settle it unfolded.
            self._leading = await self._nothing_outstanding()
            return False
        self._leading = False
        lead.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.fetch_timeout):
                await lead.changed.wait()
        return False

    async def _nothing_outstanding(self) -> bool:
        """Whether no message is out with an earlier holder, or its ack wait has passed since
        this holder found it so (they come first then); else wait a while (False)."""
        now = time.monotonic()
        if self._outstanding_until is None:
            assert self.js is not None  # open_in_order gives it
            try:
                info = await self.js.consumer_info(self._declared.stream, self._declared.name)
            except Exception:
                await asyncio.sleep(1.0)
                return False
            if not info.num_ack_pending:
                return True
            ack_wait = self._declared.config.ack_wait or 30.0
            self._outstanding_until = now + ack_wait
            log.info("lead.waits_for_outstanding", consumer=self.name, s=ack_wait)
        if now >= self._outstanding_until:
            self._outstanding_until = None
            return True
        await asyncio.sleep(min(1.0, self._outstanding_until - now))
        return False

    async def _handle_fetched(self, msgs: list[Msg]) -> None:
        if self._stopping.is_set():
            await self._hand_back_on_stop(msgs)
            return
        with self._busy():
            await self._fold_batch(sorted(msgs, key=lambda msg: msg.metadata.sequence.stream))

    async def _fold_batch(self, msgs: list[Msg]) -> None:
        started = time.monotonic()
        taken = [
            received for received in map(self._decoded, msgs) if isinstance(received, Received)
        ]
        last = msgs[-1].metadata.sequence.stream
        attempt = max((received.attempt for received in taken), default=1)
        where = {"consumer": self.name, "attempt": attempt, "messages": len(msgs), "seq": last}
        try:
            if taken:
                await self.fold(taken)
        except asyncio.CancelledError:
            await asyncio.shield(self._hand_back(msgs))
            if self._cancelling:
                self.cancelled += len(msgs)
            raise
        except Exception as exc:
            await self._failed(msgs, taken, exc, attempt, where)
            return
        if self.lead is not None and not self.lead.held:
            # lost the lead while folding: the next holder folds the batch again (what this
            # one stored of it changes nothing the second time), so it is not acknowledged
            await self._hand_back(msgs)
            return
        # the last acknowledges all before it (what was passed over too)
        await self._settle(msgs[-1], ACK)
        self.handled += len(msgs) - 1
        if last >= self._alone_until:
            self.batch = self._full_batch
        log.info(
            f"{self.family}.handled",
            outcome=ACK.outcome.value,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            **where,
        )

    async def _failed(
        self,
        msgs: list[Msg],
        taken: list[Received[T]],
        exc: Exception,
        attempt: int,
        where: dict[str, object],
    ) -> None:
        if len(msgs) == 1:
            cap = self.consumer.cap_for(taken[0].message)
            if not retryable(exc) or (cap is not None and attempt >= cap):
                log.error(f"{self.family}.gave_up", attempts_allowed=cap, **where, **describe(exc))
                await self._settle(msgs[0], ACK)  # never again; what follows goes on
                return
        elif not retryable(exc) or attempt >= 2:
            # find the one that fails: one at a time until past this batch
            self._alone_until = max(self._alone_until, msgs[-1].metadata.sequence.stream)
            self.batch = 1
        log.warning(f"{self.family}.failed", exc_info=True, **where, **describe(exc))
        base = self.consumer.retry_policy().backoff_seconds or 1.0
        await asyncio.sleep(min(_MAX_HOLD, backoff(attempt, base=base)))
        for msg in msgs:  # delivered again at once, before what follows
            with contextlib.suppress(Exception):
                await settle(msg, HAND_BACK)


async def _unused(received: Received[Any]) -> Settle:  # pragma: no cover
    raise AssertionError("an in-order fold takes its messages together")
