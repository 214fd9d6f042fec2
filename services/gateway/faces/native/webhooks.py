"""Webhooks face: subscriptions as in media-server APIs.

Operators subscribe to every event at `/api/admin/webhooks`; users subscribe to their own jobs'
events at `/api/webhooks` (a job's `notify_url` makes one such subscription for that job). Both
can send a signed test delivery now, list deliveries and retry one. The notifier service does the
delivering; this face only stores subscriptions and asks for attempts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.faces.native.webhook_views import (
    DeliveryQuery,
    DeliveryView,
    EventTypeView,
    WebhookCreated,
    WebhookRequest,
    WebhookTestResult,
    WebhookView,
    created_view,
    delivery_view,
    event_types,
    ping_result,
    webhook_view,
)
from services.gateway.http import Message, json_response
from services.gateway.state import Gateway, gateway
from shared.errors import Conflict, NotFound
from shared.messages import events as ev
from shared.messages.webhooks import (
    Delivery,
    DeliveryStatus,
    SubscriptionScope,
    WebhookSubscription,
    WebhookWork,
)
from shared.nats.kv import valid_key
from shared.outbound import OutboundClient, OutboundPolicy, check_url, policy_for
from shared.webhooks.catalogue import (
    PING_TIMEOUT,
    TEST_TYPE,
    USER_AGENT,
    SecretSealer,
    SecretUnavailable,
    WebhookStore,
    attempt,
    new_subscription,
    new_subscription_id,
    ping_delivery_id,
    ping_payload,
    validate_event_types,
)

TAG = Tag.WEBHOOKS
ADMIN = "/api/admin/webhooks"
USER = "/api/webhooks"

Impl = Callable[..., Awaitable[web.Response]]


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
    sub_id = delivery_id.partition(".")[0]
    if valid_key(delivery_id) and valid_key(sub_id):
        sub = await store.subscriptions.get(sub_id)
        found = await store.deliveries.get(delivery_id)
        if sub and found and _visible(sub.value, caller(request).user_id, admin):
            return sub.value, found.value
    raise NotFound(f"No delivery {delivery_id!r}.")


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
    return json_response([webhook_view(s) for s in subs])


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
    return json_response(webhook_view(await _find(request, store, admin)))


@both(
    "PUT",
    "/{webhook_id}",
    "update_webhook",
    admin="Replace a subscription's URL, event types, description and state",
    user="Replace one of your subscriptions' URL, event types, description and state",
    body=WebhookRequest,
    response=WebhookView,
)
async def update(request: web.Request, *, admin: bool, body: WebhookRequest) -> web.Response:
    gw = gateway(request)
    store = await _store(gw)
    sub = await _find(request, store, admin)
    check_url(body.url, _policy(gw), what="`url`")
    types = validate_event_types(body.event_types, _scope(admin, sub))
    now = time.time()

    def change(current: WebhookSubscription | None) -> WebhookSubscription | None:
        if current is None:
            raise NotFound(f"No webhook {sub.id!r}.")
        fields: dict[str, Any] = {
            "url": body.url,
            "event_types": types,
            "description": body.description,
            "enabled": body.enabled,
            "updated_at": now,
        }
        if body.enabled and not current.enabled:
            fields.update(disabled_reason="", disabled_at=None, consecutive_failures=0)
        elif not body.enabled and current.enabled:
            fields.update(disabled_reason="disabled by its owner", disabled_at=now)
        return msgspec.structs.replace(current, **fields)

    updated, revision, changed = await store.subscriptions.change(sub.id, change)
    assert updated is not None and revision is not None
    if changed:
        await gateway(request).emit(ev.webhook_event(ev.WebhookUpdated, updated, revision))
    return json_response(webhook_view(updated))


@both(
    "DELETE",
    "/{webhook_id}",
    "delete_webhook",
    admin="Delete a subscription (deliveries still owed to it are dropped)",
    user="Delete one of your subscriptions (deliveries still owed to it are dropped)",
    response=Message,
)
async def delete(request: web.Request, *, admin: bool) -> web.Response:
    store = await _store(gateway(request))
    sub = await _find(request, store, admin)
    found = await store.subscriptions.get(sub.id)
    await store.subscriptions.delete(sub.id)
    revision = found.revision if found else 0
    await gateway(request).emit(ev.webhook_event(ev.WebhookDeleted, sub, revision))
    return json_response(Message(message="Webhook deleted"))


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
    try:
        secret = SecretSealer(gw.settings.storage_key).open_secret(sub.secret, sub.id)
    except SecretUnavailable as exc:
        raise Conflict(f"This webhook's signing secret cannot be used: {exc}.") from None
    now = time.time()
    delivery_id = ping_delivery_id(sub.id, now)
    payload = ping_payload(sub.id, datetime.fromtimestamp(now, UTC))
    async with OutboundClient(_policy(gw), user_agent=USER_AGENT) as client:
        attempted = await attempt(
            client, sub.url, secret, delivery_id, payload, timeout=PING_TIMEOUT
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
    await store.deliveries.create(delivery_id, record)
    return json_response(ping_result(sub.url, delivery_id, payload, attempted))


@both(
    "GET",
    "/{webhook_id}/deliveries",
    "list_webhook_deliveries",
    admin="A subscription's deliveries, newest first",
    user="One of your subscriptions' deliveries, newest first",
    query=DeliveryQuery,
    response=list[DeliveryView],
)
async def deliveries(request: web.Request, *, admin: bool, query: DeliveryQuery) -> web.Response:
    store = await _store(gateway(request))
    sub = await _find(request, store, admin)
    found = await store.deliveries_of(sub.id, status=query.status, limit=query.limit)
    return json_response([delivery_view(d) for d in found])


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
    sub, found = await _find_delivery(request, store, admin)
    if not sub.enabled:
        raise Conflict("The webhook is disabled: enable it (PUT, enabled: true) first.")
    now = time.time()

    def again(current: Delivery | None) -> Delivery | None:
        if current is None:
            raise NotFound(f"No delivery {found.id!r}.")
        if current.status is DeliveryStatus.PENDING:
            raise Conflict("This delivery is being attempted already.")
        return msgspec.structs.replace(
            current,
            status=DeliveryStatus.PENDING,
            work_seq=0,
            next_attempt_at=now,
            updated_at=now,
            finished_at=None,
            reason="",
        )

    record, _, _ = await store.deliveries.change(found.id, again)
    assert record is not None
    work = WebhookWork(delivery_id=record.id, manual=True)
    await store.enqueue(work, msg_id=f"{record.id}:manual:{record.attempt_count}")
    return json_response(delivery_view(record), 202)
