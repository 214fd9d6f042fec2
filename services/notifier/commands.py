"""The notifier's commands: a test delivery sent now while its caller waits, and a finished
delivery attempted once more by hand. Each replies on the command's `reply_to` (the gateway
waits there); a command whose caller stopped waiting (`deadline`) is dropped unanswered."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
import structlog
from nats.aio.client import Client as NATS

from services.notifier.attempt import attempt
from shared.messages.webhooks import (
    Delivery,
    DeliveryStatus,
    NotifierCommand,
    PingAnswer,
    PingReply,
    RetryDelivery,
    RetryReply,
    SendTestDelivery,
    WebhookWork,
)
from shared.nats.consumer import ACK, Received, Settle
from shared.outbound import OutboundClient
from shared.webhooks.catalogue import TEST_TYPE
from shared.webhooks.envelope import ping_delivery_id, ping_payload, subscription_of
from shared.webhooks.secrets import SecretSealer, SecretUnavailable
from shared.webhooks.store import WebhookStore

log = structlog.get_logger("vidmesh.notifier")

_ENCODER = msgspec.json.Encoder()
# The longest a test attempt may take, whatever its caller would wait.
MAX_TEST_SECONDS = 30.0


class NotifierCommands:
    """Handles `SendTestDelivery` and `RetryDelivery`."""

    def __init__(
        self, nc: NATS, store: WebhookStore, client: OutboundClient, sealer: SecretSealer
    ) -> None:
        self.nc = nc
        self.store = store
        self.client = client
        self.sealer = sealer

    async def handle(self, received: Received[NotifierCommand]) -> Settle:
        command = received.message
        if command.deadline is not None and time.time() > command.deadline:
            log.info("command.expired", deadline=command.deadline)
            return ACK
        if command.reply_to:  # taken: the gateway now waits for the answer itself
            await self.nc.publish(command.reply_to, b"")
        match command:
            case SendTestDelivery():
                reply: msgspec.Struct = await self.send_test(command)
            case RetryDelivery():
                reply = await self.retry(command, redelivered=received.attempt > 1)
        if command.reply_to:
            await self.nc.publish(command.reply_to, _ENCODER.encode(reply))
        return ACK

    async def send_test(self, command: SendTestDelivery) -> PingReply:
        """Send a signed test delivery now and keep it as a finished delivery."""
        found = await self.store.subscriptions.get(command.subscription_id)
        if found is None:
            return PingReply(missing=True)
        sub = found.value
        try:
            secret = self.sealer.open_secret(sub.secret, sub.id)
        except SecretUnavailable as exc:
            return PingReply(refused=f"This webhook's signing secret cannot be used: {exc}.")
        now = time.time()
        delivery_id = ping_delivery_id(sub.id, now)
        payload = ping_payload(sub.id, datetime.fromtimestamp(now, UTC))
        timeout = min(command.timeout, MAX_TEST_SECONDS)
        attempted = await attempt(
            self.client, sub.url, secret, delivery_id, payload, timeout=timeout
        )
        ok = attempted.succeeded
        record = Delivery(
            id=delivery_id,
            subscription_id=sub.id,
            owner=sub.owner,
            job_id=sub.job_id,
            event_type=TEST_TYPE,
            event_id=f"test:{delivery_id}",
            payload=payload,
            status=DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.FAILED,
            attempts=[attempted.record],
            attempt_count=1,
            created_at=now,
            updated_at=time.time(),
            finished_at=time.time(),
            reason="" if ok else attempted.record.error,
        )
        await self.store.deliveries.create(delivery_id, record)
        log.info("delivery.tested", delivery_id=delivery_id, succeeded=ok)
        exchange = attempted.exchange
        answer = None
        if exchange is not None:
            answer = PingAnswer(
                status=exchange.status,
                url=exchange.url,
                headers=exchange.headers,
                body=exchange.body.decode(errors="replace"),
                duration_ms=exchange.duration_ms,
            )
        return PingReply(
            delivery_id=delivery_id,
            url=sub.url,
            headers=attempted.headers,
            body=payload,
            succeeded=ok,
            answer=answer,
            error=attempted.record.error,
        )

    async def retry(self, command: RetryDelivery, *, redelivered: bool = False) -> RetryReply:
        """Make a finished delivery pending again and ask for one attempt, with no schedule.

        A redelivered command finds the delivery pending and unclaimed when its first handling
        stopped between the two: it asks for the attempt again (the same message id, which
        JetStream de-duplicates)."""
        sub = await self.store.subscriptions.get(subscription_of(command.delivery_id))
        if sub is None:
            return RetryReply(missing=True)
        if not sub.value.enabled:
            return RetryReply(
                refused="The webhook is disabled: enable it (PUT, enabled: true) first."
            )
        now = time.time()
        refusal = ""
        resumed = False

        def again(current: Delivery | None) -> Delivery | None:
            nonlocal refusal, resumed
            refusal, resumed = "", False
            if current is None:
                return None
            if current.status is DeliveryStatus.PENDING:
                if redelivered and current.work_seq == 0:
                    resumed = True
                else:
                    refusal = "This delivery is being attempted already."
                return None
            return msgspec.structs.replace(
                current,
                status=DeliveryStatus.PENDING,
                work_seq=0,
                next_attempt_at=now,
                updated_at=now,
                finished_at=None,
                reason="",
            )

        record, _, changed = await self.store.deliveries.change(command.delivery_id, again)
        if record is None:
            return RetryReply(missing=True)
        if refusal:
            return RetryReply(refused=refusal)
        if changed or resumed:
            work = WebhookWork(delivery_id=record.id, manual=True)
            await self.store.enqueue(work, msg_id=f"{record.id}:manual:{record.attempt_count}")
        return RetryReply(delivery=record)
