"""One live feed connection, whatever carries it (SSE or WebSocket): replay what the client
missed, hand on live events from the gateway's `EventHub`, and stop when the client leaves, the
hub closes the subscriber, or the caller is no longer allowed (`guard_feed`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import msgspec
import structlog
from aiohttp import web

from services.gateway.feeds.hub import EventHub
from services.gateway.feeds.subscriber import FeedClosed, Sink, Subscriber
from services.gateway.feeds.visibility import StoredEvent
from services.gateway.identity import Identity, Principal
from shared.errors import VidmeshError
from shared.messages.accounts import RANK
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.gateway.events")

# Seconds a closed feed has to take its last words (the reason) before the connection is cut.
CLOSE_GRACE = 10.0


class ErrorPayload(msgspec.Struct, kw_only=True):
    """Why a feed ends or a client frame was refused."""

    reason: str


class Feed(Sink, Protocol):
    """What a feed connection writes to its client: events and keep-alives, waiting for a client
    that reads slowly; and, as the hub's `Sink`, events framed once for every such connection,
    written only if the socket takes them at once."""

    async def send(self, items: list[StoredEvent]) -> None: ...

    async def idle(self) -> None: ...


async def forward_events(
    hub: EventHub,
    sub: Subscriber,
    feed: Feed,
    *,
    resume_after: int | None,
    upto: int,
    idle: float,
) -> None:
    """Replay what the client missed (after `resume_after`, up to `upto`), then hand on live
    events, which wait in the queue meanwhile; no gap, no event twice. Once replayed, the hub
    writes live events straight to the client while this waits with nothing queued."""
    ahead = resume_after if resume_after is not None and resume_after > upto else None
    if ahead is not None and ahead > await hub.stream_last_seq():  # an id of an older stream
        resume_after = None
    if resume_after is not None:
        sub.sent = max(resume_after, upto)
        if resume_after < upto:
            subjects = hub.replay_subjects(sub.filter)
            reader = hub.read(subjects=subjects, after_seq=resume_after, upto=upto)
            async with contextlib.aclosing(reader) as pages:
                async for page in pages:
                    missed = [item for item in page if sub.filter.matches(item)]
                    if missed:
                        await feed.send(missed)
    loop = asyncio.get_running_loop()
    sub.active_at = loop.time()
    sub.sink = feed
    while True:
        batch = await sub.next_batch(idle)
        fresh = [item for item in batch if item.seq > sub.sent and sub.filter.wants(item)]
        if fresh:
            await feed.send(fresh)
            sub.sent = fresh[-1].seq
            sub.active_at = loop.time()
        elif not batch:
            await feed.idle()
            sub.active_at = loop.time()


async def guard_feed(
    identity: Identity,
    sub: Subscriber,
    who: Principal,
    recheck: Callable[[], Principal | None],
    *,
    every: float,
) -> None:
    """Close the subscriber as soon as its caller is no longer allowed: checked again at once
    when the account or its keys change (password, role, disabled, key deleted), when the
    access token expires, and every `every` seconds."""
    changed = identity.watch_account(who.user_id)
    try:
        while True:
            # Checked first as soon as the watch is set: a change made between the caller's
            # sign-in and now would set no event for this feed.
            changed.clear()
            refusal = _refusal(recheck, who)
            if refusal:
                log.info("feeds.access_ended", user_id=who.user_id, reason=refusal)
                sub.close(f"Access ended: {refusal}", unauthorized=True)
                return
            wait = every
            if who.expires_at:
                wait = min(wait, max(who.expires_at - time.time(), 0.0) + 0.05)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await changed.wait()
    finally:
        identity.unwatch_account(who.user_id, changed)


def _refusal(recheck: Callable[[], Principal | None], opened_by: Principal) -> str:
    """Why the caller may no longer hold the feed it opened ("" while it may)."""
    try:
        now = recheck()
    except VidmeshError as exc:
        return exc.message
    if now is None or now.user_id != opened_by.user_id:
        return "the credentials are gone."
    if RANK[now.role] < RANK[opened_by.role]:  # the feed shows what the old role could see
        return f"the account's role is now {now.role.value}; open the feed again."
    return ""


async def run_feed(sub: Subscriber, *work: Coroutine[Any, Any, None]) -> None:
    """Run a feed's coroutines until one ends (the client left, or the pump stopped) or the hub
    closes the subscriber, which also stops a pump blocked on a client that does not read."""
    tasks = [asyncio.create_task(coro) for coro in work]

    def stop() -> None:
        for task in tasks:
            task.cancel()

    sub.on_close = stop
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sub.on_close = None
        stop()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception) and not isinstance(outcome, FeedClosed | ConnectionError):
            log.warning("feeds.connection_failed", **describe(outcome))


def bound_send_buffers(request: web.Request, size: int) -> None:
    """Keep what a client that stops reading can hold small, so that its queue shows it."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    transport.set_write_buffer_limits(high=size)
