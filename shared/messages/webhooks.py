"""Webhooks: subscriptions, deliveries (KV records), the work item that asks for an attempt, and
the notifier's commands (a test delivery, a retry by hand) with their replies.

A *subscription* names an endpoint and the event types it wants; a *delivery* is one event for
one subscription, with every attempt made to deliver it. A delivery's id is also the
`webhook-id` header the receiver sees, the same on every retry.
"""

from __future__ import annotations

import enum

import msgspec

from shared.messages.commands import Command
from shared.messages.records import Timestamp


class SubscriptionScope(enum.StrEnum):
    """Whose events a subscription receives."""

    ALL = "all"  # an administrator's: every event
    OWNER = "owner"  # a user's: the events of the user's own jobs
    JOB = "job"  # a job's `notify_url`: the events of that one job


class WebhookSubscription(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint and the events it receives (key: its id).

    `secret` signs every delivery: "sealed:<base64>" (AES-GCM under the operator's storage key)
    or, where no storage key is configured, "plain:whsec_...". It is never shown after creation.
    """

    id: str
    scope: SubscriptionScope
    # The account that created it (for a job's subscription, the job's owner).
    owner: str
    job_id: str = ""
    url: str
    # Event tags ("job.completed"), families ("job.*"), or "*" for all.
    event_types: list[str] = msgspec.field(default_factory=lambda: ["*"])
    description: str = ""
    enabled: bool = True
    disabled_reason: str = ""
    secret: str
    # Deliveries that failed for good in a row; reset by any success.
    consecutive_failures: int = 0
    created_at: Timestamp
    updated_at: Timestamp
    disabled_at: Timestamp | None = None
    last_success_at: Timestamp | None = None
    last_failure_at: Timestamp | None = None


class DeliveryStatus(enum.StrEnum):
    """Where a delivery is."""

    PENDING = "pending"  # an attempt is due or running
    SUCCEEDED = "succeeded"  # the receiver answered 2xx
    FAILED = "failed"  # every attempt failed, or the subscription went away or was disabled


class DeliveryAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One POST to the receiver and what came back."""

    at: Timestamp
    duration_ms: float
    # The receiver's HTTP status; None when no answer came (refused, timed out, unreachable).
    status_code: int | None = None
    error: str = ""
    # The first bytes of the receiver's answer.
    response: str = ""
    manual: bool = False
    # Where it was sent, and the request headers sent (the signature, never the secret).
    url: str = ""
    request_headers: dict[str, str] = {}


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One event for one subscription (key: its id, "<subscription id>.<event time>-<hash>"),
    kept for the delivery retention after its last change."""

    id: str
    subscription_id: str
    owner: str
    job_id: str = ""
    event_type: str
    event_id: str
    # The exact JSON body sent on every attempt: {"type", "timestamp", "data"}.
    payload: str
    status: DeliveryStatus = DeliveryStatus.PENDING
    # The latest attempts (older ones are counted in `attempt_count` only).
    attempts: list[DeliveryAttempt] = []
    attempt_count: int = 0
    # Automatic attempts so far in the current schedule (a manual retry does not count).
    scheduled_attempts: int = 0
    next_attempt_at: Timestamp | None = None
    # Stream sequence of the work message that owns the delivery (0: none yet); another
    # message for the same delivery is a duplicate and is dropped.
    work_seq: int = 0
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None = None
    # Why a delivery stopped without success.
    reason: str = ""


class WebhookWork(msgspec.Struct, frozen=True, kw_only=True):
    """Asks the notifier to attempt a delivery (on `<ns>.webhook.deliver`); `manual`: one attempt
    an operator or owner asked for, without a retry schedule; `delivered_before`: how often the
    delivery's earlier work messages were delivered, when this one took over from them (a message
    is handed on before it reaches the consumer's attempt cap)."""

    delivery_id: str
    manual: bool = False
    delivered_before: int = 0


class WebhookPing(msgspec.Struct, frozen=True, kw_only=True):
    """The `data` of a test delivery (`POST .../webhooks/{id}/test`)."""

    subscription_id: str
    message: str = "This is a test delivery from vidmesh."


class SendTestDelivery(Command, frozen=True, kw_only=True, tag="webhook.test"):
    """Send a signed test delivery to a subscription now, keep it as a delivery, and reply with
    what was sent and answered (`PingReply`) on `reply_to`, after an empty message there that says
    the notifier has taken it. Dropped unanswered when it is taken after `deadline`: nobody waits
    for it any more."""

    subscription_id: str
    reply_to: str = ""
    # Seconds the attempt may take.
    timeout: float = 10.0
    deadline: Timestamp | None = None


class RetryDelivery(Command, frozen=True, kw_only=True, tag="webhook.retry_delivery"):
    """Attempt a finished delivery once more, now, with the same webhook-id (no retry schedule);
    reply with the delivery as it is then (`RetryReply`) on `reply_to`, after an empty message
    there that says the notifier has taken it. Dropped unanswered when it is taken after
    `deadline`."""

    delivery_id: str
    reply_to: str = ""
    deadline: Timestamp | None = None


NotifierCommand = SendTestDelivery | RetryDelivery


class PingAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What the receiver of a test delivery answered (the first bytes of its body)."""

    status: int
    url: str
    headers: dict[str, str]
    body: str
    duration_ms: float


class PingReply(msgspec.Struct, frozen=True, kw_only=True):
    """The notifier's reply to `SendTestDelivery`: the request sent and the answer, or why none was
    sent (`refused`: the subscription is gone or its secret cannot be used)."""

    delivery_id: str = ""
    refused: str = ""
    # The subscription does not exist (any more).
    missing: bool = False
    url: str = ""
    headers: dict[str, str] = {}
    body: str = ""
    succeeded: bool = False
    answer: PingAnswer | None = None
    error: str = ""


class RetryReply(msgspec.Struct, frozen=True, kw_only=True):
    """The notifier's reply to `RetryDelivery`: the delivery, pending again, or why it is not
    (`refused`; `missing`: there is no such delivery)."""

    delivery: Delivery | None = None
    refused: str = ""
    missing: bool = False


WORK_DECODER = msgspec.json.Decoder(WebhookWork)
NOTIFIER_DECODER = msgspec.json.Decoder(NotifierCommand)
PING_REPLY = msgspec.json.Decoder(PingReply)
RETRY_REPLY = msgspec.json.Decoder(RetryReply)
