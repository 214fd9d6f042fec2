"""What the webhook routes share: each route declared for operators (every event, under
`/api/admin/webhooks`) and for users (their own jobs, under `/api/webhooks`) at once; finding a
subscription or a delivery the caller may see; and asking the notifier with a command it
replies to (a test delivery, a retry by hand), bounded in time."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.state import Gateway
from shared.errors import NotFound, Unavailable
from shared.messages.webhooks import (
    Delivery,
    NotifierCommand,
    SubscriptionScope,
    WebhookSubscription,
)
from shared.nats.kv import valid_key
from shared.nats.topology import publish_command
from shared.webhooks.envelope import subscription_of
from shared.webhooks.store import WebhookStore

TAG = Tag.WEBHOOKS
ADMIN = "/api/admin/webhooks"
USER = "/api/webhooks"

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


async def store_of(gw: Gateway) -> WebhookStore:
    """The webhook buckets."""
    return await WebhookStore.open(gw.js, gw.names)


def visible(sub: WebhookSubscription, user_id: str, admin: bool) -> bool:
    """Operators see the subscriptions to every event; a user, their own."""
    if admin:
        return sub.scope is SubscriptionScope.ALL
    return sub.scope is not SubscriptionScope.ALL and sub.owner == user_id


async def find_subscription(
    request: web.Request, store: WebhookStore, admin: bool
) -> WebhookSubscription:
    sub_id = request.match_info["webhook_id"]
    found = await store.subscriptions.get(sub_id) if valid_key(sub_id) else None
    if found is None or not visible(found.value, caller(request).user_id, admin):
        raise NotFound(f"No webhook {sub_id!r}.")
    return found.value


async def find_delivery(
    request: web.Request, store: WebhookStore, admin: bool
) -> tuple[WebhookSubscription, Delivery]:
    delivery_id = request.match_info["delivery_id"]
    sub_id = subscription_of(delivery_id)
    if valid_key(delivery_id) and valid_key(sub_id):
        sub = await store.subscriptions.get(sub_id)
        found = await store.deliveries.get(delivery_id)
        if sub and found and visible(sub.value, caller(request).user_id, admin):
            return sub.value, found.value
    raise NotFound(f"No delivery {delivery_id!r}.")


async def ask_notifier(
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


def notifier_command_fields(gw: Gateway, request: web.Request) -> dict[str, Any]:
    now = time.time()
    return {
        "command_id": uuid.uuid4().hex,
        "by": caller(request).user_id,
        "at": now,
        "reply_to": gw.nc.new_inbox(),
        "deadline": now + gw.settings.command_timeout,
    }
