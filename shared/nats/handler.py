"""The shape of a handler: what the consumer kit hands it (`Received`, a decoded message with
its delivery's facts), what it returns (`Settle`), and how a settlement and an exception map onto
JetStream's acknowledgements (`settle`, `retryable`)."""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
from nats.aio.msg import Msg

from shared.errors import VidmeshError

T = TypeVar("T")


class Outcome(enum.Enum):
    ACK = "ack"  # done (or nothing left to do): remove from the stream
    RETRY = "retry"  # failed in a way that may pass: redeliver after a backoff
    HAND_BACK = "hand_back"  # not ours to finish (shutting down): redeliver now
    TERM = "term"  # poison: never redeliver
    ABANDON = "abandon"  # another holder owns the work now: leave the message to it


@dataclass(frozen=True, slots=True)
class Settle:
    """What a handler decided about its message; `delay` spaces a retry (None: the backoff)."""

    outcome: Outcome
    delay: float | None = None


ACK = Settle(Outcome.ACK)
RETRY = Settle(Outcome.RETRY)
TERM = Settle(Outcome.TERM)
ABANDON = Settle(Outcome.ABANDON)
HAND_BACK = Settle(Outcome.HAND_BACK)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a running consumer retries, as the operator set it (None: the consumer's own)."""

    attempts: int | None = None
    backoff_seconds: float | None = None
    ack_wait: float | None = None


def backoff(num_delivered: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds before redelivery after `num_delivered` failed attempts."""
    return float(min(cap, base * 2 ** max(0, num_delivered - 1)))


async def settle(msg: Msg, decided: Settle) -> None:
    """Map a handler's decision onto the JetStream acknowledgement."""
    outcome = decided.outcome
    if outcome is Outcome.ABANDON:
        return
    if outcome is Outcome.ACK:
        await msg.ack()
    elif outcome is Outcome.TERM:
        await msg.term()
    elif outcome is Outcome.HAND_BACK:
        await msg.nak()
    else:
        delay = decided.delay
        if delay is None:
            delay = backoff(msg.metadata.num_delivered or 1)
        await msg.nak(delay=delay)


def retryable(exc: BaseException) -> bool:
    """Whether trying again may help: what the error says of itself (`retryable_now` on errors
    that know it per case, `retryable` on the others of `shared.errors`); other exceptions
    (a NATS timeout, a lost connection) may pass."""
    now = getattr(exc, "retryable_now", None)
    if isinstance(now, bool):
        return now
    if isinstance(exc, VidmeshError):
        return exc.retryable
    return True


@dataclass(frozen=True, slots=True)
class Received(Generic[T]):
    """A decoded message as a handler sees it: settling it is the kit's."""

    message: T
    subject: str
    # The stream sequence (a message's identity in its stream) and which delivery this is.
    seq: int
    attempt: int
    _msg: Msg

    @property
    def ack_subject(self) -> str:
        """The subject that acknowledges this delivery (a successor may nak it for a dead one)."""
        return self._msg.reply

    async def in_progress(self) -> None:
        """Tell JetStream the work is alive (resets ack_wait): the heartbeat of long work."""
        await self._msg.in_progress()


Handler = Callable[[Received[T]], Awaitable[Settle]]

# Message fields that identify what a message is about, and their name in the log context.
_ID_FIELDS = {
    "job_id": "job_id",
    "key": "rendition",
    "generation": "generation",
    "subscription_id": "subscription_id",
    "delivery_id": "delivery_id",
    "batch_id": "batch_id",
    "worker_id": "worker_id",
    "pool_id": "pool_id",
    "command_id": "command_id",
    "event_id": "event_id",
    "request_id": "request_id",
}


@functools.cache
def _tag_of(cls: type) -> str | None:
    info = msgspec.inspect.type_info(cls)
    if isinstance(info, msgspec.inspect.StructType) and info.tag is not None:
        return str(info.tag)
    return None


def ids_of(message: object) -> dict[str, Any]:
    """The ids a message carries (job id, rendition key, subscription id, command id...) and its
    tag, for the log context."""
    ids: dict[str, Any] = {}
    tag = _tag_of(type(message)) if isinstance(message, msgspec.Struct) else None
    if tag is not None:
        ids["tag"] = tag
    for field in getattr(type(message), "__struct_fields__", ()):
        name = _ID_FIELDS.get(field)
        value = getattr(message, field, None)
        if name is not None and isinstance(value, str | int) and value not in ("", None):
            ids[name] = value
    return ids
