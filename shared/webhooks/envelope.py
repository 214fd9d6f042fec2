"""What a delivery sends: the JSON body `{"type": <tag>, "timestamp": <event time>, "data":
<event>}`, and the delivery id, which the receiver sees as the `webhook-id` header (the same on
every retry)."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from typing import Any

import msgspec

from shared.messages import events
from shared.messages.webhooks import WebhookPing
from shared.webhooks.catalogue import TEST_TYPE

_ENCODER = msgspec.json.Encoder()


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
    """The JSON body of a test delivery."""
    body = Envelope(type=TEST_TYPE, timestamp=at, data=WebhookPing(subscription_id=subscription_id))
    return _ENCODER.encode(body).decode()


def delivery_id(subscription_id: str, event: events.Event) -> str:
    """The same id for the same event and subscription: a redelivered event creates nothing new.
    It sorts by event time within the subscription (the KV key is the id)."""
    millis = int(event.time.timestamp() * 1000)
    digest = hashlib.sha256(event.event_id.encode()).hexdigest()[:16]
    return f"{subscription_id}.{millis:013d}-{digest}"


def ping_delivery_id(subscription_id: str, at: float) -> str:
    """A new id for a test delivery sent at `at`."""
    return f"{subscription_id}.{int(at * 1000):013d}-test{os.urandom(4).hex()}"


def subscription_of(delivery: str) -> str:
    """The subscription a delivery id belongs to."""
    return delivery.partition(".")[0]
