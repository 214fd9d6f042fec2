"""New webhook subscriptions and their ids (an operator's or a user's `wh_...`, or the one a
job's `notify_url` makes, `whj_<job id>`), and changes to them."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from shared.messages.webhooks import SubscriptionScope, WebhookSubscription
from shared.webhooks.secrets import SecretSealer, new_secret


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


def changed_subscription(
    current: WebhookSubscription, fields: dict[str, Any], *, enabled: bool | None, now: float
) -> WebhookSubscription | None:
    """`current` with the `fields` given changed (url, event_types, description) and enabled or
    disabled when `enabled` says so; None when that changes nothing. Enabling clears why it was
    disabled and its failures in a row; disabling says its owner did it."""
    changes = dict(fields)
    if enabled is not None:
        changes["enabled"] = enabled
    if enabled and not current.enabled:
        changes.update(disabled_reason="", disabled_at=None, consecutive_failures=0)
    elif enabled is False and current.enabled:
        changes.update(disabled_reason="disabled by its owner", disabled_at=now)
    if all(getattr(current, name) == value for name, value in changes.items()):
        return None
    return msgspec.structs.replace(current, **changes, updated_at=now)
