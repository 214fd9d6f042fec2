"""Events face: live events as Server-Sent Events (`GET /api/events`) or over a WebSocket
(`GET /api/ws`), and a job's history read back from the events stream.

Both live feeds show what the caller may see (events of their own jobs; moderators every job's;
administrators every event), narrowed to some jobs and event types, from the gateway's one
`EventHub`. SSE ids are stream sequence numbers, so `Last-Event-ID` replays exactly what a client
missed. A client that falls too far behind is disconnected with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Coroutine, Iterable
from datetime import datetime
from typing import Annotated, Any, Protocol

import msgspec
import nats.errors
import structlog
from aiohttp import WSMsgType, web

from services.gateway.api import API, Access, caller
from services.gateway.errors import error_response
from services.gateway.feeds import (
    MAX_JOB_IDS,
    EventHub,
    FeedClosed,
    StoredEvent,
    Subscriber,
    feed_filter,
)
from services.gateway.identity import Principal
from services.gateway.jobs_common import visible_job
from services.gateway.state import Gateway, gateway
from shared.errors import BadRequest, Unavailable, VidmeshError
from shared.messages import events
from shared.natsio import describe

log = structlog.get_logger("vidmesh.gateway.events")

TAG = "events"
MAX_SEQ = 1 << 53
# Seconds a closed feed has to take its last words (the reason) before the connection is cut.
_CLOSE_GRACE = 10.0
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies must not buffer a feed
}
_KEEPALIVE = b": keepalive\n\n"

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


class JobEventsQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which of a job's stored events to read."""

    after_seq: Annotated[
        int, msgspec.Meta(ge=0, le=MAX_SEQ, description="only events after this sequence number")
    ] = 0
    since: Annotated[datetime, msgspec.Meta(description="only events stored from then")] | None = (
        None
    )
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1000


class SequencedEvent(msgspec.Struct, kw_only=True):
    """An event with its sequence number in the events stream (a feed's `Last-Event-ID`)."""

    seq: int
    event: events.AnyEvent


# ---- WebSocket frames ----------------------------------------------------------------------
class AuthPayload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The caller's JWT or API key."""

    token: Annotated[str, msgspec.Meta(max_length=4096)]


