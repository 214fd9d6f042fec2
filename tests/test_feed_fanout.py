"""How the gateway's event hub hands events to its feeds, without NATS: who gets which events (by
index: administrators, moderators, each owner's feeds), events that arrive together going out
together, one encoding shared by every feed that asks for the same events, straight to sockets
that take them, and through the feed's bounded queue, in order, for a client that does not.

Live feeds end to end (SSE, WebSocket, replay, a stalled client) are in tests/test_feeds.py."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter
from aiohttp.base_protocol import BaseProtocol
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.gateway.feeds.hub import EventHub
from services.gateway.feeds.sse import sse_blocks
from services.gateway.feeds.subscriber import FeedClosed, Framing, Subscriber
from services.gateway.feeds.visibility import StoredEvent, feed_filter, stored_event
from services.gateway.feeds.websocket import text_frames
from shared.messages import events
from shared.messages.accounts import Role
from shared.messages.records import JobStatus
from shared.nats.subjects import Names

IDLE = 60.0  # no keep-alive falls due while a test runs


def job_accepted(seq: int, owner: str, job_id: str) -> StoredEvent:
    event = events.JobAccepted(
        event_id=f"job:{job_id}:1",
        time=datetime.now(UTC),
        job_id=job_id,
        owner=owner,
        revision=1,
        status=JobStatus.QUEUED,
        profile="720p",
        container="mp4",
    )
    item = stored_event(seq, events.ENCODER.encode(event))
    assert item is not None
    return item


def worker_online(seq: int) -> StoredEvent:
    event = events.WorkerOnline(
        event_id=f"worker:w{seq}",
        time=datetime.now(UTC),
        worker_id="w",
        host="h",
        pool="cpu",
        slots=1,
    )
    item = stored_event(seq, events.ENCODER.encode(event))
    assert item is not None and item.owner is None
    return item


class ClientSocket:
    """A feed's socket as the hub sees it (a `Sink`): what the client has been sent, and
    whether the socket takes more at once (a client that stopped reading fills it)."""

    def __init__(self, framing: Framing = sse_blocks) -> None:
        self.framing = framing
        self.full = False
        self.writes: list[bytes] = []

    def write_now(self, data: bytes) -> bool:
        if self.full:
            return False
        self.writes.append(data)
        return True

    def seqs(self) -> list[int]:
        return [
            int(line[4:]) for w in self.writes for line in w.split(b"\n") if line[:4] == b"id: "
        ]


def hub() -> EventHub:
    return EventHub(NATS().jetstream(), Names("fanout"), queue_size=5)


async def waiting(sub: Subscriber, sink: ClientSocket) -> asyncio.Task[list[StoredEvent]]:
    """A connection past its replay, waiting for events: the hub may write to it directly."""
    sub.sink = sink
    sub.active_at = asyncio.get_running_loop().time()
    task = asyncio.create_task(sub.next_batch(IDLE))
    await asyncio.sleep(0)  # let it start waiting
    return task


@pytest.fixture
async def stop_tasks() -> AsyncIterator[list[asyncio.Task[list[StoredEvent]]]]:
    tasks: list[asyncio.Task[list[StoredEvent]]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_each_feed_gets_exactly_the_events_its_caller_may_see_and_asked_for() -> None:
    feeds = hub()
    # Given feeds of an administrator, a moderator, Ann, Ben, and Ann following one job
    admin = feeds.subscribe(feed_filter("root", Role.ADMIN))
    moderator = feeds.subscribe(feed_filter("mod", Role.MODERATOR))
    ann = feeds.subscribe(feed_filter("ann", Role.USER))
    ben = feeds.subscribe(feed_filter("ben", Role.USER))
    ann_x = feeds.subscribe(feed_filter("ann", Role.USER, job_ids=["x"]))
    # When a job event of each, a worker event and another of Ann's are handed out together
    batch = [job_accepted(1, "ann", "x"), job_accepted(2, "ben", "y"), worker_online(3)]
    batch.append(job_accepted(4, "ann", "z"))
    feeds._hand_out(batch)
    # Then each gets what it may see and asked for, in stream order
    got = {
        name: [item.seq for item in await sub.next_batch(IDLE)]
        for name, sub in [("admin", admin), ("moderator", moderator), ("ann", ann)]
        + [("ben", ben), ("ann_x", ann_x)]
    }
    assert got == {"admin": [1, 2, 3, 4], "moderator": [1, 2, 4], "ann": [1, 4], "ben": [2]} | {
        "ann_x": [1]
    }


async def test_feeds_that_ask_for_the_same_events_are_written_the_same_bytes_at_once(
    stop_tasks: list[asyncio.Task[list[StoredEvent]]],
) -> None:
    feeds = hub()
    # Given three waiting SSE feeds (two asking for the same) and a WebSocket feed
    same = [feeds.subscribe(feed_filter("root", Role.ADMIN)) for _ in range(2)]
    only_accepted = feeds.subscribe(feed_filter("root", Role.ADMIN, types=["job.accepted"]))
    socket_feed = feeds.subscribe(feed_filter("root", Role.ADMIN))
    subs = [*same, only_accepted, socket_feed]
    sinks = [ClientSocket(), ClientSocket(), ClientSocket(), ClientSocket(text_frames)]
    for sub, sink in zip(subs, sinks, strict=True):
        stop_tasks.append(await waiting(sub, sink))
    # When two events are handed out together
    batch = [job_accepted(7, "ann", "x"), worker_online(8)]
    feeds._hand_out(batch)
    # Then each socket was written once, without waking its connection
    assert [len(sink.writes) for sink in sinks] == [1, 1, 1, 1]
    assert not any(task.done() for task in stop_tasks)
    # the two feeds asking for the same events got the very same bytes, framed once
    assert sinks[0].writes[0] is sinks[1].writes[0]
    assert sinks[0].seqs() == [7, 8] and sinks[2].seqs() == [7]
    assert sinks[3].writes[0] == text_frames(batch)
    assert [sub.sent for sub in subs] == [8, 8, 7, 8]


async def test_a_client_whose_socket_is_full_gets_events_in_order_through_its_queue_then_is_cut_off(
    stop_tasks: list[asyncio.Task[list[StoredEvent]]],
) -> None:
    feeds = hub()
    sink = ClientSocket()
    sub = feeds.subscribe(feed_filter("ann", Role.USER))
    stop_tasks.append(await waiting(sub, sink))
    feeds._hand_out([job_accepted(1, "ann", "a")])
    # Given a client whose socket stopped taking data
    sink.full = True
    # When events come, the connection is woken with them (it waits for the client itself)
    feeds._hand_out([job_accepted(2, "ann", "b"), job_accepted(3, "ann", "c")])
    assert [item.seq for item in await stop_tasks[0]] == [2, 3]
    # and while it is busy, later events wait behind them even once the socket takes data again
    sink.full = False
    feeds._hand_out([job_accepted(4, "ann", "d")])
    assert sink.seqs() == [1]
    assert [item.seq for item in await sub.next_batch(IDLE)] == [4]
    # Then more than its queue holds (5) closes it, saying why
    sink.full = True
    stop_tasks.append(await waiting(sub, sink))
    feeds._hand_out([job_accepted(seq, "ann", f"j{seq}") for seq in range(5, 11)])
    with pytest.raises(FeedClosed, match="too slow"):
        await stop_tasks[-1]
    assert sink.seqs() == [1]


def delivered(seq: int, item: StoredEvent) -> Msg:
    """The live subscription's message for the event stored at `seq`."""
    reply = f"$JS.ACK.FANOUT_EVENTS.hub.1.{seq}.{seq}.1700000000000000000.0"
    return Msg(NATS(), subject="fanout.evt.job.x.accepted", reply=reply, data=item.raw)


