"""What the gateway and the notifier share about webhooks: the event catalogue, which events a
subscription receives, the signed request (Standard Webhooks), secrets at rest, and typed access
to the subscription and delivery buckets.

A delivery is a POST of `{"type": <tag>, "timestamp": <event time>, "data": <event>}` with the
headers `webhook-id` (the delivery id, the same on every retry), `webhook-timestamp` (the attempt,
in Unix seconds) and `webhook-signature` ("v1,<base64 HMAC-SHA256 of id.timestamp.body>").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
from cryptography.exceptions import InvalidTag
from nats.js import JetStreamContext
from standardwebhooks import Webhook

from shared.blobs.users import Sealer
from shared.errors import BadRequest
from shared.messages import events
from shared.messages.webhooks import (
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    SubscriptionScope,
    WebhookPing,
    WebhookSubscription,
    WebhookWork,
)
from shared.nats.kv import TypedKV
from shared.nats.subjects import Names
from shared.outbound import Exchange, OutboundClient, OutboundRefused

SECRET_PREFIX = "whsec_"
USER_AGENT = "vidmesh-webhooks/1"
# Seconds a test delivery (sent while its caller waits) may take.
PING_TIMEOUT = 10.0
TEST_TYPE = "webhook.test"
# The latest attempts a delivery keeps (older ones are only counted).
ATTEMPTS_KEPT = 25
RESPONSE_EXCERPT = 512
# Events stamped this long before a subscription was created still reach it (clock skew).
CLOCK_SKEW = 5.0
_ENCODER = msgspec.json.Encoder()


# ---- the catalogue -------------------------------------------------------------------------
def _catalogue() -> dict[str, type[events.Event]]:
    found: dict[str, type[events.Event]] = {}
    for cls in typing.get_args(events.AnyEvent):
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        found[str(info.tag)] = cls
    return found


EVENT_TYPES: dict[str, type[events.Event]] = _catalogue()
FAMILIES = frozenset(tag.split(".", 1)[0] for tag in EVENT_TYPES)
# The families a user's own subscription may ask for: events about the user's jobs.
USER_FAMILIES = frozenset({"job"})


def validate_event_types(wanted: list[str], scope: SubscriptionScope) -> list[str]:
    """The event types a subscription asks for, checked against the catalogue (400 if unknown)."""
    families = FAMILIES if scope is SubscriptionScope.ALL else USER_FAMILIES
    known = {tag for tag in EVENT_TYPES if tag.split(".", 1)[0] in families}
    chosen: list[str] = []
    for name in wanted:
        family = name[:-2] if name.endswith(".*") else None
        if name != "*" and name not in known and family not in families:
            allowed = ", ".join(["*", *sorted(f"{f}.*" for f in families), *sorted(known)])
            raise BadRequest(
                f"Unknown event type {name!r}; choose from: {allowed}.",
                details={"field": "event_types"},
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def wants(sub: WebhookSubscription, tag: str, event: events.Event) -> bool:
    """Whether `sub` is to receive `event` (whose tag is `tag`)."""
    if not sub.enabled:
        return False
    if sub.scope is SubscriptionScope.JOB:
        if not isinstance(event, events.JobEvent) or event.job_id != sub.job_id:
            return False
    else:
        if event.time.timestamp() < sub.created_at - CLOCK_SKEW:
            return False  # from before the subscription existed (a replay of the stream)
        if sub.scope is SubscriptionScope.OWNER and not (
            isinstance(event, events.JobEvent) and event.owner == sub.owner
        ):
            return False
    return any(
        kind == "*" or kind == tag or (kind.endswith(".*") and tag.startswith(kind[:-1]))
        for kind in sub.event_types
    )


# ---- what is sent ----------------------------------------------------------------------------
class Envelope(msgspec.Struct, kw_only=True):
    """The body of every delivery."""

    type: str
    timestamp: datetime
    data: Any


def payload_of(event: events.Event) -> str:
    """The JSON body that delivers `event`."""
    body = Envelope(type=events.tag_of(event), timestamp=event.time, data=event)
    return _ENCODER.encode(body).decode()


def ping_payload(subscription_id: str, at: datetime) -> str:
    body = Envelope(type=TEST_TYPE, timestamp=at, data=WebhookPing(subscription_id=subscription_id))
    return _ENCODER.encode(body).decode()


def delivery_id(subscription_id: str, event: events.Event) -> str:
    """The same id for the same event and subscription: a redelivered event creates nothing new.
    It sorts by event time within the subscription (the KV key is the id)."""
    millis = int(event.time.timestamp() * 1000)
    digest = hashlib.sha256(event.event_id.encode()).hexdigest()[:16]
    return f"{subscription_id}.{millis:013d}-{digest}"


def ping_delivery_id(subscription_id: str, at: float) -> str:
    return f"{subscription_id}.{int(at * 1000):013d}-test{os.urandom(4).hex()}"


def signed_headers(secret: str, message_id: str, at: datetime, payload: str) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt."""
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, payload),
    }


@dataclass(frozen=True, slots=True)
class Attempted:
    """One attempt: the headers sent, the answer (if any), and the record kept of it."""

    headers: dict[str, str]
    exchange: Exchange | None
    record: DeliveryAttempt

    @property
    def succeeded(self) -> bool:
        return self.exchange is not None and 200 <= self.exchange.status < 300


