"""One live feed connection, whatever carries it (SSE or WebSocket): replay what the client
missed, hand on live events from the gateway's `EventHub`, and stop when the client leaves or
the hub closes the subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Coroutine
from typing import Any, Protocol

import msgspec
import structlog
from aiohttp import web

from services.gateway.feed_events import StoredEvent
from services.gateway.feeds import EventHub, FeedClosed, Subscriber
from shared.natsio import describe

log = structlog.get_logger("vidmesh.gateway.events")

# Seconds a closed feed has to take its last words (the reason) before the connection is cut.
CLOSE_GRACE = 10.0


class ErrorPayload(msgspec.Struct, kw_only=True):
    """Why a feed ends or a client frame was refused."""

    reason: str


class Feed(Protocol):
    """What a feed connection writes to its client."""

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
    events, which wait in the queue meanwhile; no gap, no event twice."""
    sent = 0
    ahead = resume_after if resume_after is not None and resume_after > upto else None
    if ahead is not None and ahead > await hub.stream_last_seq():  # an id of an older stream
        resume_after = None
    if resume_after is not None:
        sent = max(resume_after, upto)
        if resume_after < upto:
            subjects = hub.replay_subjects(sub.filter)
            reader = hub.read(subjects=subjects, after_seq=resume_after, upto=upto)
            async with contextlib.aclosing(reader) as pages:
                async for page in pages:
                    missed = [item for item in page if sub.filter.matches(item)]
                    if missed:
                        await feed.send(missed)
    while True:
        batch = await sub.next_batch(idle)
        fresh = [item for item in batch if item.seq > sent and sub.filter.wants(item)]
        if fresh:
            await feed.send(fresh)
            sent = fresh[-1].seq
        elif not batch:
            await feed.idle()


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
