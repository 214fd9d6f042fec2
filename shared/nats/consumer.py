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

import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

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
from shared.nats.slots import SlotLoops

log = structlog.get_logger("vidmesh.consumer")

T = TypeVar("T")

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

    @property
    def name(self) -> str:
        """The durable consumer's name."""
        assert self.config.durable_name is not None
        return self.config.durable_name

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
