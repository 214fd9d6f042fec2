"""Typed access to the webhook buckets: subscriptions, and deliveries with their attempts (a
subscription's history read a page at a time, counted over a recent window, and removed with
the subscription)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.js import JetStreamContext

from shared.messages.webhooks import Delivery, DeliveryStatus, WebhookSubscription, WebhookWork
from shared.nats.kv import TypedKV
from shared.nats.subjects import Names
from shared.webhooks.envelope import subscription_of

_ENCODER = msgspec.json.Encoder()
# Deliveries read at once while a page is gathered.
_READ_BATCH = 50
# The window of a subscription's recent delivery counts.
RECENT_WINDOW = 86_400.0


class DeliveryCounts(msgspec.Struct, kw_only=True):
    """A subscription's deliveries that finished within a window: succeeded (the receiver
    answered 2xx) or failed for good; and those still owed now."""

    succeeded: int = 0
    failed: int = 0
    pending: int = 0


class DeliveryPage(msgspec.Struct, kw_only=True):
    """A page of a subscription's deliveries, newest first; `next_before`: the id to read on
    from (the last one here) when more follow, else None."""

    items: list[Delivery]
    next_before: str | None


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
        """A subscription's latest deliveries, newest first."""
        return (await self.delivery_page(subscription_id, status=status, limit=limit)).items

    async def delivery_page(
        self,
        subscription_id: str,
        *,
        status: DeliveryStatus | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> DeliveryPage:
        """One page of a subscription's deliveries, newest first (their ids sort by event time):
        the first `limit` (of `status`, when given) whose ids sort before `before`."""
        keys = [
            key for key in await self._delivery_keys(subscription_id) if not before or key < before
        ]
        chosen: list[Delivery] = []
        for start in range(0, len(keys), _READ_BATCH):
            batch = keys[start : start + _READ_BATCH]
            for entry in await asyncio.gather(*(self.deliveries.get(key) for key in batch)):
                if entry is not None and (status is None or entry.value.status is status):
                    chosen.append(entry.value)
            if len(chosen) > limit:
                break
        items = chosen[:limit]
        more = len(chosen) > limit
        return DeliveryPage(items=items, next_before=items[-1].id if more else None)

    async def _delivery_keys(self, subscription_id: str) -> list[str]:
        """The keys of a subscription's deliveries, newest first, from the stream's subject
        index (one request)."""
        kv: Any = self.deliveries.kv
        prefix: str = kv._pre
        info = await self.js.stream_info(kv._stream, subjects_filter=f"{prefix}{subscription_id}.>")
        return sorted((s[len(prefix) :] for s in (info.state.subjects or {})), reverse=True)

    async def recent_counts(
        self, subscription_id: str | None = None, *, window: float = RECENT_WINDOW
    ) -> dict[str, DeliveryCounts]:
        """Per subscription (only `subscription_id`'s when given), its deliveries that finished
        within the last `window` seconds, by outcome, and those pending now; read from the
        delivery history in one pass over the bucket."""
        since = time.time() - window
        counts: dict[str, DeliveryCounts] = {}
        deliveries = await self.deliveries.values(under=subscription_id or "")
        for key, delivery in deliveries.items():
            tally = counts.setdefault(subscription_of(key), DeliveryCounts())
            if delivery.status is DeliveryStatus.PENDING:
                tally.pending += 1
            elif (delivery.finished_at or delivery.updated_at) >= since:
                if delivery.status is DeliveryStatus.SUCCEEDED:
                    tally.succeeded += 1
                else:
                    tally.failed += 1
        return counts

    async def delete_subscription(self, subscription_id: str) -> None:
        """Remove a subscription and its whole delivery history. A delivery still owed is then
        dropped by the notifier (its work finds no delivery); an attempt in flight writes nothing
        back, as every change of a delivery leaves a missing one missing."""
        await self.subscriptions.delete(subscription_id)
        kv: Any = self.deliveries.kv
        await self.js.purge_stream(kv._stream, subject=f"{kv._pre}{subscription_id}.>")

    async def enqueue(self, work: WebhookWork, msg_id: str) -> None:
        """Ask for an attempt (de-duplicated by `msg_id` within the stream's window)."""
        await self.js.publish(
            self.names.webhook_deliver,
            _ENCODER.encode(work),
            headers={"Nats-Msg-Id": msg_id},
        )
