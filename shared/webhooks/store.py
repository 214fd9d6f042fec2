"""Typed access to the webhook buckets: subscriptions, and deliveries with their attempts."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.js import JetStreamContext

from shared.messages.webhooks import Delivery, DeliveryStatus, WebhookSubscription, WebhookWork
from shared.nats.kv import TypedKV
from shared.nats.subjects import Names

_ENCODER = msgspec.json.Encoder()


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
