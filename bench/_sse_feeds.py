"""Many SSE feeds held open by one process, recording when each event's bytes arrived.

Each feed is a raw asyncio connection speaking HTTP/1.1 as an EventSource does (`Accept:
text/event-stream`, the answer chunked). On arrival the client only notes the bytes and the time;
the response is de-chunked and parsed once all expected events are in. So an event's arrival is
when its last byte reached this process, not when this process got round to parsing it: 1,000
feeds parsed line by line as they arrive (aiohttp's readline and json.loads per event, as this
benchmark did before) cost the client about 0.3 s per burst of 20 events and measured the client.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from datetime import datetime
from urllib.parse import urlencode, urlsplit

_HEAD_END = b"\r\n\r\n"
_EVENT_END = b"}\n\n"  # the end of an event's block (its data is a JSON object); keep-alives differ


class _Feed(asyncio.Protocol):
    """One SSE connection: the bytes received, and when each read ended."""

    def __init__(self, feeds: SseFeeds, request: bytes) -> None:
        self.feeds = feeds
        self.request = request
        self.raw = bytearray()
        self.ends: list[int] = []  # len(raw) after each read
        self.times: list[float] = []  # time.time() of each read
        self.opened = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        start = max(len(self.raw) - len(_EVENT_END) + 1, 0)
        self.raw += data
        self.ends.append(len(self.raw))
        self.times.append(now)
        if not self.opened:
            if _HEAD_END not in self.raw:
                return
            if not self.raw.startswith(b"HTTP/1.1 200"):
                self.feeds.fail(bytes(self.raw[:200]).decode(errors="replace"))
                return
            self.opened = True
            self.feeds.opened += 1
        events = self.raw.count(_EVENT_END, start)
        if events:
            self.feeds.arrived(events)

    def connection_lost(self, exc: Exception | None) -> None:
        self.feeds.fail(f"a feed was closed: {exc!r}")

    def latencies(self) -> list[float]:
        """Arrival time minus the event's `time`, for each event received, in seconds."""
        head = self.raw.index(_HEAD_END) + len(_HEAD_END)
        chunked = b"transfer-encoding: chunked" in self.raw[:head].lower()
        body, pieces = _dechunk(self.raw, head) if chunked else (self.raw[head:], [])
        if not chunked:
            pieces = [(len(body), len(self.raw))]
        piece_ends = [body_end for body_end, _ in pieces]
        found: list[float] = []
        at = 0
        while (start := body.find(b"data: ", at)) >= 0:
            end = body.index(b"\n", start)
            at = end + 1
            sent = datetime.fromisoformat(json.loads(body[start + 6 : end])["time"]).timestamp()
            body_end, raw_end = pieces[bisect.bisect_right(piece_ends, end)]
            raw_offset = raw_end - (body_end - end)  # where the line's "\n" is in the raw bytes
            found.append(self.times[bisect.bisect_right(self.ends, raw_offset)] - sent)
        return found


def _dechunk(raw: bytearray, at: int) -> tuple[bytearray, list[tuple[int, int]]]:
    """The body of a chunked response, and for each chunk where it ends in the body and in the
    raw bytes."""
    body = bytearray()
    pieces: list[tuple[int, int]] = []
    while (line_end := raw.find(b"\r\n", at)) >= 0:
        size = int(raw[at:line_end].split(b";", 1)[0], 16)
        start = line_end + 2
        if size == 0 or start + size > len(raw):
            break
        body += raw[start : start + size]
        pieces.append((len(body), start + size))
        at = start + size + 2
    return body, pieces


class SseFeeds:
    """`count` feeds on `GET /api/events`, each filtered to `types`."""

    def __init__(self, base: str, token: str, count: int, types: str) -> None:
        url = urlsplit(base)
        assert url.hostname is not None and url.port is not None
        self.host, self.port = url.hostname, url.port
        query = urlencode({"types": types})
        self.request = (
            f"GET /api/events?{query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        self.count = count
        self.opened = 0
        self.received = 0
        self.expected = 0
        self.errors: list[str] = []
        self.all_in = asyncio.Event()  # every expected event arrived, or a feed failed
        self._feeds: list[_Feed] = []

    async def open(self, timeout: float = 120.0) -> None:
        """Connect every feed and wait for each answer's head."""
        loop = asyncio.get_running_loop()
        for _ in range(self.count):
            _, feed = await loop.create_connection(
                lambda: _Feed(self, self.request), self.host, self.port
            )
            self._feeds.append(feed)
        deadline = time.monotonic() + timeout
        while self.opened < self.count:
            if self.errors:
                raise RuntimeError(f"a feed failed: {self.errors[0]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.opened} of {self.count} feeds opened")
            await asyncio.sleep(0.05)

    def arrived(self, events: int) -> None:
        self.received += events
        if self.expected and self.received >= self.expected:
            self.all_in.set()

    def fail(self, error: str) -> None:
        if not self.all_in.is_set():
            self.errors.append(error)
            self.all_in.set()

    def latencies(self) -> list[float]:
        return [latency for feed in self._feeds for latency in feed.latencies()]

    def close(self) -> None:
        self.all_in.set()  # closing is no failure
        for feed in self._feeds:
            if feed.transport is not None:
                feed.transport.abort()