async def test_events_that_arrive_together_go_out_together_once_each(
    stop_tasks: list[asyncio.Task[list[StoredEvent]]],
) -> None:
    feeds = hub()
    sink = ClientSocket()
    stop_tasks.append(await waiting(feeds.subscribe(feed_filter("ann", Role.USER)), sink))
    # When three events arrive back to back, one of them twice (a re-created ordered consumer)
    for seq in (1, 2, 2, 3):
        await feeds._receive(delivered(seq, job_accepted(seq, "ann", f"j{seq}")))
    assert sink.writes == [] and feeds.last_seq == 0
    await asyncio.sleep(0)  # the loop is free
    # Then they are written in one go, each once, and the hub has handed out up to the last
    assert len(sink.writes) == 1 and sink.seqs() == [1, 2, 3]
    assert feeds.last_seq == 3


async def test_websocket_frames_are_those_aiohttps_writer_sends() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, protocol = await loop.connect_accepted_socket(lambda: BaseProtocol(loop), ours)
    writer = WebSocketWriter(protocol, transport)
    try:
        for size in (10, 1000, 70_000):  # each length encoding: 7 bits, 16 bits, 64 bits
            item = dataclasses.replace(job_accepted(1, "ann", "x"), ws=b"x" * size)
            await writer.send_frame(item.ws, WSMsgType.TEXT)
            expected = text_frames([item])
            sent = b""
            while len(sent) < len(expected):
                sent += await loop.sock_recv(theirs, 1 << 17)
            assert sent == expected
    finally:
        transport.close()
        theirs.close()
