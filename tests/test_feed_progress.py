"""Live job progress on the event feeds (`job.progress`): asked for by name, shown only to whom
may see the job, as `GET /api/jobs/{id}` shows it, never stored, never holding up a feed.

The hub's side runs without NATS; a real system runs a job slow enough to show its progress
over a WebSocket and over Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from services.gateway.feeds.progress import ProgressPayload, offer_progress
from services.gateway.feeds.sse import sse_blocks
from services.gateway.feeds.subscriber import Subscriber
from services.gateway.feeds.visibility import StoredEvent, feed_filter
from services.gateway.feeds.websocket import text_frames
from shared.errors import BadRequest
from shared.messages.accounts import Role
from shared.messages.records import JobStatus
from tests.harness import ALICE, Api, System
from tests.jellyfin_standin import JellyfinStandIn
from tests.test_feed_fanout import IDLE, ClientSocket, hub, job_accepted
from tests.test_feeds import open_feed

RUNNING = ProgressPayload(
    job_id="x",
    status=JobStatus.RUNNING,
    stage="encoding",
    progress=42.5,
    speed=2.0,
    fps=30.0,
    eta_seconds=3.5,
)


# ---- the hub's side, without NATS ----------------------------------------------------------
@pytest.fixture
async def waiting() -> AsyncIterator[list[asyncio.Task[list[StoredEvent]]]]:
    """Connections waiting for events (the hub may write to them); cancelled afterwards."""
    tasks: list[asyncio.Task[list[StoredEvent]]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def wait_on(
    sub: Subscriber, sink: ClientSocket, tasks: list[asyncio.Task[list[StoredEvent]]]
) -> None:
    sub.sink = sink
    sub.active_at = asyncio.get_running_loop().time()
    tasks.append(asyncio.create_task(sub.next_batch(IDLE)))
    await asyncio.sleep(0)  # let it start waiting


async def test_progress_goes_to_the_feeds_that_named_it_and_may_see_the_job(
    waiting: list[asyncio.Task[list[StoredEvent]]],
) -> None:
    feeds = hub()
    # Given waiting feeds that asked for job.progress (an administrator, a moderator, Ann, Ann
    # on job x, Ann on another job, Ben) and Ann's feeds that did not (all, or job.*)
    asked = {
        "admin": feed_filter("root", Role.ADMIN, types=["job.progress"]),
        "moderator": feed_filter("mod", Role.MODERATOR, types=["job.progress"]),
        "ann": feed_filter("ann", Role.USER, types=["job.progress", "job.*"]),
        "ann_x": feed_filter("ann", Role.USER, job_ids=["x"], types=["job.progress"]),
        "ann_y": feed_filter("ann", Role.USER, job_ids=["y"], types=["job.progress"]),
        "ben": feed_filter("ben", Role.USER, types=["job.progress"]),
        "ann_all": feed_filter("ann", Role.USER),
        "ann_jobs": feed_filter("ann", Role.USER, types=["job.*"]),
    }
    sockets = {name: ClientSocket() for name in asked}
    for name, wanted in asked.items():
        await wait_on(feeds.subscribe(wanted), sockets[name], waiting)
    # When the progress of Ann's job x is offered
    taken = offer_progress(feeds, "ann", RUNNING, 0.0)
    # Then exactly the feeds that named job.progress and may see job x get it
    got = {name for name, sink in sockets.items() if sink.writes}
    assert got == {"admin", "moderator", "ann", "ann_x"} and taken == len(got)
    # as an SSE message with the payload and no id (Last-Event-ID stays on the stored events)
    [written] = sockets["ann"].writes
    assert written.startswith(b"event: job.progress\ndata: ") and b"id:" not in written
    data = json.loads(written.split(b"data: ", 1)[1])
    assert data == {
        "job_id": "x",
        "status": "running",
        "stage": "encoding",
        "progress": 42.5,
        "speed": 2.0,
        "fps": 30.0,
        "eta_seconds": 3.5,
    }
    # framed once for every feed over the same carrier
    assert all(sockets[name].writes == [written] for name in got)


async def test_a_websocket_gets_progress_as_an_s2c_progress_frame(
    waiting: list[asyncio.Task[list[StoredEvent]]],
) -> None:
    feeds = hub()
    sink = ClientSocket(text_frames)
    await wait_on(
        feeds.subscribe(feed_filter("ann", Role.USER, types=["job.progress"])), sink, waiting
    )
    offer_progress(feeds, "ann", RUNNING, 0.0)
    [frame] = sink.writes
    assert frame[:2] == b"\x81\x7e"  # one unmasked text frame, its length in two bytes
    assert int.from_bytes(frame[2:4]) == len(frame) - 4
    body = json.loads(frame[4:])
    assert body["type"] == "s2c_progress" and body["payload"]["job_id"] == "x"
    assert body["payload"]["progress"] == 42.5


async def test_progress_a_busy_or_slow_feed_cannot_take_is_dropped_and_its_events_still_come(
    waiting: list[asyncio.Task[list[StoredEvent]]],
) -> None:
    feeds = hub()
    wanted = feed_filter("ann", Role.USER, types=["job.progress", "job.*"])
    # Given a feed whose socket is full, and one still replaying (not waiting yet)
    full_socket = ClientSocket(sse_blocks)
    full_socket.full = True
    full = feeds.subscribe(wanted)
    await wait_on(full, full_socket, waiting)
    replaying = feeds.subscribe(wanted)
    # When progress comes many times (more than the queue holds)
    taken = [offer_progress(feeds, "ann", RUNNING, 0.0) for _ in range(feeds.queue_size * 3)]
    # Then neither took it, neither was closed, and nothing waits in their queues
    assert taken == [0] * len(taken) and full.closed is None and replaying.closed is None
    # And the events that follow still reach them
    feeds._hand_out([job_accepted(1, "ann", "x")])
    assert [item.seq for item in await replaying.next_batch(IDLE)] == [1]
    assert [item.seq for item in await waiting[0]] == [1]


def test_no_family_includes_progress_it_is_asked_for_by_name() -> None:
    assert not feed_filter("ann", Role.USER, types=["job.*"]).progress
    assert not feed_filter("ann", Role.USER).progress
    assert feed_filter("ann", Role.USER, types=[" job.progress "]).progress
    with pytest.raises(BadRequest, match="job.progress"):
        feed_filter("ann", Role.USER, types=["job.progres"])


# ---- a real system ----------------------------------------------------------------------------
def slow_source(jellyfin: JellyfinStandIn) -> str:
    """A 20 s MPEG-TS clip served at 300 kB/s: ffmpeg works on it for about three seconds."""
    return jellyfin.stream_url("long_ts", ALICE, rate="300000").replace("/stream?", "/live?")


async def socket_feed(
    http: aiohttp.ClientSession, system: System, api: Api, types: list[str]
) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket feed, signed in and subscribed to `types`."""
    ws = await http.ws_connect(f"{system.url}/api/ws")
    await ws.send_json({"type": "c2s_auth", "payload": {"token": api.token}})
    assert (await ws.receive_json(timeout=5))["type"] == "s2c_auth_ok"
    await ws.send_json({"type": "c2s_subscribe", "payload": {"types": types}})
    assert (await ws.receive_json(timeout=5))["type"] == "s2c_subscribed"
    return ws


