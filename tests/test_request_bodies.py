"""Request bodies that arrive in pieces, as real clients on real networks send them: the gateway
reads the whole body (up to its limit) before it decodes it, on both faces, with a length or
chunked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from tests.harness import ALICE, Api, System, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn

LIMIT = 2048
GAP = 0.3  # seconds between two TCP segments: the pause is the scenario, not a wait
BODY_TIMEOUT = 2.0


@pytest_asyncio.fixture
async def system(env: dict[str, str]) -> AsyncIterator[System]:
    """A whole vidmesh with a small body limit, so an over-limit body is quick to send."""
    running = await start_system(
        {**env, "VIDMESH_MAX_BODY_BYTES": str(LIMIT), "VIDMESH_BODY_TIMEOUT": str(BODY_TIMEOUT)}
    )
    yield running
    await stop_system(running)


async def post_in_pieces(
    base: str, path: str, headers: dict[str, str], pieces: list[bytes]
) -> tuple[int, Any]:
    """POST over a raw socket: the headers with the first piece, then each further piece after a
    pause (so each leaves in its own TCP segment); answers the status and the decoded JSON."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        writer.write(head.encode() + pieces[0])
        await writer.drain()
        for piece in pieces[1:]:
            await asyncio.sleep(GAP)  # the gap between two segments is what is tested
            writer.write(piece)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(body) if body else None


def split_with_length(
    body: bytes, content_type: str = "application/json"
) -> tuple[dict[str, str], list[bytes]]:
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    return headers, [body[:10], body[10:]]


def chunked(*pieces: bytes) -> list[bytes]:
    """Each piece as one chunk of a chunked body; the last carries the terminating chunk."""
    out = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces]
    out[-1] += b"0\r\n\r\n"
    return out


CHUNKED = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}


