"""One delivery attempt per work message, and what follows from its outcome.

The retry queue is durable in JetStream: a failed attempt naks its work message with the next
delay of the schedule, so a waiting retry survives any crash of the notifier (a message whose
attempt was cut short by a crash comes back after `ack_wait`). The delivery record in KV says
where the delivery is; the first work message to claim a delivery owns it, so a duplicate message
never starts a second retry chain.

A work message is naked again and again while its delivery waits (each retry of the schedule, and
each bounce while its endpoint is busy, which no schedule bounds), but the consumer caps the
deliveries of one message (`delivery_attempts`). So a message that would wait once more when it is
one delivery short of the cap is handed on instead (`_hand_on`): the delivery is unclaimed, a
fresh work message is published and this one acked; the fresh one waits out the time left and
claims the delivery again. Only a message whose handling keeps failing (raises, or never returns)
reaches the cap, as on every other consumer.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import structlog
from yarl import URL

from services.notifier.attempt import Attempted, attempt, keep_attempt
from services.notifier.config import NotifierSettings
from shared.messages import events as ev
from shared.messages.webhooks import (
    Delivery,
    DeliveryStatus,
    SubscriptionScope,
    WebhookSubscription,
    WebhookWork,
)
from shared.metrics import WEBHOOK_DELIVERIES
from shared.nats.consumer import ACK, Outcome, Received, Settle
from shared.nats.projection import Projection
from shared.nats.topology import publish_event
from shared.outbound import OutboundClient
from shared.webhooks.secrets import SecretSealer, SecretUnavailable
from shared.webhooks.store import WebhookStore

log = structlog.get_logger("vidmesh.notifier")

# Seconds between looks at the webhooks kill switch by a delivery it holds.
HOLD_SECONDS = 2.0


@dataclass(slots=True)
class EndpointLimits:
    """Attempts in flight per endpoint, so that one slow endpoint holds only a few slots."""

    limit: int
    busy: dict[str, int] = field(default_factory=dict)

    def try_acquire(self, endpoint: str) -> bool:
        if self.busy.get(endpoint, 0) >= self.limit:
            return False
        self.busy[endpoint] = self.busy.get(endpoint, 0) + 1
        return True

    def release(self, endpoint: str) -> None:
        left = self.busy.get(endpoint, 1) - 1
        if left <= 0:
            self.busy.pop(endpoint, None)
        else:
            self.busy[endpoint] = left


def endpoint_of(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


class Deliverer:
    """Attempts deliveries and records what happened."""

    def __init__(
        self,
        settings: NotifierSettings,
        store: WebhookStore,
        subscriptions: Projection[WebhookSubscription],
        client: OutboundClient,
        sealer: SecretSealer,
    ) -> None:
        self.settings = settings
        self.delays = settings.retry_delays
        self.store = store
        self.subscriptions = subscriptions
        self.client = client
        self.sealer = sealer
        self.limits = EndpointLimits(settings.webhook_endpoint_concurrency)
        # One delivery before the cap: a failure while handing on leaves one more try.
        self.hand_on_at = settings.delivery_attempts - 1
        # Whether the webhooks kill switch holds deliveries now (set by the service).
        self.held: Callable[[], bool] = lambda: False

    async def handle(self, received: Received[WebhookWork]) -> Settle:
        """Attempt the delivery the work message asks for, if it still owes one; the settlement
        spaces the next retry by the schedule, or hands the delivery on to a fresh message when
        this one is about to reach the attempt cap."""
        # Held by the kill switch: the message waits (handed on like any waiting one), unattempted.
        held = self.held()
        settled = Settle(Outcome.RETRY, HOLD_SECONDS) if held else await self._deliver(received)
        if settled.outcome is Outcome.RETRY and received.attempt >= self.hand_on_at:
            return await self._hand_on(received)
        return settled

    async def _deliver(self, received: Received[WebhookWork]) -> Settle:
        work, seq = received.message, received.seq
        found = await self.store.deliveries.get(work.delivery_id)
        if found is None or found.value.status is not DeliveryStatus.PENDING:
            return ACK  # expired, or finished already: nothing left to do
        delivery = found.value
        if delivery.work_seq not in (0, seq):
            return ACK  # another work message owns this delivery
        sub = await self._subscription(delivery.subscription_id)
        if sub is None or not sub.enabled:
            why = "the subscription was deleted" if sub is None else "the subscription is disabled"
            await self._give_up(delivery, why)
            return ACK
        due = (delivery.next_attempt_at or 0.0) - time.time()
        if due > 1.0:
            return Settle(Outcome.RETRY, due)  # back early (a restart): wait for its time
        endpoint = endpoint_of(sub.url)
        if not self.limits.try_acquire(endpoint):
            bounces = work.delivered_before + received.attempt
            return Settle(Outcome.RETRY, self._busy_delay(bounces))
        try:
            if delivery.work_seq == 0 and not await self._claim(delivery.id, seq):
                return ACK
            try:
                secret = self.sealer.open_secret(sub.secret, sub.id)
            except SecretUnavailable as exc:
                await self._give_up(delivery, f"its signing secret cannot be used: {exc}")
                return ACK
            attempted = await attempt(
                self.client,
                sub.url,
                secret,
                delivery.id,
                delivery.payload,
                timeout=self.settings.webhook_timeout,
                manual=work.manual,
            )
        finally:
            self.limits.release(endpoint)
        return await self._record(delivery.id, seq, sub, attempted, manual=work.manual)

    async def _hand_on(self, received: Received[WebhookWork]) -> Settle:
        """Unclaim the delivery, publish a fresh work message for it and ack this one (see the
        module's docstring). Unclaimed first: should the publish fail or the process die, this
        message, delivered again, still owns the delivery and hands it on again (the same message
        id, which JetStream de-duplicates)."""
        work, seq = received.message, received.seq

        def unclaim(current: Delivery | None) -> Delivery | None:
            if current is None or current.status is not DeliveryStatus.PENDING:
                return None
            if current.work_seq != seq:
                return None
            return msgspec.structs.replace(current, work_seq=0)

        record, _, _ = await self.store.deliveries.change(work.delivery_id, unclaim)
        if record is None or record.status is not DeliveryStatus.PENDING or record.work_seq != 0:
            return ACK  # finished, expired, or owned by another work message
        fresh = msgspec.structs.replace(
            work, delivered_before=work.delivered_before + received.attempt
        )
        await self.store.enqueue(fresh, msg_id=f"{work.delivery_id}:handed-on:{seq}")
        log.info(
            "delivery.handed_on",
            delivery_id=work.delivery_id,
            seq=seq,
            delivered=fresh.delivered_before,
        )
        return ACK

    async def _subscription(self, sub_id: str) -> WebhookSubscription | None:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            stored = await self.store.subscriptions.get(sub_id)
            sub = stored.value if stored else None
        return sub

    @staticmethod
    def _busy_delay(bounces: int) -> float:
        """Wait for a busy endpoint: soon at first, less often for a message bounced many times
        (a long backlog at one endpoint then costs little)."""
        return min(10.0, 0.5 * bounces) * random.uniform(0.5, 1.5)

    def _retry_delay(self, retry: int) -> float:
        jitter = self.settings.webhook_retry_jitter
        return self.delays[retry - 1] * random.uniform(1 - jitter, 1 + jitter)

    async def _claim(self, delivery_id: str, seq: int) -> bool:
        def claim(current: Delivery | None) -> Delivery | None:
            if current is None or current.work_seq != 0:
                return None
            return msgspec.structs.replace(current, work_seq=seq)

        record, _, _ = await self.store.deliveries.change(delivery_id, claim)
        return record is not None and record.work_seq == seq

    async def _record(
        self,
        delivery_id: str,
        seq: int,
        sub: WebhookSubscription,
        attempted: Attempted,
        *,
        manual: bool,
    ) -> Settle:
        now = time.time()
        delay: float | None = None

        def apply(current: Delivery | None) -> Delivery | None:
            nonlocal delay
            if current is None or current.status is not DeliveryStatus.PENDING:
                return None
            if current.work_seq != seq:
                return None
            changes: dict[str, object] = {
                "attempts": keep_attempt(current, attempted.record),
                "attempt_count": current.attempt_count + 1,
                "updated_at": now,
            }
            scheduled = current.scheduled_attempts + (0 if manual else 1)
            if attempted.succeeded:
                changes.update(status=DeliveryStatus.SUCCEEDED, finished_at=now)
                changes.update(next_attempt_at=None, reason="")
            elif manual or scheduled > len(self.delays):
                reason = f"{current.attempt_count + 1} attempts failed; the last: "
                changes.update(status=DeliveryStatus.FAILED, finished_at=now)
                changes.update(next_attempt_at=None, reason=reason + attempted.record.error)
            else:
                delay = self._retry_delay(scheduled)
                changes.update(scheduled_attempts=scheduled, next_attempt_at=now + delay)
            return msgspec.structs.replace(current, **changes)

        record, _, changed = await self.store.deliveries.change(delivery_id, apply)
        if not changed or record is None:
            return ACK
        pending = record.status is DeliveryStatus.PENDING
        WEBHOOK_DELIVERIES.labels("retrying" if pending else record.status.value).inc()
        log.info(
            "delivery.attempted",
            delivery_id=delivery_id,
            subscription_id=sub.id,
            attempt=record.attempt_count,
            status=record.status.value,
            code=attempted.record.status_code,
            error=attempted.record.error or None,
            duration_ms=attempted.record.duration_ms,
            retry_in_s=round(delay, 1) if delay is not None else None,
        )
        if record.status is DeliveryStatus.SUCCEEDED:
            await self._note_success(sub.id)
        elif record.status is DeliveryStatus.FAILED and not manual:
            await self._note_failure(sub.id, record.reason)
        if record.status is not DeliveryStatus.PENDING:
            await self._retire_finished_job(sub, record)
            return ACK
        return Settle(Outcome.RETRY, delay)

    async def _give_up(self, delivery: Delivery, reason: str) -> None:
        now = time.time()

        def apply(current: Delivery | None) -> Delivery | None:
            if current is None or current.status is not DeliveryStatus.PENDING:
                return None
            return msgspec.structs.replace(
                current,
                status=DeliveryStatus.FAILED,
                reason=reason,
                finished_at=now,
                updated_at=now,
                next_attempt_at=None,
            )

        await self.store.deliveries.change(delivery.id, apply)
        log.info("delivery.dropped", delivery_id=delivery.id, reason=reason)

    async def _note_success(self, sub_id: str) -> None:
        now = time.time()

        def apply(current: WebhookSubscription | None) -> WebhookSubscription | None:
            if current is None:
                return None
            recent = current.last_success_at is not None and now - current.last_success_at < 60
            if current.consecutive_failures == 0 and recent:
                return None  # nothing worth a write
            return msgspec.structs.replace(current, consecutive_failures=0, last_success_at=now)

        await self.store.subscriptions.change(sub_id, apply)

    async def _note_failure(self, sub_id: str, reason: str) -> None:
        now = time.time()
        limit = self.settings.webhook_disable_after

        disabled = False

        def apply(current: WebhookSubscription | None) -> WebhookSubscription | None:
            nonlocal disabled
            disabled = False
            if current is None:
                return None
            failures = current.consecutive_failures + 1
            changes: dict[str, object] = {"consecutive_failures": failures, "last_failure_at": now}
            if failures >= limit and current.enabled:
                disabled = True
                changes.update(
                    enabled=False,
                    disabled_at=now,
                    updated_at=now,
                    disabled_reason=f"{failures} deliveries in a row failed for good "
                    f"(the last: {reason}); fix the endpoint, then enable it again",
                )
            return msgspec.structs.replace(current, **changes)

        record, revision, changed = await self.store.subscriptions.change(sub_id, apply)
        if changed and disabled and record is not None and revision is not None:
            event = ev.webhook_event(
                ev.WebhookDisabled, record, revision, reason=record.disabled_reason
            )
            with contextlib.suppress(Exception):  # the disabling stands; the log says it too
                await publish_event(self.store.js, self.store.names, event)
            log.warning(
                "webhook.disabled",
                subscription_id=sub_id,
                url=record.url,
                failures=record.consecutive_failures,
                reason=record.disabled_reason,
            )

    async def _retire_finished_job(self, sub: WebhookSubscription, record: Delivery) -> None:
        """A job's subscription goes, with its deliveries, once the job's last event (job.purged)
        is delivered."""
        if sub.scope is SubscriptionScope.JOB and record.event_type == "job.purged":
            await self.store.delete_subscription(sub.id)