async def frames_until_completed(
    ws: aiohttp.ClientWebSocketResponse, job_id: str, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """The frames received up to and including job `job_id`'s job.completed event."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.receive_json()
            frames.append(frame)
            event = frame["payload"].get("event", {}) if frame["type"] == "s2c_event" else {}
            if event.get("type") == "job.completed" and event.get("job_id") == job_id:
                return frames


def progress_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame["payload"] for frame in frames if frame["type"] == "s2c_progress"]


async def test_a_websocket_that_asks_for_job_progress_sees_its_job_move_and_no_other_feed_does(
    system: System,
    ann: Api,
    ben: Api,
    admin_api: Api,
    http: aiohttp.ClientSession,
    jellyfin: JellyfinStandIn,
) -> None:
    # Given Ann's feed asking for progress, Ann's feed asking for job events only, Ben's and the
    # administrator's feeds asking for progress
    watching = await socket_feed(http, system, ann, ["job.progress", "job.completed"])
    events_only = await socket_feed(http, system, ann, ["job.*"])
    bens = await socket_feed(http, system, ben, ["job.progress", "job.completed"])
    admins = await socket_feed(http, system, admin_api, ["job.progress"])
    # When Ann's job takes a few seconds to transcode
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": slow_source(jellyfin)})
    seen = await frames_until_completed(watching, job["id"])
    # Then her progress feed saw it move, before job.completed, with the job view's values
    moving = progress_of(seen)
    assert len(moving) >= 2, seen
    assert {p["job_id"] for p in moving} == {job["id"]}
    assert {p["status"] for p in moving} == {"running"}
    assert all(
        p.keys() == {"job_id", "status", "stage", "progress", "speed", "fps"} | {"eta_seconds"}
        for p in moving
    )
    percents = [p["progress"] for p in moving]
    assert percents == sorted(percents) and all(0 <= p < 100 for p in percents)
    assert any(p["stage"] == "encoding" and p["speed"] for p in moving)
    assert seen[-1]["type"] == "s2c_event"
    # And her feed that did not ask for progress got the job's events and no progress
    plain = await frames_until_completed(events_only, job["id"])
    assert progress_of(plain) == [] and {f["type"] for f in plain} == {"s2c_event"}
    # And the administrator saw the job's progress too
    async with asyncio.timeout(10):
        first = await admins.receive_json()
    assert first["type"] == "s2c_progress" and first["payload"]["job_id"] == job["id"]
    # But Ben's feed got nothing of Ann's job: the first frames it gets are his own job's
    mine = await ben.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
    )
    his = await frames_until_completed(bens, mine["id"])
    assert {
        f["payload"]["job_id"] if f["type"] == "s2c_progress" else f["payload"]["event"]["job_id"]
        for f in his
    } == {mine["id"]}
    for ws in (watching, events_only, bens, admins):
        await ws.close()


async def test_sse_carries_progress_as_job_progress_messages_without_an_id(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given an SSE feed asking for progress and the job events
    feed = await open_feed(ann, "?types=job.progress,job.*")
    # When Ann's job takes a few seconds to transcode
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": slow_source(jellyfin)})
    seen = await feed.until("job.completed", job["id"], timeout=60)
    # Then progress comes as `event: job.progress` with no id, between the stored events
    moving = [m for m in seen if m.event == "job.progress"]
    assert len(moving) >= 2, [(m.event, m.id) for m in seen]
    assert all(m.id is None and m.data["job_id"] == job["id"] for m in moving)
    assert [m.data["progress"] for m in moving] == sorted(m.data["progress"] for m in moving)
    stored = [m for m in seen if m.event != "job.progress"]
    assert stored[0].event == "job.accepted" and all(m.id is not None for m in stored)
    assert seen.index(moving[0]) > seen.index(stored[0])
    feed.close()