async def attempt(
    client: OutboundClient,
    url: str,
    secret: str,
    message_id: str,
    payload: str,
    *,
    timeout: float,
    manual: bool = False,
) -> Attempted:
    """POST one signed delivery; never raises for what the receiver or the network did."""
    now = datetime.now(UTC)
    headers = signed_headers(secret, message_id, now, payload)
    started = time.monotonic()
    exchange: Exchange | None = None
    error = ""
    try:
        exchange = await client.request(
            "POST", url, headers=headers, body=payload.encode(), timeout=timeout
        )
    except OutboundRefused as exc:
        error = exc.message
    except TimeoutError:
        error = f"no answer within {timeout:g} s"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except Exception as exc:  # a receiver's answer we cannot follow (a malformed Location...)
        error = f"{type(exc).__name__}: {exc}"
    if exchange is not None and not 200 <= exchange.status < 300:
        error = f"HTTP {exchange.status}"
    record = DeliveryAttempt(
        at=now.timestamp(),
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        status_code=exchange.status if exchange else None,
        error=error,
        response=exchange.body[:RESPONSE_EXCERPT].decode(errors="replace") if exchange else "",
        manual=manual,
    )
    return Attempted(headers=headers, exchange=exchange, record=record)


# ---- subscriptions -------------------------------------------------------------------------------
def job_subscription_id(job_id: str) -> str:
    """The id of the subscription a job's `notify_url` makes."""
    return f"whj_{job_id}"


def new_subscription_id() -> str:
    return f"wh_{os.urandom(12).hex()}"


def new_subscription(
    sealer: SecretSealer,
    *,
    sub_id: str,
    scope: SubscriptionScope,
    owner: str,
    url: str,
    event_types: list[str],
    description: str = "",
    enabled: bool = True,
    job_id: str = "",
) -> tuple[WebhookSubscription, str]:
    """A new subscription and its signing secret (shown once, then only kept sealed)."""
    secret = new_secret()
    now = time.time()
    sub = WebhookSubscription(
        id=sub_id,
        scope=scope,
        owner=owner,
        job_id=job_id,
        url=url,
        event_types=event_types,
        description=description,
        enabled=enabled,
        secret=sealer.seal_secret(secret, sub_id),
        created_at=now,
        updated_at=now,
    )
    return sub, secret


# ---- secrets -----------------------------------------------------------------------------------
def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


class SecretUnavailable(Exception):
    """A stored secret cannot be opened (the storage key changed)."""


class SecretSealer(Sealer):
    """Keeps signing secrets sealed under the operator's storage key, bound to their
    subscription; without a key they are kept as they are (the notifier must sign with them)."""

    def seal_secret(self, secret: str, subscription_id: str) -> str:
        if not self.configured:
            return "plain:" + secret
        nonce = os.urandom(12)
        sealed = self._require().encrypt(nonce, secret.encode(), _binding(subscription_id))
        return "sealed:" + base64.b64encode(nonce + sealed).decode()

    def open_secret(self, stored: str, subscription_id: str) -> str:
        kind, _, value = stored.partition(":")
        if kind == "plain":
            return value
        if kind != "sealed" or not self.configured:
            raise SecretUnavailable("the secret is sealed and no storage key is configured")
        raw = base64.b64decode(value)
        try:
            plain = self._require().decrypt(raw[:12], raw[12:], _binding(subscription_id))
        except InvalidTag:
            raise SecretUnavailable("the secret does not open with this storage key") from None
        return plain.decode()


def _binding(subscription_id: str) -> bytes:
    return f"webhook:{subscription_id}".encode()


# ---- the buckets -------------------------------------------------------------------------------
class WebhookStore:
    """Typed access to the subscriptions and deliveries buckets."""

    def __init__(self, js: JetStreamContext, names: Names, subs: Any, deliveries: Any) -> None:
        self.js = js
        self.names = names
        self.subscriptions = TypedKV(subs, WebhookSubscription)
        self.deliveries = TypedKV(deliveries, Delivery)

    @classmethod
    async def open(cls, js: JetStreamContext, names: Names) -> WebhookStore:
        subs = await js.key_value(names.webhooks_bucket)
        deliveries = await js.key_value(names.deliveries_bucket)
        return cls(js, names, subs, deliveries)

    async def all_subscriptions(self) -> list[WebhookSubscription]:
        keys = await self.subscriptions.keys()
        found = await asyncio.gather(*(self.subscriptions.get(key) for key in keys))
        return [entry.value for entry in found if entry is not None]

    async def deliveries_of(
        self, subscription_id: str, *, status: DeliveryStatus | None = None, limit: int = 50
    ) -> list[Delivery]:
        """A subscription's deliveries, newest first (their ids sort by event time)."""
        kv: Any = self.deliveries.kv
        prefix: str = kv._pre
        info = await self.js.stream_info(kv._stream, subjects_filter=f"{prefix}{subscription_id}.>")
        keys = sorted((s[len(prefix) :] for s in (info.state.subjects or {})), reverse=True)
        chosen: list[Delivery] = []
        for start in range(0, len(keys), 50):
            batch = keys[start : start + 50]
            for entry in await asyncio.gather(*(self.deliveries.get(key) for key in batch)):
                if entry is not None and (status is None or entry.value.status is status):
                    chosen.append(entry.value)
            if len(chosen) >= limit:
                break
        return chosen[:limit]

    async def enqueue(self, work: WebhookWork, msg_id: str) -> None:
        """Ask for an attempt (de-duplicated by `msg_id` within the stream's window)."""
        await self.js.publish(
            self.names.webhook_deliver,
            _ENCODER.encode(work),
            headers={"Nats-Msg-Id": msg_id},
        )


def keep_attempt(delivery: Delivery, record: DeliveryAttempt) -> list[DeliveryAttempt]:
    return [*delivery.attempts, record][-ATTEMPTS_KEPT:]
