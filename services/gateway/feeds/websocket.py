"""Live events over a WebSocket (`GET /api/ws`), with in-band authentication.

The first frame names the caller (`c2s_auth`); `c2s_subscribe` frames then narrow the feed to
some jobs and event types. Events come as `s2c_event` frames, and running jobs' live progress as
`s2c_progress` frames to a connection whose types name `job.progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Sequence
from typing import Annotated

import msgspec
from aiohttp import WSMsgType, web

from services.gateway.api import API, Access, Tag
from services.gateway.feeds.connection import (
    CLOSE_GRACE,
    ErrorPayload,
    bound_send_buffers,
    forward_events,
    guard_feed,
    run_feed,
)
from services.gateway.feeds.subscriber import FeedClosed, Framed, Framing, Subscriber
from services.gateway.feeds.visibility import MAX_JOB_IDS, StoredEvent, feed_filter
from services.gateway.http import error_response
from services.gateway.identity import Principal
from services.gateway.state import Gateway, gateway
from shared.errors import BadRequest, VidmeshError


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


class ServerAuthOk(msgspec.Struct, kw_only=True, tag_field="type", tag="s2c_auth_ok"):
    payload: AuthOk


class ServerSubscribed(msgspec.Struct, kw_only=True, tag_field="type", tag="s2c_subscribed"):
    payload: SubscribePayload


class ServerError(msgspec.Struct, kw_only=True, tag_field="type", tag="s2c_error"):
    payload: ErrorPayload


_CLIENT_FRAME = msgspec.json.Decoder(ClientAuth | ClientSubscribe)
_ENCODER = msgspec.json.Encoder()


# ---- the route -----------------------------------------------------------------------------
@API.route(
    "GET",
    "/api/ws",
    access=Access.PUBLIC,
    tag=Tag.EVENTS,
    statuses=(426,),
    summary="Live events over a WebSocket; authentication is in-band: the first frame must be "
    '{"type":"c2s_auth","payload":{"token":...}}, then c2s_subscribe narrows the feed; events '
    'come as {"type":"s2c_event","payload":{"seq","event"}}; with job.progress among the types, '
    'running jobs\' live progress comes as {"type":"s2c_progress","payload":{"job_id","status",'
    '"stage","progress","speed","fps","eta_seconds"}} (not stored, never replayed); the socket '
    "closes with 4401 when the credentials stop being valid (expired, revoked, account changed)",
)
async def event_socket(request: web.Request) -> web.StreamResponse:
    """Authenticate the socket's first frame, then send the events the caller may see."""
    gw = gateway(request)
    ws = web.WebSocketResponse(
        heartbeat=gw.settings.feed_keepalive,
        compress=False,  # frames are encoded once for every subscriber
        max_msg_size=1 << 16,
        writer_limit=gw.settings.feed_send_buffer,
        timeout=CLOSE_GRACE,
    )
    if not ws.can_prepare(request).ok:
        answer = error_response(
            426, "upgrade_required", "This is a WebSocket endpoint: connect with a WebSocket."
        )
        answer.headers["Upgrade"] = "websocket"
        return answer
    bound_send_buffers(request, gw.settings.feed_send_buffer)
    await ws.prepare(request)
    signed_in = await _authenticate_socket(ws, gw)
    if signed_in is None:
        return ws
    who, token = signed_in
    with contextlib.suppress(ConnectionError):  # a client gone already ends the loop below
        await _say(ws, ServerAuthOk(payload=AuthOk(user_id=who.user_id, role=who.role.value)))
    hub = gw.feeds
    sub = hub.subscribe(feed_filter(who.user_id, who.role))
    feed = _SocketFeed(request, ws)
    try:
        pump = forward_events(
            hub, sub, feed, resume_after=None, upto=0, idle=gw.settings.feed_keepalive
        )
        guard = guard_feed(
            gw.identity,
            sub,
            who,
            lambda: gw.identity.authenticate(f"Bearer {token}", ""),
            every=gw.settings.feed_recheck_seconds,
        )
        await run_feed(sub, pump, guard, _socket_commands(ws, sub, who))
        if sub.closed is not None:
            await feed.end(sub.closed)
    finally:
        hub.unsubscribe(sub)
    with contextlib.suppress(ConnectionError):
        await ws.close()
    return ws


# ---- one socket connection -----------------------------------------------------------------
def text_frames(items: Sequence[Framed]) -> bytes:
    """Events as unmasked, uncompressed WebSocket text frames (RFC 6455 5.2), one per event,
    as the server's writer frames them."""
    return b"".join(_text_frame(item.ws) for item in items)


def _text_frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class _SocketFeed:
    framing: Framing = staticmethod(text_frames)

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self._transport = request.transport
        self._protocol = request.protocol

    def write_now(self, data: bytes) -> bool:
        """Write framed events if the socket takes them without waiting and is not closing
        (frames are whole: nothing else is written in between)."""
        transport = self._transport
        if (
            self.ws.closed
            or transport is None
            or transport.is_closing()
            or self._protocol.writing_paused
        ):
            return False
        transport.write(data)
        return True

    async def send(self, items: list[StoredEvent]) -> None:
        for item in items:
            await self.ws.send_frame(item.ws, WSMsgType.TEXT)

    async def idle(self) -> None:
        """Nothing to do: aiohttp pings an idle WebSocket (heartbeat)."""

    async def end(self, closed: FeedClosed) -> None:
        """Close with the reason (4401 when the caller is no longer allowed, 1013 when the
        client fell behind); a client that still reads nothing is cut off after a grace
        period."""
        code = 4401 if closed.unauthorized else 1013 if closed.error else 1001
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await self.ws.close(code=code, message=_close_reason(closed.reason))
        except TimeoutError:
            if self.request.transport is not None:
                self.request.transport.abort()
        except ConnectionError:
            pass


async def _authenticate_socket(
    ws: web.WebSocketResponse, gw: Gateway
) -> tuple[Principal, str] | None:
    """The caller named by the first frame, and its token; else the socket is closed (1008)
    saying why."""
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
    token = frame.payload.token.strip()
    try:
        who = gw.identity.authenticate(f"Bearer {token}", "")
    except VidmeshError as exc:
        await _refuse(ws, exc.message)
        return None
    if who is None:
        await _refuse(ws, "the token is not a JWT or API key")
        return None
    return who, token


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


def _close_reason(reason: str) -> bytes:
    """A WebSocket close reason: at most 123 bytes of UTF-8."""
    return reason.encode()[:123].decode(errors="ignore").encode()
