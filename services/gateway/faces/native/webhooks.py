"""Webhooks face: subscriptions as in media-server APIs.

Operators subscribe to every event at `/api/admin/webhooks`; users subscribe to their own jobs'
events at `/api/webhooks` (a job's `notify_url` makes one such subscription for that job). Both
can send a signed test delivery now, list deliveries and retry one. The notifier service does all
the delivering: this face stores subscriptions, and asks for a test or a retry with a notifier
command whose reply it waits for (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.faces.native.webhook_views import (
    DeliveryQuery,
    DeliveryView,
    EventTypeView,
    WebhookCreated,
    WebhookRequest,
    WebhookTestResult,
    WebhookUpdate,
    WebhookView,
    created_view,
    delivery_view,
    event_types,
    ping_result,
    webhook_view,
)
from services.gateway.http import json_response
from services.gateway.links import absolute_url
from services.gateway.state import Gateway, gateway
from shared.errors import BadRequest, Conflict, NotFound, Unavailable
from shared.messages import events as ev
from shared.messages.webhooks import (
    PING_REPLY,
    RETRY_REPLY,
    Delivery,
    NotifierCommand,
    RetryDelivery,
    SendTestDelivery,
    SubscriptionScope,
    WebhookSubscription,
)
from shared.nats.kv import valid_key
from shared.nats.topology import publish_command
from shared.outbound import OutboundPolicy, check_url, policy_for
from shared.webhooks.catalogue import validate_event_types
from shared.webhooks.envelope import subscription_of
from shared.webhooks.secrets import SecretSealer
from shared.webhooks.store import WebhookStore
from shared.webhooks.subscriptions import (
    changed_subscription,
    new_subscription,
    new_subscription_id,
)

TAG = Tag.WEBHOOKS
ADMIN = "/api/admin/webhooks"
USER = "/api/webhooks"

# Seconds a test delivery (sent while its caller waits) may take.
PING_TIMEOUT = 10.0
# Seconds past a notifier command's deadline that its taking is still waited for.
TAKE_MARGIN = 1.0

Impl = Callable[..., Awaitable[web.Response]]
R = TypeVar("R")


def both(
    method: str, suffix: str, name: str, admin: str, user: str, **kw: Any
) -> Callable[[Impl], Impl]:
    """Declare a route twice: for operators (every event) and for users (their own jobs)."""

    def register(impl: Impl) -> Impl:
        for is_admin, prefix, access, summary in (
            (True, ADMIN, Access.ADMIN, admin),
            (False, USER, Access.USER, user),
        ):
            handler = _bound(impl, is_admin)
            handler.__name__ = f"admin_{name}" if is_admin else name
            API.route(method, prefix + suffix, access=access, summary=summary, tag=TAG, **kw)(
                handler
            )
        return impl

    return register


def _bound(impl: Impl, is_admin: bool) -> Impl:
    async def handler(request: web.Request, **kwargs: Any) -> web.Response:
        return await impl(request, admin=is_admin, **kwargs)

    return handler


# ---- what the routes share ------------------------------------------------------------------
async def _store(gw: Gateway) -> WebhookStore:
    return await WebhookStore.open(gw.js, gw.names)


def _policy(gw: Gateway) -> OutboundPolicy:
    return policy_for(gw.settings.outbound_allow, gw.settings.jellyfin_url)


def _visible(sub: WebhookSubscription, user_id: str, admin: bool) -> bool:
    if admin:
        return sub.scope is SubscriptionScope.ALL
    return sub.scope is not SubscriptionScope.ALL and sub.owner == user_id


async def _find(request: web.Request, store: WebhookStore, admin: bool) -> WebhookSubscription:
    sub_id = request.match_info["webhook_id"]
    found = await store.subscriptions.get(sub_id) if valid_key(sub_id) else None
    if found is None or not _visible(found.value, caller(request).user_id, admin):
        raise NotFound(f"No webhook {sub_id!r}.")
    return found.value


async def _find_delivery(
    request: web.Request, store: WebhookStore, admin: bool
) -> tuple[WebhookSubscription, Delivery]:
    delivery_id = request.match_info["delivery_id"]
    sub_id = subscription_of(delivery_id)
    if valid_key(delivery_id) and valid_key(sub_id):
        sub = await store.subscriptions.get(sub_id)
        found = await store.deliveries.get(delivery_id)
        if sub and found and _visible(sub.value, caller(request).user_id, admin):
            return sub.value, found.value
    raise NotFound(f"No delivery {delivery_id!r}.")


async def _ask_notifier(
    gw: Gateway, command: NotifierCommand, decoder: msgspec.json.Decoder[R], wait: float
) -> R:
    """Publish a notifier command that replies on its `reply_to`, and wait (bounded) for the
    notifier to take it (an empty message: the command's `deadline`, after which a notifier
    drops it, is `command_timeout` away), then up to `wait` for its answer."""
    sub = await gw.nc.subscribe(command.reply_to, max_msgs=2)
    try:
        try:
            await publish_command(gw.js, gw.names, command)
        except Exception as exc:
            raise Unavailable("The job queue (NATS) is not reachable right now.") from exc
        try:
            # a moment past the deadline: a notifier that took it just in time is heard
            reply = await sub.next_msg(timeout=gw.settings.command_timeout + TAKE_MARGIN)
        except (TimeoutError, nats.errors.TimeoutError):
            raise Unavailable("No notifier took the request in time; try again.") from None
        try:
            if not reply.data:
                reply = await sub.next_msg(timeout=wait)
        except (TimeoutError, nats.errors.TimeoutError):
            raise Unavailable("The notifier did not answer in time; try again.") from None
        return decoder.decode(reply.data)
    finally:
        with contextlib.suppress(Exception):  # gone by itself after its one reply
            await sub.unsubscribe()


async def _shown(store: WebhookStore, sub: WebhookSubscription) -> web.Response:
    """A subscription as shown, with its last 24 hours' delivery counts."""
    recent = await store.recent_counts(sub.id)
    return json_response(webhook_view(sub, recent.get(sub.id)))


