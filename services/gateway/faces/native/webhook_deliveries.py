"""A webhook subscription's deliveries, for operators and users alike: the history (paged,
newest first), one delivery, a signed test delivery sent now and a finished delivery retried by
hand. The notifier does the sending: these ask it with a command whose reply they wait for
(bounded)."""

from __future__ import annotations

from aiohttp import web

from services.gateway.faces.native.webhook_access import (
    ask_notifier,
    both,
    find_delivery,
    find_subscription,
    notifier_command_fields,
    store_of,
)
from services.gateway.faces.native.webhook_views import (
    DeliveryQuery,
    DeliveryView,
    WebhookTestResult,
    delivery_view,
    ping_result,
)
from services.gateway.http import json_response
from services.gateway.links import absolute_url
from services.gateway.state import gateway
from shared.errors import BadRequest, Conflict, NotFound
from shared.messages.webhooks import PING_REPLY, RETRY_REPLY, RetryDelivery, SendTestDelivery
from shared.webhooks.envelope import subscription_of

# Seconds a test delivery (sent while its caller waits) may take.
PING_TIMEOUT = 10.0


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
    store = await store_of(gw)
    sub = await find_subscription(request, store, admin)
    command = SendTestDelivery(
        **notifier_command_fields(gw, request), subscription_id=sub.id, timeout=PING_TIMEOUT
    )
    # the attempt, and storing it as a delivery
    sent = await ask_notifier(gw, command, PING_REPLY, PING_TIMEOUT + gw.settings.command_timeout)
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
    store = await store_of(gateway(request))
    sub = await find_subscription(request, store, admin)
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
    store = await store_of(gateway(request))
    _, found = await find_delivery(request, store, admin)
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
    store = await store_of(gw)
    _, found = await find_delivery(request, store, admin)
    command = RetryDelivery(**notifier_command_fields(gw, request), delivery_id=found.id)
    retried = await ask_notifier(gw, command, RETRY_REPLY, gw.settings.command_timeout)
    if retried.refused:
        raise Conflict(retried.refused)
    if retried.missing or retried.delivery is None:
        raise NotFound(f"No delivery {found.id!r}.")
    return json_response(delivery_view(retried.delivery), 202)
