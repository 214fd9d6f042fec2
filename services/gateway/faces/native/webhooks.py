"""Webhooks face: subscriptions as in media-server APIs.

Operators subscribe to every event at `/api/admin/webhooks`; users subscribe to their own jobs'
events at `/api/webhooks` (a job's `notify_url` makes one such subscription for that job). This
module keeps the subscriptions; their deliveries (the history, a test delivery, a retry by hand)
are `webhook_deliveries.py`'s. The notifier service does all the delivering.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from services.gateway.api import caller
from services.gateway.faces.native.webhook_access import (
    both,
    find_subscription,
    store_of,
    visible,
)
from services.gateway.faces.native.webhook_views import (
    EventTypeView,
    WebhookCreated,
    WebhookRequest,
    WebhookUpdate,
    WebhookView,
    created_view,
    event_types,
    webhook_view,
)
from services.gateway.http import json_response
from services.gateway.state import Gateway, gateway
from shared.errors import NotFound
from shared.messages import events as ev
from shared.messages.webhooks import (
    SubscriptionScope,
    WebhookSubscription,
)
from shared.outbound import OutboundPolicy, check_url, policy_for
from shared.webhooks.catalogue import validate_event_types
from shared.webhooks.secrets import SecretSealer
from shared.webhooks.store import WebhookStore
from shared.webhooks.subscriptions import (
    changed_subscription,
    new_subscription,
    new_subscription_id,
)


def _policy(gw: Gateway) -> OutboundPolicy:
    return policy_for(gw.settings.outbound_allow, gw.settings.jellyfin_url)


async def _shown(store: WebhookStore, sub: WebhookSubscription) -> web.Response:
    """A subscription as shown, with its last 24 hours' delivery counts."""
    recent = await store.recent_counts(sub.id)
    return json_response(webhook_view(sub, recent.get(sub.id)))


def _scope(admin: bool, sub: WebhookSubscription | None = None) -> SubscriptionScope:
    if sub is not None:
        return sub.scope
    return SubscriptionScope.ALL if admin else SubscriptionScope.OWNER


# ---- routes ---------------------------------------------------------------------------------
@both(
    "GET",
    "/event-types",
    "webhook_event_types",
    admin="Every event type a subscription can ask for, with its payload's JSON Schema",
    user="The job event types a subscription can ask for, with their payloads' JSON Schema",
    response=list[EventTypeView],
)
async def list_event_types(request: web.Request, *, admin: bool) -> web.Response:
    return json_response(event_types(admin))


@both(
    "POST",
    "",
    "create_webhook",
    admin="Subscribe an endpoint to events (of every job); the signing secret is shown once",
    user="Subscribe an endpoint to your jobs' events; the signing secret is shown once",
    status=201,
    body=WebhookRequest,
    response=WebhookCreated,
)
async def create(request: web.Request, *, admin: bool, body: WebhookRequest) -> web.Response:
    gw = gateway(request)
    check_url(body.url, _policy(gw), what="`url`")
    types = validate_event_types(body.event_types, _scope(admin))
    sub, secret = new_subscription(
        SecretSealer(gw.settings.storage_key),
        sub_id=new_subscription_id(),
        scope=_scope(admin),
        owner=caller(request).user_id,
        url=body.url,
        event_types=types,
        description=body.description,
        enabled=body.enabled,
    )
    store = await store_of(gw)
    revision = await store.subscriptions.create(sub.id, sub)
    await gw.emit(ev.webhook_event(ev.WebhookCreated, sub, revision))
    return json_response(created_view(sub, secret), 201)


@both(
    "GET",
    "",
    "list_webhooks",
    admin="Subscriptions to every job's events",
    user="Your subscriptions (job notify_url ones included)",
    response=list[WebhookView],
)
async def list_all(request: web.Request, *, admin: bool) -> web.Response:
    store = await store_of(gateway(request))
    user_id = caller(request).user_id
    subs = [s for s in await store.all_subscriptions() if visible(s, user_id, admin)]
    subs.sort(key=lambda s: (s.created_at, s.id))
    counted = await asyncio.gather(*(store.recent_counts(s.id) for s in subs))
    recent = {key: tally for found in counted for key, tally in found.items()}
    return json_response([webhook_view(s, recent.get(s.id)) for s in subs])


@both(
    "GET",
    "/{webhook_id}",
    "get_webhook",
    admin="One subscription",
    user="One of your subscriptions",
    response=WebhookView,
)
async def get_one(request: web.Request, *, admin: bool) -> web.Response:
    store = await store_of(gateway(request))
    return await _shown(store, await find_subscription(request, store, admin))


@both(
    "PUT",
    "/{webhook_id}",
    "update_webhook",
    admin="Change the fields given of a subscription (url, event_types, description, enabled)",
    user="Change the fields given of one of your subscriptions (never its secret)",
    body=WebhookUpdate,
    response=WebhookView,
)
async def update(request: web.Request, *, admin: bool, body: WebhookUpdate) -> web.Response:
    gw = gateway(request)
    store = await store_of(gw)
    sub = await find_subscription(request, store, admin)
    fields: dict[str, Any] = {}
    if body.url is not msgspec.UNSET:
        check_url(body.url, _policy(gw), what="`url`")
        fields["url"] = body.url
    if body.event_types is not msgspec.UNSET:
        fields["event_types"] = validate_event_types(body.event_types, _scope(admin, sub))
    if body.description is not msgspec.UNSET:
        fields["description"] = body.description
    enabled = None if body.enabled is msgspec.UNSET else body.enabled
    now = time.time()

    def change(current: WebhookSubscription | None) -> WebhookSubscription | None:
        if current is None:
            raise NotFound(f"No webhook {sub.id!r}.")
        return changed_subscription(current, fields, enabled=enabled, now=now)

    updated, revision, changed = await store.subscriptions.change(sub.id, change)
    assert updated is not None and revision is not None
    if changed:
        await gw.emit(ev.webhook_event(ev.WebhookUpdated, updated, revision))
    return await _shown(store, updated)


@both(
    "DELETE",
    "/{webhook_id}",
    "delete_webhook",
    admin="Delete a subscription and its delivery history (deliveries owed are dropped)",
    user="Delete one of your subscriptions and its delivery history",
    status=204,
)
async def delete(request: web.Request, *, admin: bool) -> web.Response:
    store = await store_of(gateway(request))
    sub = await find_subscription(request, store, admin)
    found = await store.subscriptions.get(sub.id)
    await store.delete_subscription(sub.id)
    revision = found.revision if found else 0
    await gateway(request).emit(ev.webhook_event(ev.WebhookDeleted, sub, revision))
    return web.Response(status=204)
