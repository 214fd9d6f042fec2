"""Event feeds as clients use them: Server-Sent Events (with Last-Event-ID), a WebSocket with
in-band authentication, and a job's history read back from the events stream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest_asyncio

from services.gateway.state import GATEWAY
from tests.harness import ALICE, Api, System, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn

SSE = {"Accept": "text/event-stream"}


@dataclass
class Message:
    """One SSE message, or a comment line (`comment` set)."""

    id: int | None = None
    event: str = "message"
    data: Any = None
    comment: str | None = None


class Feed:
    """A client of `GET /api/events` reading the stream as EventSource does."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 15.0) -> Message:
        async with asyncio.timeout(timeout):
            message = Message()
            seen = False
            while True:
                line = (await self.response.content.readline()).decode()
                assert line, "the feed ended"
                line = line.rstrip("\n")
                if line.startswith(":"):
                    return Message(comment=line[1:].strip())
                if not line:
                    if seen:
                        return message
                    continue
                field, _, value = line.partition(": ")
                seen = True
                if field == "id":
                    message.id = int(value)
                elif field == "event":
                    message.event = value
                elif field == "data":
                    message.data = json.loads(value)

    async def events(self, count: int, timeout: float = 20.0) -> list[Message]:
        """The next `count` events (comments skipped)."""
        found: list[Message] = []
        while len(found) < count:
            message = await self.next(timeout)
            if message.comment is None:
                found.append(message)
        return found

    async def until(self, event: str, job_id: str, timeout: float = 30.0) -> list[Message]:
        """Events up to and including `event` of job `job_id`."""
        found: list[Message] = []
        while True:
            message = await self.next(timeout)
            if message.comment is not None:
                continue
            found.append(message)
            if message.event == event and message.data["job_id"] == job_id:
                return found

    def close(self) -> None:
        self.response.close()


async def open_feed(
    api: Api, query: str = "", headers: dict[str, str] | None = None, *, auth: bool = True
) -> Feed:
    sent = {**SSE, **(api.headers() if auth else {}), **(headers or {})}
    response = await api.session.get(f"{api.base}/api/events{query}", headers=sent)
    assert response.status == 200, (response.status, await response.text())
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return Feed(response)


async def history(api: Api, job_id: str, query: str = "") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await api.ok("GET", f"/api/jobs/{job_id}/events{query}")
    return found


async def paused_jobs(api: Api, jellyfin: JellyfinStandIn, count: int, tag: str) -> list[str]:
    """`count` jobs waiting in a paused batch: each adds one `job.accepted` event, no work."""
    jobs = [{"source": jellyfin.stream_url("fits", ALICE, n=f"{tag}{n}")} for n in range(count)]
    made = await api.ok("POST", "/api/jobs/bulk", 201, json={"jobs": jobs, "paused": True})
    return [item["job"]["id"] for item in made["results"]]


def seqs(messages: list[Message]) -> list[int | None]:
    return [m.id for m in messages]


# ---- SSE -----------------------------------------------------------------------------------
async def test_a_users_feed_carries_their_jobs_events_in_stream_order(
    system: System, ann: Api, ben: Api, admin_api: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given feeds for Ann, Ben and the administrator
    ann_feed = await open_feed(ann)
    ben_feed = await open_feed(ben)
    admin_feed = await open_feed(admin_api, "?types=job.accepted,rendition.*")
    # When Ann's job runs to completion
    job = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
    )
    seen = await ann_feed.until("job.completed", job["id"])
    # Then Ann sees its events in order, with ids that are the events' stream sequences
    assert seen[0].event == "job.accepted" and seen[-1].data["status"] == "completed"
    assert all(m.data["job_id"] == job["id"] and m.data["type"] == m.event for m in seen)
    stored = await history(ann, job["id"])
    assert [(m.id, m.event) for m in seen] == [(s["seq"], s["event"]["type"]) for s in stored]
    assert seqs(seen) == sorted({m.id for m in seen})
    stream = system.nc.jetstream()
    raw = await stream.get_msg(system.names.events_stream, seen[0].id)
    assert raw.subject == system.names.job_event(job["id"], "accepted")
    assert json.loads(raw.data or b"") == seen[0].data
    # And the administrator sees them too, with the rendition's events
    admin_seen = [await admin_feed.next()]
    while admin_seen[-1].event != "rendition.succeeded":
        admin_seen.append(await admin_feed.next())
    assert admin_seen[0].id == seen[0].id and admin_seen[0].data["job_id"] == job["id"]
    assert {m.event for m in admin_seen} <= {"job.accepted"} | {
        f"rendition.{k}" for k in ("dispatched", "started", "succeeded")
    }
    # But Ben's feed carries none of them: the first event it gets is his own job's
    mine = await ben.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("hevc", ALICE)}
    )
    first = (await ben_feed.events(1))[0]
    assert first.event == "job.accepted" and first.data["job_id"] == mine["id"]
    assert first.id is not None and first.id > seen[-1].id  # type: ignore[operator]
    for feed in (ann_feed, ben_feed, admin_feed):
        feed.close()


