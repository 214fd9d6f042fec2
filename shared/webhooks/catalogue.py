"""The webhook event catalogue: every event type a subscription can ask for, and which events a
subscription receives."""

from __future__ import annotations

import typing

import msgspec

from shared.errors import BadRequest
from shared.messages import events
from shared.messages.webhooks import SubscriptionScope, WebhookSubscription

# The type of a test delivery (`POST .../webhooks/{id}/test`), always sent when asked for.
TEST_TYPE = "webhook.test"
# Events stamped this long before a subscription was created still reach it (clock skew).
CLOCK_SKEW = 5.0


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


__all__ = [  # what this module offers, the re-exports included
    "CLOCK_SKEW",
    "EVENT_TYPES",
    "FAMILIES",
    "TEST_TYPE",
    "USER_FAMILIES",
    "validate_event_types",
    "wants",
]
