"""From one event to its deliveries: every enabled subscription that wants the event gets a
delivery record and a delivery attempt on the work stream, before the event is acked.

A delivery's id derives from the subscription and the event, so a redelivered event creates
nothing new; an attempt is published again only for a delivery that has never been attempted
(the notifier may have died between the record and the publish), and the delivery handler lets
only one work message own a delivery.
"""

from __future__ import annotations

import time

import structlog

from shared.messages import events as ev
from shared.messages.webhooks import (
    Delivery,
    DeliveryStatus,
    SubscriptionScope,
    WebhookSubscription,
    WebhookWork,
)
from shared.nats.consumer import ACK, Received, Settle
from shared.nats.kv import Stale
from shared.nats.projection import Projection
from shared.recent import Recent
from shared.webhooks.catalogue import wants
from shared.webhooks.envelope import delivery_id, payload_of
from shared.webhooks.store import WebhookStore
from shared.webhooks.subscriptions import job_subscription_id

log = structlog.get_logger("vidmesh.notifier")

# Jobs remembered to have no subscription of their own.
_REMEMBERED = 20_000


class Fanout:
    """Turns events into deliveries."""

    def __init__(self, store: WebhookStore, subscriptions: Projection[WebhookSubscription]) -> None:
        self.store = store
        self.subscriptions = subscriptions
        # Jobs found to have no subscription of their own, the latest last.
        self._without_own: Recent[str, None] = Recent(_REMEMBERED)

    async def handle(self, received: Received[ev.AnyEvent]) -> Settle:
        """Open a delivery of the event for every subscription that wants it."""
        event = received.message
        tag = ev.tag_of(event)
        for sub in await self._candidates(event):
            if wants(sub, tag, event):
                await self.open_delivery(sub, tag, event)
            elif isinstance(event, ev.JobPurged) and sub.scope is SubscriptionScope.JOB:
                # The job is gone and its endpoint gets nothing more: its subscription goes too,
                # with its deliveries.
                await self.store.delete_subscription(sub.id)
        return ACK

    async def _candidates(self, event: ev.Event) -> list[WebhookSubscription]:
        found = [
            sub
            for sub in self.subscriptions.values()
            if sub.scope is not SubscriptionScope.JOB
            or (isinstance(event, ev.JobEvent) and sub.job_id == event.job_id)
        ]
        if isinstance(event, ev.JobEvent):
            # A job's own subscription is written just before the job: read it from KV when the
            # projection has not seen it yet. A job found to have none never gets one (it is
            # written only before the job is), so it is not looked for again.
            key = job_subscription_id(event.job_id)
            if self.subscriptions.get(key) is None and event.job_id not in self._without_own:
                stored = await self.store.subscriptions.get(key)
                if stored is not None:
                    found.append(stored.value)
                else:
                    self._without_own.remember(event.job_id, None)
        return found

    async def open_delivery(self, sub: WebhookSubscription, tag: str, event: ev.Event) -> None:
        """Store the delivery (once) and ask for its first attempt."""
        did = delivery_id(sub.id, event)
        now = time.time()
        record = Delivery(
            id=did,
            subscription_id=sub.id,
            owner=sub.owner,
            job_id=event.job_id if isinstance(event, ev.JobEvent) else "",
            event_type=tag,
            event_id=event.event_id,
            payload=payload_of(event),
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        try:
            await self.store.deliveries.create(did, record)
        except Stale:
            existing = await self.store.deliveries.get(did)
            never_tried = (
                existing is not None
                and existing.value.status is DeliveryStatus.PENDING
                and existing.value.attempt_count == 0
            )
            if not never_tried:
                return
        await self.store.enqueue(WebhookWork(delivery_id=did), msg_id=did)
        log.debug("delivery.opened", delivery_id=did, subscription_id=sub.id, type=tag)