async def test_a_token_in_the_query_opens_the_feed_and_nowhere_else(
    system: System, ann: Api, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    key = (await ann.ok("POST", "/api/account/api-keys", 201, json={"name": "feed"}))["key"]
    anonymous = Api(http, system.url)
    # EventSource cannot send headers: a JWT or an API key in `?token=` opens the feed
    by_token = await open_feed(anonymous, f"?token={ann.token}", auth=False)
    by_key = await open_feed(anonymous, f"?token={key}", auth=False)
    [job_id] = await paused_jobs(ann, jellyfin, 1, "token")
    for feed in (by_token, by_key):
        [accepted] = await feed.events(1)
        assert accepted.event == "job.accepted" and accepted.data["job_id"] == job_id
        feed.close()
    # A bad token is a 401 with the JSON error envelope
    status, body, _ = await anonymous.call("GET", "/api/events?token=nonsense", headers=SSE)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body, _ = await anonymous.call("GET", "/api/events", headers=SSE)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    # Other routes do not take a token from the URL
    status, body, _ = await anonymous.call("GET", f"/api/jobs?token={ann.token}")
    assert status == 401
    # A client that asks for something else only is told this is an event stream
    status, body, _ = await ann.call("GET", "/api/events", headers={"Accept": "application/json"})
    assert status == 406 and "text/event-stream" in body["error"]["message"]
    status, body, _ = await ann.call("GET", "/api/events?types=job.nonsense", headers=SSE)
    assert status == 400 and "job.nonsense" in body["error"]["message"]


async def test_feeds_filter_by_job_and_by_event_type(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given two jobs of Ann's waiting in a paused batch
    made = await ann.ok(
        "POST",
        "/api/jobs/bulk",
        201,
        json={"jobs": [{"source": jellyfin.stream_url("fits", ALICE, n=str(n))} for n in (1, 2)]},
    )
    first, second = (item["job"]["id"] for item in made["results"])
    only_second = await open_feed(ann, f"?job_id={second}")
    both_by_list = await open_feed(ann, f"?job_id={first},{second}&types=job.completed")
    # (a plain HTTP client that sends no event-stream Accept header gets the stream too)
    completions = await open_feed(ann, "?types=job.completed", headers={"Accept": "*/*"})
    repeated = await open_feed(ann, f"?job_id={first}&job_id={second}&types=job.*")
    # When both run to completion
    await ann.wait_job(first, "completed")
    await ann.wait_job(second, "completed")
    # Then each feed carries only what it asked for
    seen = await only_second.until("job.completed", second)
    assert {m.data["job_id"] for m in seen} == {second}
    done = await both_by_list.events(2)
    assert {m.data["job_id"] for m in done} == {first, second}
    assert {m.event for m in done} == {"job.completed"}
    assert [m.data["job_id"] for m in await completions.events(2)] == [
        m.data["job_id"] for m in done
    ]
    jobs_only = await repeated.until("job.completed", second)
    assert {m.data["job_id"] for m in jobs_only} == {first, second}
    for feed in (only_second, both_by_list, completions, repeated):
        feed.close()


async def test_reconnecting_with_last_event_id_replays_exactly_the_missed_events(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given a feed that has read the first events, then dropped
    feed = await open_feed(ann)
    early = await paused_jobs(ann, jellyfin, 3, "early")
    read = await feed.events(2)
    feed.close()
    last = read[-1].id
    assert [m.data["job_id"] for m in read] == early[:2]
    # When more happens while it is away
    later = await paused_jobs(ann, jellyfin, 4, "later")
    missed = [
        e for job_id in early + later for e in await history(ann, job_id, f"?after_seq={last}")
    ]
    missed.sort(key=lambda e: e["seq"])
    assert len(missed) == 5
    # Then reconnecting with Last-Event-ID replays every missed event once, in order,
    again = await open_feed(ann, headers={"Last-Event-ID": str(last)})
    replayed = await again.events(len(missed))
    assert [(m.id, m.data) for m in replayed] == [(e["seq"], e["event"]) for e in missed]
    # and then goes on live, with nothing twice
    [fresh] = await paused_jobs(ann, jellyfin, 1, "fresh")
    [live] = await again.events(1)
    assert live.data["job_id"] == fresh and live.id > replayed[-1].id  # type: ignore[operator]
    again.close()
    # `?last_event_id=` does the same for clients that open the first connection themselves
    by_query = await open_feed(ann, f"?last_event_id={last}")
    assert seqs(await by_query.events(len(missed) + 1)) == seqs(replayed) + [live.id]
    by_query.close()


async def test_a_jobs_history_is_read_back_from_the_events_stream(
    system: System, ann: Api, ben: Api, admin_api: Api, jellyfin: JellyfinStandIn
) -> None:
    job = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
    )
    await ann.wait_job(job["id"], "completed")

    async def whole() -> list[dict[str, Any]] | None:
        found = await history(ann, job["id"])
        return found if found[-1]["event"]["type"] == "job.completed" else None

    stored = await eventually(whole, timeout=10, what="the job.completed event")
    assert stored[0]["event"]["type"] == "job.accepted"
    assert all(e["event"]["job_id"] == job["id"] for e in stored)
    assert [e["seq"] for e in stored] == sorted({e["seq"] for e in stored})
    after = await history(ann, job["id"], f"?after_seq={stored[0]['seq']}")
    assert after == stored[1:]
    assert await history(ann, job["id"], "?limit=2") == stored[:2]
    assert await history(ann, job["id"], "?since=2999-01-01T00:00:00Z") == []
    assert await history(ann, job["id"], "?since=2000-01-01T00:00:00Z") == stored
    assert await history(admin_api, job["id"]) == stored
    status, body, _ = await ben.call("GET", f"/api/jobs/{job['id']}/events")
    assert status == 404 and body["error"]["code"] == "not_found"


# ---- a gateway with small limits -----------------------------------------------------------
@pytest_asyncio.fixture
async def tight(env: dict[str, str]) -> AsyncIterator[System]:
    """A system whose feeds hold 5 events, ping every 0.3 s and wait 0.5 s for WebSocket auth."""
    running = await start_system(
        {
            **env,
            "VIDMESH_FEED_QUEUE": "5",
            "VIDMESH_FEED_SEND_BUFFER": "4096",
            "VIDMESH_FEED_KEEPALIVE": "0.3",
            "VIDMESH_WS_AUTH_SECONDS": "0.5",
        },
        "scheduler",
        "gateway",
    )
    yield running
    await stop_system(running)


@pytest_asyncio.fixture
async def tight_ann(http: aiohttp.ClientSession, tight: System) -> Api:
    return await Api(http, tight.url).as_user("ann")


async def test_a_client_that_stops_reading_is_cut_off_while_others_get_every_event(
    tight: System, tight_ann: Api, jellyfin: JellyfinStandIn
) -> None:
    ann = tight_ann
    # Given a client that opens the feed and then reads nothing, with a small receive buffer
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.setblocking(False)
    loop = asyncio.get_running_loop()
    url = urlsplit(tight.url)
    await loop.sock_connect(stalled, (url.hostname, url.port))
    request = (
        f"GET /api/events HTTP/1.0\r\nHost: {url.netloc}\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {ann.token}\r\n\r\n"
    )
    await loop.sock_sendall(stalled, request.encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += await loop.sock_recv(stalled, 1)
    assert received.startswith(b"HTTP/1.0 200"), received
    # and a client that reads
    reading = await open_feed(ann)
    # When many events come
    made = [job for n in range(2) for job in await paused_jobs(ann, jellyfin, 100, f"b{n}-")]
    # Then the reading client gets every one of them, in order
    got = await reading.events(len(made), timeout=30)
    assert [m.data["job_id"] for m in got] == made
    assert seqs(got) == sorted({m.id for m in got})
    # And the stalled one, once it reads, finds the events it had, then why it was cut off
    body = b""
    async with asyncio.timeout(10):
        while chunk := await loop.sock_recv(stalled, 65536):
            body += chunk
    stalled.close()
    blocks = [block for block in body.decode().split("\n\n") if block.strip()]
    *delivered, last = blocks
    assert last.startswith("event: error\ndata: "), last
    assert json.loads(last.split("data: ", 1)[1])["reason"].startswith("too slow")
    ids = [int(b.split("\n")[0].removeprefix("id: ")) for b in delivered if b.startswith("id: ")]
    assert 0 < len(ids) < len(made) and ids == seqs(got)[: len(ids)]
    reading.close()


async def test_an_idle_feed_gets_keepalive_comments_and_is_let_go_when_the_client_leaves(
    tight: System, tight_ann: Api
) -> None:
    hub = tight.gateway.app[GATEWAY].feeds
    feed = await open_feed(tight_ann)
    started = time.monotonic()
    first = await feed.next(timeout=5)
    assert first.comment == "keepalive" and time.monotonic() - started < 3
    assert (await feed.next(timeout=5)).comment == "keepalive"
    assert len(hub) == 1
    feed.close()
    await eventually(lambda: len(hub) == 0, timeout=5, what="the hub to let the feed go")


async def test_open_feeds_end_cleanly_when_the_gateway_stops(
    tight: System, tight_ann: Api, http: aiohttp.ClientSession
) -> None:
    feed = await open_feed(tight_ann)
    async with http.ws_connect(f"{tight.url}/api/ws") as ws:
        await ws.send_json({"type": "c2s_auth", "payload": {"token": tight_ann.token}})
        assert (await ws.receive_json(timeout=5))["type"] == "s2c_auth_ok"
        started = time.monotonic()
        stopping = asyncio.create_task(tight.stop("gateway"))
        closed = await ws.receive(timeout=5)
        assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 1001, closed
        rest = await asyncio.wait_for(feed.response.content.read(), 5)
        assert b"event: error" not in rest  # an end, not an error: clients reconnect elsewhere
        await stopping
    assert time.monotonic() - started < 5
    feed.close()


# ---- WebSocket ------------------------------------------------------------------------------
async def test_a_websocket_authenticates_in_band_then_receives_what_it_subscribed_to(
    tight: System, tight_ann: Api, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    ann = tight_ann
    me = await ann.ok("GET", "/api/users/me")
    async with http.ws_connect(f"{tight.url}/api/ws") as ws:
        await ws.send_json({"type": "c2s_auth", "payload": {"token": ann.token}})
        ok = await ws.receive_json(timeout=5)
        assert ok == {"type": "s2c_auth_ok", "payload": {"user_id": me["id"], "role": "user"}}
        subscribe = {"job_ids": [], "types": ["job.accepted"]}
        await ws.send_json({"type": "c2s_subscribe", "payload": subscribe})
        assert await ws.receive_json(timeout=5) == {"type": "s2c_subscribed", "payload": subscribe}
        made = await paused_jobs(ann, jellyfin, 2, "ws")
        frames = [await ws.receive_json(timeout=5) for _ in made]
        assert [f["type"] for f in frames] == ["s2c_event", "s2c_event"]
        assert [f["payload"]["event"]["job_id"] for f in frames] == made
        stored = await history(ann, made[0])
        assert frames[0]["payload"]["seq"] == stored[0]["seq"]
        await ws.send_json({"type": "c2s_subscribe", "payload": {"types": ["job.nonsense"]}})
        error = await ws.receive_json(timeout=5)
        assert error["type"] == "s2c_error" and "job.nonsense" in error["payload"]["reason"]


async def test_a_websocket_without_a_valid_auth_frame_is_closed_with_1008(
    tight: System, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{tight.url}/api/ws") as ws:
        await ws.send_json({"type": "c2s_auth", "payload": {"token": "nonsense"}})
        closed = await ws.receive(timeout=5)
        assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 1008, closed
        assert closed.extra
    async with http.ws_connect(f"{tight.url}/api/ws") as ws:
        started = time.monotonic()
        closed = await ws.receive(timeout=5)
        assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 1008, closed
        assert "c2s_auth" in closed.extra and 0.4 < time.monotonic() - started < 3
    async with http.get(f"{tight.url}/api/ws") as resp:
        assert resp.status == 426
