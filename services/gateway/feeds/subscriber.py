"""One feed connection's place in the hub, and how a batch of events reaches every subscriber.

A subscriber has a filter and a bounded queue. While its connection waits with nothing queued, the
hub writes a batch straight to the connection's socket (`Sink.write_now`), so an event costs one
socket write per client, not a task switch; what the socket does not take at once goes through
the queue and the connection's own task, which waits for the client. One that would overflow its
queue is closed with its reason, so a slow client never holds up the others nor grows memory.

A batch is framed once per filter and framing (`Selection`): every feed that asks for the same
events over the same carrier gets the same bytes.

A frame that is not a stored event (a job's live progress, `Unstored`) is written the same way
to a connection that waits, and otherwise dropped: it never queues (a newer one follows soon),
so it never closes a feed nor holds up its events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from services.gateway.feeds.visibility import FeedFilter, StoredEvent


class Framed(Protocol):
    """What a carrier frames: a stored event (`StoredEvent`) or a frame that is not (`Unstored`)."""

    @property
    def sse(self) -> bytes:
        """The SSE block."""
        ...

    @property
    def ws(self) -> bytes:
        """The WebSocket frame's text."""
        ...


Framing = Callable[[Sequence[Framed]], bytes]
"""How a carrier writes events on the wire (SSE blocks, WebSocket frames, ...)."""


class FeedClosed(Exception):
    """The hub closed a subscriber: it fell too far behind (`error`), its caller is no longer
    allowed (`unauthorized`), or the gateway stops."""

    def __init__(self, reason: str, *, error: bool, unauthorized: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.unauthorized = unauthorized


class Sink(Protocol):
    """A connection's socket as the hub writes to it."""

    @property
    def framing(self) -> Framing:
        """How this connection frames events; connections with the same framing share bytes."""
        ...

    def write_now(self, data: bytes) -> bool:
        """Write `data` if the socket takes it without waiting; whether it was written."""
        ...


class Selection:
    """The events of one batch that one filter wants, framed once per framing."""

    __slots__ = ("_frames", "items")

    def __init__(self, items: list[StoredEvent]) -> None:
        self.items = items
        self._frames: dict[Framing, bytes] = {}

    def frames(self, framing: Framing) -> bytes:
        data = self._frames.get(framing)
        if data is None:
            data = self._frames[framing] = framing(self.items)
        return data


class Unstored:
    """A frame that is not an event of the stream (a job's live progress), framed once per
    framing; it has no sequence number and is never replayed."""

    __slots__ = ("_frames", "sse", "ws")

    def __init__(self, *, sse: bytes, ws: bytes) -> None:
        self.sse = sse
        self.ws = ws
        self._frames: dict[Framing, bytes] = {}

    def frames(self, framing: Framing) -> bytes:
        data = self._frames.get(framing)
        if data is None:
            data = self._frames[framing] = framing((self,))
        return data


class Subscriber:
    """One feed connection's place in the hub: its filter, its bounded queue, and the sink the
    hub may write to while the connection waits with nothing queued."""

    def __init__(self, wanted: FeedFilter, limit: int) -> None:
        self.filter = wanted
        self.limit = limit
        self.closed: FeedClosed | None = None
        self.on_close: Callable[[], object] | None = None
        self.sink: Sink | None = None  # set by the connection once it has replayed what was missed
        self.sent = 0  # the stream sequence of the last event written to the client
        self.active_at = 0.0  # loop time of the last write to the client (events or keep-alive)
        self._queue: deque[StoredEvent] = deque()
        self._ready = asyncio.Event()
        self._waiting = False  # the connection waits in `next_batch` with nothing queued

    def offer(self, chosen: Selection, now: float) -> None:
        """Write the events straight to the client when its connection waits and its socket
        takes them at once; else queue them, or close the subscriber rather than let the queue
        grow past its limit."""
        if self.closed is not None:
            return
        items = chosen.items
        sink = self.sink
        if (
            self._waiting
            and sink is not None
            and not self._queue
            and items[0].seq > self.sent
            and sink.write_now(chosen.frames(sink.framing))
        ):
            self.sent = items[-1].seq
            self.active_at = now
            return
        if len(self._queue) + len(items) > self.limit:
            self.close(f"too slow: more than {self.limit} events were waiting for this client")
            return
        self._queue.extend(items)
        self._ready.set()

    def offer_unstored(self, frame: Unstored, now: float) -> bool:
        """Write `frame` straight to the client when its connection waits with nothing queued
        and its socket takes it at once; else drop it. Whether it was written."""
        sink = self.sink
        if (
            self.closed is None
            and self._waiting
            and sink is not None
            and not self._queue
            and sink.write_now(frame.frames(sink.framing))
        ):
            self.active_at = now
            return True
        return False

    def close(self, reason: str, *, error: bool = True, unauthorized: bool = False) -> None:
        """Close with `reason`, dropping what is queued; a second close changes nothing."""
        if self.closed is not None:
            return
        self.closed = FeedClosed(reason, error=error, unauthorized=unauthorized)
        self._queue.clear()
        self._ready.set()
        if self.on_close is not None:
            self.on_close()

    async def next_batch(self, idle: float) -> list[StoredEvent]:
        """Every queued event, waiting for one until nothing was written to the client for
        `idle` seconds (then []); raises `FeedClosed` once the subscriber is closed."""
        loop = asyncio.get_running_loop()
        while not self._queue and self.closed is None:
            quiet_left = idle - (loop.time() - self.active_at)
            if quiet_left <= 0:
                break
            self._ready.clear()
            self._waiting = True
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(quiet_left):
                        await self._ready.wait()
            finally:
                self._waiting = False
        if self.closed is not None:
            closed = self.closed
            raise FeedClosed(closed.reason, error=closed.error, unauthorized=closed.unauthorized)
        batch = list(self._queue)
        self._queue.clear()
        return batch


def offer_all(
    subscribers: Collection[Subscriber], candidates: list[StoredEvent], now: float
) -> None:
    """Offer each subscriber the candidates its filter wants, chosen and framed once per filter."""
    chosen: dict[FeedFilter, Selection | None] = {}
    for sub in tuple(subscribers):  # a close may end a connection: never iterate a changing set
        wanted = sub.filter
        selection = chosen.get(wanted, _UNSEEN)
        if selection is _UNSEEN:
            picked = [item for item in candidates if wanted.wants(item)]
            selection = chosen[wanted] = Selection(picked) if picked else None
        if selection is not None:
            sub.offer(selection, now)


_UNSEEN = Selection([])  # a filter not met yet in this batch