class SubscribePayload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Only these jobs and event types (none: everything the caller may see)."""

    job_ids: Annotated[list[str], msgspec.Meta(max_length=MAX_JOB_IDS)] = msgspec.field(
        default_factory=list
    )
    types: Annotated[list[str], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)


class ClientAuth(msgspec.Struct, kw_only=True, tag_field="type", tag="c2s_auth"):
    """The first frame a client sends."""

    payload: AuthPayload


class ClientSubscribe(msgspec.Struct, kw_only=True, tag_field="type", tag="c2s_subscribe"):
    """Change what the connection receives."""

    payload: SubscribePayload = msgspec.field(default_factory=SubscribePayload)


class AuthOk(msgspec.Struct, kw_only=True):
    user_id: str
    role: str


class ErrorPayload(msgspec.Struct, kw_only=True):
    reason: str


class ServerAuthOk(msgspec.Struct, kw_only=True, tag_field="type", tag="s2c_auth_ok"):
    payload: AuthOk


class ServerSubscribed(msgspec.Struct, kw_only=True, tag_field="type", tag="s2c_subscribed"):
    payload: SubscribePayload


class ServerError(msgspec.Struct, kw_only=True, tag_field="type", tag="s2c_error"):
    payload: ErrorPayload


_CLIENT_FRAME = msgspec.json.Decoder(ClientAuth | ClientSubscribe)
_ENCODER = msgspec.json.Encoder()


# ---- the routes ----------------------------------------------------------------------------
@API.route(
    "GET",
    "/api/events",
    access=Access.USER,
    query_token=True,
    tag=TAG,
    query=FeedQuery,
    media_type="text/event-stream",
    statuses=(406,),
    summary="Live events as Server-Sent Events (text/event-stream): `id` is the "
    "event's stream sequence, `event` its type, `data` the event; Last-Event-ID replays what "
    "was missed; a client too far behind gets `event: error` and is disconnected",
)
async def event_stream(request: web.Request, query: FeedQuery) -> web.StreamResponse:
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
        _bound_buffers(request, gw.settings.feed_send_buffer)
        await response.prepare(request)
        feed = _SseFeed(request, response)
        pump = _forward(
            hub, sub, feed, resume_after=resume_after, upto=upto, idle=gw.settings.feed_keepalive
        )
        await _run_feed(sub, pump)
        if sub.closed is not None:
            await feed.end(sub.closed)
    finally:
        hub.unsubscribe(sub)
    return response


@API.route(
    "GET",
    "/api/ws",
    access=Access.PUBLIC,
    tag=TAG,
    statuses=(426,),
    summary="Live events over a WebSocket; authentication is in-band: the first frame must be "
    '{"type":"c2s_auth","payload":{"token":...}}, then c2s_subscribe narrows the feed; events '
    'come as {"type":"s2c_event","payload":{"seq","event"}}',
)
async def event_socket(request: web.Request) -> web.StreamResponse:
    gw = gateway(request)
    ws = web.WebSocketResponse(
        heartbeat=gw.settings.feed_keepalive,
        compress=False,  # frames are encoded once for every subscriber
        max_msg_size=1 << 16,
        writer_limit=gw.settings.feed_send_buffer,
        timeout=_CLOSE_GRACE,
    )
    if not ws.can_prepare(request).ok:
        answer = error_response(
            426, "upgrade_required", "This is a WebSocket endpoint: connect with a WebSocket."
        )
        answer.headers["Upgrade"] = "websocket"
        return answer
    _bound_buffers(request, gw.settings.feed_send_buffer)
    await ws.prepare(request)
    who = await _authenticate_socket(ws, gw)
    if who is None:
        return ws
    with contextlib.suppress(ConnectionError):  # a client gone already ends the loop below
        await _say(ws, ServerAuthOk(payload=AuthOk(user_id=who.user_id, role=who.role.value)))
    hub = gw.feeds
    sub = hub.subscribe(feed_filter(who.user_id, who.role))
    feed = _SocketFeed(request, ws)
    try:
        pump = _forward(hub, sub, feed, resume_after=None, upto=0, idle=gw.settings.feed_keepalive)
        await _run_feed(sub, pump, _socket_commands(ws, sub, who))
        if sub.closed is not None:
            await feed.end(sub.closed)
    finally:
        hub.unsubscribe(sub)
    with contextlib.suppress(ConnectionError):
        await ws.close()
    return ws


@API.route(
    "GET",
    "/api/jobs/{job_id}/events",
    access=Access.USER,
    tag=TAG,
    query=JobEventsQuery,
    response=list[SequencedEvent],
    summary="A job's events read back from the events stream, oldest first, with their "
    "sequence numbers",
)
async def job_events(request: web.Request, query: JobEventsQuery) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"])
    try:
        found = await gateway(request).feeds.history(
            job.id, after_seq=query.after_seq, since=query.since, limit=query.limit
        )
    except (nats.errors.Error, TimeoutError) as exc:
        raise Unavailable("The events stream (NATS) is not reachable right now.") from exc
    body = b"[%s]" % b",".join(b'{"seq":%d,"event":%s}' % (item.seq, item.raw) for item in found)
    return web.Response(body=body, content_type="application/json")


# ---- one feed connection -------------------------------------------------------------------
class _Feed(Protocol):
    async def send(self, items: list[StoredEvent]) -> None: ...

    async def idle(self) -> None: ...


async def _forward(
    hub: EventHub,
    sub: Subscriber,
    feed: _Feed,
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


async def _run_feed(sub: Subscriber, *work: Coroutine[Any, Any, None]) -> None:
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


class _SseFeed:
    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response

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
            async with asyncio.timeout(_CLOSE_GRACE):
                if closed.error:
                    reason = _ENCODER.encode(ErrorPayload(reason=closed.reason))
                    await self.response.write(b"event: error\ndata: %s\n\n" % reason)
                await self.response.write_eof()
        except TimeoutError:
            if self.request.transport is not None:
                self.request.transport.abort()
        except ConnectionError:
            pass


class _SocketFeed:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws

    async def send(self, items: list[StoredEvent]) -> None:
        for item in items:
            await self.ws.send_frame(item.ws, WSMsgType.TEXT)

    async def idle(self) -> None:
        """Nothing to do: aiohttp pings an idle WebSocket (heartbeat)."""

    async def end(self, closed: FeedClosed) -> None:
        """Close with the reason (1013 when the client fell behind); a client that still reads
        nothing is cut off after a grace period."""
        code = 1013 if closed.error else 1001  # try again later / going away
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await self.ws.close(code=code, message=_close_reason(closed.reason))
        except TimeoutError:
            if self.request.transport is not None:
                self.request.transport.abort()
        except ConnectionError:
            pass


async def _authenticate_socket(ws: web.WebSocketResponse, gw: Gateway) -> Principal | None:
    """The caller named by the first frame; else the socket is closed (1008) saying why."""
    seconds = gw.settings.ws_auth_seconds
    try:
        async with asyncio.timeout(seconds):  # a deadline: pongs do not extend it
            msg = await ws.receive()
    except TimeoutError:
        await _refuse(ws, f"no c2s_auth frame within {seconds:g} s")
        return None
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return None
    try:
        frame = _CLIENT_FRAME.decode(msg.data) if msg.type is WSMsgType.TEXT else None
    except msgspec.DecodeError:
        frame = None
    if not isinstance(frame, ClientAuth):
        await _refuse(ws, 'the first frame must be {"type":"c2s_auth","payload":{"token":...}}')
        return None
    try:
        who = gw.identity.authenticate(f"Bearer {frame.payload.token.strip()}", "")
    except VidmeshError as exc:
        await _refuse(ws, exc.message)
        return None
    if who is None:
        await _refuse(ws, "the token is not a JWT or API key")
    return who


async def _refuse(ws: web.WebSocketResponse, reason: str) -> None:
    with contextlib.suppress(ConnectionError):
        await ws.close(code=1008, message=_close_reason(reason))


async def _socket_commands(ws: web.WebSocketResponse, sub: Subscriber, who: Principal) -> None:
    """Read the client's frames until it leaves: c2s_subscribe replaces the connection's filter."""
    async for msg in ws:
        problem = ""
        try:
            frame = _CLIENT_FRAME.decode(msg.data) if msg.type is WSMsgType.TEXT else None
        except msgspec.DecodeError as exc:
            frame, problem = None, f"not a frame this server knows: {exc}"
        if isinstance(frame, ClientSubscribe):
            wanted = frame.payload
            try:
                sub.filter = feed_filter(
                    who.user_id, who.role, job_ids=wanted.job_ids, types=wanted.types
                )
            except BadRequest as exc:
                problem = exc.message
            else:
                await _say(ws, ServerSubscribed(payload=wanted))
                continue
        elif isinstance(frame, ClientAuth):
            problem = "already authenticated"
        reason = problem or "send c2s_subscribe frames"
        await _say(ws, ServerError(payload=ErrorPayload(reason=reason)))


async def _say(ws: web.WebSocketResponse, frame: msgspec.Struct) -> None:
    await ws.send_str(_ENCODER.encode(frame).decode())


# ---- small helpers -------------------------------------------------------------------------
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


def _bound_buffers(request: web.Request, size: int) -> None:
    """Keep what a client that stops reading can hold small, so that its queue shows it."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    transport.set_write_buffer_limits(high=size)


def _close_reason(reason: str) -> bytes:
    """A WebSocket close reason: at most 123 bytes of UTF-8."""
    return reason.encode()[:123].decode(errors="ignore").encode()
