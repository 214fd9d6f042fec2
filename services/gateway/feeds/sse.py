"""Live events as Server-Sent Events (`GET /api/events`).

The feed shows what the caller may see, narrowed to some jobs and event types. SSE ids are
stream sequence numbers, so `Last-Event-ID` replays exactly what a client missed; live progress
(`event: job.progress`, asked for by name) has no id, so it leaves that pointer where it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Annotated

import msgspec
from aiohttp import hdrs, web

from services.gateway.api import API, Access, Tag, authenticate, caller
from services.gateway.feeds.connection import (
    CLOSE_GRACE,
    ErrorPayload,
    bound_send_buffers,
    forward_events,
    guard_feed,
    run_feed,
)
from services.gateway.feeds.subscriber import FeedClosed, Framed, Framing
from services.gateway.feeds.visibility import MAX_SEQ, StoredEvent, feed_filter
from services.gateway.http import error_response
from services.gateway.state import gateway
from shared.errors import BadRequest

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies must not buffer a feed
}
_KEEPALIVE = b": keepalive\n\n"
_ENCODER = msgspec.json.Encoder()

_JobIds = Annotated[
    str,
    msgspec.Meta(
        max_length=6600,
        description="only these jobs: ids separated by commas (the parameter may repeat)",
    ),
]
_Types = Annotated[
    str,
    msgspec.Meta(
        max_length=2000,
        description="only these event types, separated by commas: tags such as job.completed, "
        "or families such as job.*",
    ),
]
_ResumeAfter = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_SEQ,
        description="replay the events after this sequence number first (Last-Event-ID wins)",
    ),
]
_Token = Annotated[
    str,
    msgspec.Meta(
        max_length=4096,
        description="JWT or API key, for clients that cannot send headers (EventSource); "
        "a header is better: URLs end up in logs",
    ),
]


class FeedQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Filters of a live feed: every event the caller may see when none is given."""

    job_id: _JobIds | None = None
    types: _Types | None = None
    last_event_id: _ResumeAfter | None = None
    token: _Token | None = None


@API.route(
    "GET",
    "/api/events",
    access=Access.USER,
    query_token=True,
    tag=Tag.EVENTS,
    query=FeedQuery,
    media_type="text/event-stream",
    statuses=(406,),
    summary="Live events as Server-Sent Events (text/event-stream): `id` is the "
    "event's stream sequence, `event` its type, `data` the event; Last-Event-ID replays what "
    "was missed; `types=job.progress` adds running jobs' live progress as `event: job.progress` "
    "(`data`: job_id, status, stage, progress, speed, fps, eta_seconds; no `id`, never "
    "replayed); a client too far behind, or whose credentials stop being valid (expired, "
    "revoked, account changed), gets `event: error` and is disconnected",
)
async def event_stream(request: web.Request, query: FeedQuery) -> web.StreamResponse:
    """Stream the events the caller may see, after replaying those it missed."""
    if not _accepts_event_stream(request):
        return error_response(
            406,
            "not_acceptable",
            "This is an event stream: accept `text/event-stream` (or leave Accept out).",
        )
    gw = gateway(request)
    who = caller(request)
    wanted = feed_filter(
        who.user_id,
        who.role,
        job_ids=_listed(request.query.getall("job_id", [])),
        types=_listed([query.types or ""]),
    )
    resume_after = _resume_after(request, query)
    hub = gw.feeds
    sub = hub.subscribe(wanted)
    upto = hub.last_seq  # replay up to here; later events come live
    try:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        bound_send_buffers(request, gw.settings.feed_send_buffer)
        await response.prepare(request)
        feed = _SseFeed(request, response)
        pump = forward_events(
            hub, sub, feed, resume_after=resume_after, upto=upto, idle=gw.settings.feed_keepalive
        )
        guard = guard_feed(
            gw.identity,
            sub,
            who,
            lambda: authenticate(request, query_token=True),
            every=gw.settings.feed_recheck_seconds,
        )
        await run_feed(sub, pump, guard)
        if sub.closed is not None:
            await feed.end(sub.closed)
    finally:
        hub.unsubscribe(sub)
    return response


def sse_blocks(items: Sequence[Framed]) -> bytes:
    """Events as SSE blocks, for a response without chunked encoding (HTTP/1.0)."""
    return b"".join(item.sse for item in items)


def sse_chunk(items: Sequence[Framed]) -> bytes:
    """Events as SSE blocks in one HTTP/1.1 chunk, as aiohttp frames a chunked response."""
    body = b"".join(item.sse for item in items)
    return b"%x\r\n%s\r\n" % (len(body), body)


class _SseFeed:
    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        chunked = response.headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
        self.framing: Framing = sse_chunk if chunked else sse_blocks
        self._transport = request.transport
        self._protocol = request.protocol

    def write_now(self, data: bytes) -> bool:
        """Write framed events if the socket takes them without waiting (as the response's
        own writer would, which waits only while the transport is paused)."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._protocol.writing_paused:
            return False
        transport.write(data)
        return True

    async def send(self, items: list[StoredEvent]) -> None:
        await self.response.write(b"".join(item.sse for item in items))
        await self.request.writer.drain()

    async def idle(self) -> None:
        await self.response.write(_KEEPALIVE)
        await self.request.writer.drain()

    async def end(self, closed: FeedClosed) -> None:
        """Say why the feed ends when the client fell behind, then end it; a client that still
        reads nothing is cut off after a grace period."""
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                if closed.error:
                    reason = _ENCODER.encode(ErrorPayload(reason=closed.reason))
                    await self.response.write(b"event: error\ndata: %s\n\n" % reason)
                await self.response.write_eof()
        except TimeoutError:
            if self.request.transport is not None:
                self.request.transport.abort()
        except ConnectionError:
            pass


def _accepts_event_stream(request: web.Request) -> bool:
    """No Accept, `*/*`, `text/*` or `text/event-stream`: only a client that asks for something
    else only (`application/json`) is told this is an event stream."""
    ranges = ",".join(request.headers.getall("Accept", []))
    if not ranges.strip():
        return True
    kinds = {part.split(";", 1)[0].strip().lower() for part in ranges.split(",")}
    return bool(kinds & {"text/event-stream", "*/*", "text/*"})


def _listed(values: Iterable[str]) -> list[str]:
    """Values given as repeated parameters or separated by commas."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _resume_after(request: web.Request, query: FeedQuery) -> int | None:
    header = request.headers.get("Last-Event-ID", "").strip()
    if not header:
        return query.last_event_id
    if not (header.isascii() and header.isdigit()) or int(header) > MAX_SEQ:
        raise BadRequest("Last-Event-ID must be an event id this feed gave (a sequence number).")
    return int(header)
