"""What the webhooks face shows and takes: request and response types, and the mappers that fill
them from the subscription and delivery records."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any

import msgspec

from services.gateway.faces.native.views import when
from shared.messages.webhooks import (
    Delivery,
    DeliveryStatus,
    PingReply,
    SubscriptionScope,
    WebhookPing,
    WebhookSubscription,
)
from shared.webhooks.catalogue import EVENT_TYPES, TEST_TYPE, USER_FAMILIES
from shared.webhooks.store import DeliveryCounts

EventTypeName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^(\*|[a-z_]+\.(\*|[a-z_]+))$",
        description='an event type ("job.completed"), a family ("job.*"), or "*" for all',
    ),
]


def _everything() -> list[str]:
    return ["*"]


class WebhookRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A webhook subscription: where to POST, and which events."""

    url: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=2048,
            description="http(s) URL that receives the deliveries (public addresses only, "
            "unless the operator allows more)",
        ),
    ]
    event_types: Annotated[list[EventTypeName], msgspec.Meta(min_length=1, max_length=64)] = (
        msgspec.field(default_factory=_everything)
    )
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    enabled: bool = True


class WebhookUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A change to a subscription: only the fields given change (the secret never does)."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    event_types: (
        Annotated[list[EventTypeName], msgspec.Meta(min_length=1, max_length=64)]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    description: Annotated[str, msgspec.Meta(max_length=500)] | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class DeliveryQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Filters and paging for a subscription's deliveries, newest first. A page that has more
    after it answers with `Link: <...>; rel="next"`, the same query with `before` set."""

    status: DeliveryStatus | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    before: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=255,
                description="only deliveries older than this one (a delivery id): the last id "
                "of the page before, as the next link gives it",
            ),
        ]
        | None
    ) = None


class RecentDeliveries(msgspec.Struct, kw_only=True):
    """A subscription's deliveries over the last 24 hours: those that succeeded and those that
    failed for good in that time, and those still owed now."""

    succeeded: int
    failed: int
    pending: int


class WebhookView(msgspec.Struct, kw_only=True):
    """A webhook subscription (its signing secret is shown once, when it is created)."""

    id: str
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    # Why the notifier disabled it (it is enabled again with PUT, enabled: true).
    disabled_reason: str | None
    scope: SubscriptionScope
    # The job whose `notify_url` made it.
    job_id: str | None
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    deliveries_24h: RecentDeliveries


class WebhookCreated(WebhookView, kw_only=True):
    """A new subscription, with the secret that signs its deliveries: shown now, never again."""

    secret: str


class EventTypeView(msgspec.Struct, kw_only=True):
    """An event type a subscription can ask for. Deliveries POST {"type", "timestamp", "data"};
    `schema` is the JSON Schema of `data`."""

    type: str
    description: str
    schema: dict[str, Any]


class AttemptView(msgspec.Struct, kw_only=True):
    """One attempt to deliver."""

    at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response: str
    manual: bool
    # Where it was POSTed, and the headers sent (the signature, never the secret); None and
    # empty for attempts recorded before vidmesh kept them.
    url: str | None
    request_headers: dict[str, str]


class DeliveryView(msgspec.Struct, kw_only=True):
    """One event for one subscription: its id is the `webhook-id` the receiver saw."""

    id: str
    webhook_id: str
    event_type: str
    event_id: str
    job_id: str | None
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    reason: str | None
    attempts: list[AttemptView]
    payload: dict[str, Any]


class SentRequest(msgspec.Struct, kw_only=True):
    """The request a test delivery sent."""

    method: str
    url: str
    headers: dict[str, str]
    body: str


class ReceivedResponse(msgspec.Struct, kw_only=True):
    """What the receiver answered (the first bytes of its body)."""

    status: int
    url: str
    headers: dict[str, str]
    body: str
    duration_ms: float


class WebhookTestResult(msgspec.Struct, kw_only=True):
    """A signed test delivery, sent now: the request, and the receiver's answer or the error."""

    delivery_id: str
    succeeded: bool
    request: SentRequest
    response: ReceivedResponse | None
    error: str | None


def webhook_view(sub: WebhookSubscription, recent: DeliveryCounts | None = None) -> WebhookView:
    counts = recent or DeliveryCounts()
    return WebhookView(
        id=sub.id,
        url=sub.url,
        event_types=sub.event_types,
        description=sub.description,
        enabled=sub.enabled,
        disabled_reason=sub.disabled_reason or None,
        scope=sub.scope,
        job_id=sub.job_id or None,
        consecutive_failures=sub.consecutive_failures,
        created_at=_at(sub.created_at),
        updated_at=_at(sub.updated_at),
        disabled_at=when(sub.disabled_at),
        last_success_at=when(sub.last_success_at),
        last_failure_at=when(sub.last_failure_at),
        deliveries_24h=RecentDeliveries(
            succeeded=counts.succeeded, failed=counts.failed, pending=counts.pending
        ),
    )


def created_view(sub: WebhookSubscription, secret: str) -> WebhookCreated:
    view = webhook_view(sub)
    return WebhookCreated(**msgspec.structs.asdict(view), secret=secret)


def delivery_view(delivery: Delivery) -> DeliveryView:
    return DeliveryView(
        id=delivery.id,
        webhook_id=delivery.subscription_id,
        event_type=delivery.event_type,
        event_id=delivery.event_id,
        job_id=delivery.job_id or None,
        status=delivery.status,
        attempt_count=delivery.attempt_count,
        next_attempt_at=when(delivery.next_attempt_at),
        created_at=_at(delivery.created_at),
        updated_at=_at(delivery.updated_at),
        finished_at=when(delivery.finished_at),
        reason=delivery.reason or None,
        attempts=[
            AttemptView(
                at=_at(a.at),
                duration_ms=a.duration_ms,
                status_code=a.status_code,
                error=a.error or None,
                response=a.response,
                manual=a.manual,
                url=a.url or None,
                request_headers=a.request_headers,
            )
            for a in delivery.attempts
        ],
        payload=msgspec.json.decode(delivery.payload),
    )


def ping_result(sent: PingReply) -> WebhookTestResult:
    """The answer to a test: the request the notifier sent, and what came back."""
    answer = sent.answer
    response = None
    if answer is not None:
        response = ReceivedResponse(
            status=answer.status,
            url=answer.url,
            headers=answer.headers,
            body=answer.body,
            duration_ms=answer.duration_ms,
        )
    return WebhookTestResult(
        delivery_id=sent.delivery_id,
        succeeded=sent.succeeded,
        request=SentRequest(method="POST", url=sent.url, headers=sent.headers, body=sent.body),
        response=response,
        error=sent.error or None,
    )


@functools.cache
def event_types(admin: bool) -> list[EventTypeView]:
    """The catalogue: every event an administrator's subscription can receive, or the job events
    a user's can, each with the JSON Schema of its `data`."""
    views = [
        EventTypeView(
            type=tag,
            description=_summary(cls),
            schema=msgspec.json.schema(cls),
        )
        for tag, cls in sorted(EVENT_TYPES.items())
        if admin or tag.split(".", 1)[0] in USER_FAMILIES
    ]
    ping = EventTypeView(
        type=TEST_TYPE,
        description="A test delivery (POST .../webhooks/{id}/test); always sent when asked for.",
        schema=msgspec.json.schema(WebhookPing),
    )
    return [*views, ping]


def _summary(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def _at(ts: float) -> datetime:
    moment = when(ts)
    assert moment is not None
    return moment
