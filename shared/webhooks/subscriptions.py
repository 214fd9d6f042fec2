"""New webhook subscriptions and their ids: an operator's or a user's (`wh_...`), or the one a
job's `notify_url` makes (`whj_<job id>`)."""

from __future__ import annotations

import os
import time

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