def _command_fields(gw: Gateway, request: web.Request) -> dict[str, Any]:
    now = time.time()
    return {
        "command_id": uuid.uuid4().hex,
        "by": caller(request).user_id,
        "at": now,
        "reply_to": gw.nc.new_inbox(),
        "deadline": now + gw.settings.command_timeout,
    }


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
    store = await _store(gw)
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
    store = await _store(gateway(request))
    user_id = caller(request).user_id
    subs = [s for s in await store.all_subscriptions() if _visible(s, user_id, admin)]
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
    store = await _store(gateway(request))
    return await _shown(store, await _find(request, store, admin))


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
    store = await _store(gw)
    sub = await _find(request, store, admin)
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
    store = await _store(gateway(request))
    sub = await _find(request, store, admin)
    found = await store.subscriptions.get(sub.id)
    await store.delete_subscription(sub.id)
    revision = found.revision if found else 0
    await gateway(request).emit(ev.webhook_event(ev.WebhookDeleted, sub, revision))
    return web.Response(status=204)


@both(
    "POST",
    "/{webhook_id}/test",
    "test_webhook",
    admin="Send a signed test delivery now; answers with the request sent and the response",
    user="Send a signed test delivery now; answers with the request sent and the response",
    response=WebhookTestResult,
    statuses=(409,),
)
async def send_test(request: web.Request, *, admin: bool) -> web.Response:
    gw = gateway(request)
    store = await _store(gw)
    sub = await _find(request, store, admin)
    command = SendTestDelivery(
        **_command_fields(gw, request), subscription_id=sub.id, timeout=PING_TIMEOUT
    )
    # the attempt, and storing it as a delivery
    sent = await _ask_notifier(gw, command, PING_REPLY, PING_TIMEOUT + gw.settings.command_timeout)
    if sent.missing:
        raise NotFound(f"No webhook {sub.id!r}.")
    if sent.refused:
        raise Conflict(sent.refused)
    return json_response(ping_result(sent))


@both(
    "GET",
    "/{webhook_id}/deliveries",
    "list_webhook_deliveries",
    admin="A subscription's deliveries, newest first, paged (Link: rel=next)",
    user="One of your subscriptions' deliveries, newest first, paged (Link: rel=next)",
    query=DeliveryQuery,
    response=list[DeliveryView],
)
async def deliveries(request: web.Request, *, admin: bool, query: DeliveryQuery) -> web.Response:
    store = await _store(gateway(request))
    sub = await _find(request, store, admin)
    if query.before is not None and subscription_of(query.before) != sub.id:
        raise BadRequest("`before` is not one of this webhook's deliveries.")
    page = await store.delivery_page(
        sub.id, status=query.status, limit=query.limit, before=query.before
    )
    headers = {}
    if page.next_before is not None:
        query_next = {**request.query, "before": page.next_before}
        headers["Link"] = f'<{absolute_url(request, request.path, query_next)}>; rel="next"'
    return json_response([delivery_view(d) for d in page.items], headers=headers)


@both(
    "GET",
    "/deliveries/{delivery_id}",
    "get_webhook_delivery",
    admin="One delivery, with its attempts and payload",
    user="One delivery to one of your subscriptions, with its attempts and payload",
    response=DeliveryView,
)
async def delivery(request: web.Request, *, admin: bool) -> web.Response:
    store = await _store(gateway(request))
    _, found = await _find_delivery(request, store, admin)
    return json_response(delivery_view(found))


@both(
    "POST",
    "/deliveries/{delivery_id}/retry",
    "retry_webhook_delivery",
    admin="Attempt a finished delivery once more, now (same webhook-id)",
    user="Attempt a finished delivery to one of your subscriptions once more, now",
    status=202,
    response=DeliveryView,
    statuses=(409,),
)
async def retry(request: web.Request, *, admin: bool) -> web.Response:
    gw = gateway(request)
    store = await _store(gw)
    _, found = await _find_delivery(request, store, admin)
    command = RetryDelivery(**_command_fields(gw, request), delivery_id=found.id)
    retried = await _ask_notifier(gw, command, RETRY_REPLY, gw.settings.command_timeout)
    if retried.refused:
        raise Conflict(retried.refused)
    if retried.missing or retried.delivery is None:
        raise NotFound(f"No delivery {found.id!r}.")
    return json_response(delivery_view(retried.delivery), 202)
