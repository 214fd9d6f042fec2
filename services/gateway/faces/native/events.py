"""Events face: a job's history read back from the events stream
(`GET /api/jobs/{job_id}/events`), and what the face's routes share.

The live feeds are in the gateway's `feeds/`: `sse.py` (Server-Sent Events, `GET /api/events`)
and `websocket.py` (WebSocket, `GET /api/ws`), both on `connection.py`. They show what
the caller may see (events of their own jobs; moderators every job's; administrators every event)
from the gateway's one `EventHub`; a client that falls too far behind is disconnected with the
reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
import nats.errors
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.faces.native.jobs_common import visible_job
from services.gateway.feeds.visibility import MAX_SEQ
from services.gateway.state import gateway
from shared.errors import Unavailable
from shared.messages import events

TAG = Tag.EVENTS


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
    """The job's stored events, oldest first, with their sequence numbers."""
    job = await visible_job(request, request.match_info["job_id"])
    try:
        found = await gateway(request).feeds.history(
            job.id, after_seq=query.after_seq, since=query.since, limit=query.limit
        )
    except (nats.errors.Error, TimeoutError) as exc:
        raise Unavailable("The events stream (NATS) is not reachable right now.") from exc
    body = b"[%s]" % b",".join(b'{"seq":%d,"event":%s}' % (item.seq, item.raw) for item in found)
    return web.Response(body=body, content_type="application/json")