async def test_a_native_job_whose_body_arrives_in_two_segments_is_accepted(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    source = jellyfin.stream_url("fits", ALICE)
    body = json.dumps({"source": source}).encode()
    headers, pieces = split_with_length(body)
    status, job = await post_in_pieces(
        system.url, "/api/jobs", {**ann.headers(), **headers}, pieces
    )
    assert status == 201, job
    assert (await ann.ok("GET", f"/api/jobs/{job['id']}"))["source"] == source


async def test_a_streamyfin_optimize_request_in_two_segments_is_a_201(
    system: System, jellyfin: JellyfinStandIn
) -> None:
    payload = {
        "url": jellyfin.stream_url("fits", ALICE),
        "deviceId": "phone",
        "itemId": "fits",
        "item": {"Id": "fits", "Name": "Clip", "Type": "Movie"},
    }
    headers, pieces = split_with_length(json.dumps(payload).encode())
    status, body = await post_in_pieces(
        system.url, "/optimize-version", {"Authorization": ALICE, **headers}, pieces
    )
    assert status == 201, body
    assert body["id"]


async def test_a_chunked_body_split_across_writes_is_read_whole(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    body = json.dumps({"source": jellyfin.stream_url("fits", ALICE)}).encode()
    status, job = await post_in_pieces(
        system.url, "/api/jobs", {**ann.headers(), **CHUNKED}, chunked(body[:10], body[10:])
    )
    assert status == 201, job
    payload = {"url": jellyfin.stream_url("fits", ALICE), "deviceId": "phone", "itemId": "fits"}
    body = json.dumps(payload).encode()
    status, created = await post_in_pieces(
        system.url,
        "/optimize-version",
        {"Authorization": ALICE, **CHUNKED},
        chunked(body[:10], body[10:20], body[20:]),
    )
    assert status == 201, created


@pytest.mark.parametrize("face", ["native", "streamyfin"])
async def test_an_over_limit_body_in_pieces_is_still_a_413(
    system: System, ann: Api, face: str
) -> None:
    # Each piece is under the limit; together they are over it, and no length says so up front.
    filler = b"a" * (LIMIT // 2 + 100)
    body = b'{"source": "http://example.com/' + filler + filler + b'.mp4"}'
    headers = (
        {**ann.headers(), **CHUNKED} if face == "native" else {"Authorization": ALICE, **CHUNKED}
    )
    path = "/api/jobs" if face == "native" else "/optimize-version"
    half = len(body) // 2
    status, error = await post_in_pieces(
        system.url, path, headers, chunked(body[:half], body[half:])
    )
    assert status == 413, error
    assert error["error"]["code"] == "payload_too_large"


async def open_post(
    base: str, path: str, headers: dict[str, str], first: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST whose headers and first bytes are sent; the caller decides what follows."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    writer.write(head.encode() + first)
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, Any]:
    """The final response's status and JSON body (after any `100 Continue`), read by its
    Content-Length: the server may keep the connection a while to drain an unfinished body."""
    head = await reader.readuntil(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(v) for n, _, v in (h.partition(": ") for h in lines) if n.lower() == "content-length"
    )
    body = await reader.readexactly(length)
    is_json = any(h.lower().startswith("content-type: application/json") for h in lines)
    return int(lines[0].split()[1]), json.loads(body) if is_json else body


@pytest.mark.parametrize("face", ["native", "streamyfin"])
async def test_a_body_that_stops_arriving_is_a_408_within_the_body_timeout(
    system: System, ann: Api, face: str
) -> None:
    # The client promises 200 bytes, sends 10 and keeps the connection open: a slow client must
    # not hold a request (and its memory) for ever.
    auth = ann.headers() if face == "native" else {"Authorization": ALICE}
    path = "/api/jobs" if face == "native" else "/optimize-version"
    headers = {**auth, "Content-Type": "application/json", "Content-Length": "200"}
    reader, writer = await open_post(system.url, path, headers, b'{"source":')
    try:
        status, error = await asyncio.wait_for(read_answer(reader), BODY_TIMEOUT + 5)
    finally:
        writer.close()
    assert status == 408, error
    assert error["error"]["code"] == "request_timeout"


async def test_a_client_that_closes_before_its_content_length_is_no_server_error(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    body = json.dumps({"source": jellyfin.stream_url("fits", ALICE)}).encode()
    headers = {**ann.headers(), "Content-Type": "application/json", "Content-Length": "500"}
    with capture_logs() as logs:
        reader, writer = await open_post(system.url, "/api/jobs", headers, body)
        writer.close()  # the client goes away with 500 - len(body) bytes still owed
        await writer.wait_closed()
        # The gateway still answers others, and logged no failure for the abandoned request.
        assert await ann.ok("GET", "/api/jobs") is not None
    failures = [e for e in logs if e.get("event") == "request.failed"]
    assert not failures, failures


async def test_a_broken_chunked_body_is_a_clear_4xx_not_a_hang(system: System, ann: Api) -> None:
    headers = {**ann.headers(), **CHUNKED}
    with capture_logs() as logs:
        reader, writer = await open_post(system.url, "/api/jobs", headers, b'5\r\n{"sou\r\n')
        try:
            writer.write(b"zz\r\nnot hex\r\n")
            await writer.drain()
            status, error = await asyncio.wait_for(read_answer(reader), BODY_TIMEOUT + 5)
        finally:
            writer.close()
    # aiohttp's parser may refuse the bad chunk itself (a plain 400) before the handler sees it.
    assert status in (400, 408), error
    assert not [e for e in logs if e.get("event") == "request.failed"]


@pytest.mark.parametrize("face", ["native", "streamyfin"])
async def test_an_expect_100_continue_client_gets_its_continue_then_its_answer(
    system: System, ann: Api, jellyfin: JellyfinStandIn, face: str
) -> None:
    if face == "native":
        auth, path = ann.headers(), "/api/jobs"
        body = json.dumps({"source": jellyfin.stream_url("fits", ALICE)}).encode()
    else:
        auth, path = {"Authorization": ALICE}, "/optimize-version"
        payload = {"url": jellyfin.stream_url("fits", ALICE), "deviceId": "p", "itemId": "fits"}
        body = json.dumps(payload).encode()
    headers = {
        **auth,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Expect": "100-continue",
    }
    reader, writer = await open_post(system.url, path, headers, b"")
    try:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        writer.write(body)
        await writer.drain()
        status, created = await asyncio.wait_for(read_answer(reader), 20)
    finally:
        writer.close()
    assert status == 201, created
