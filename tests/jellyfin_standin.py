"""A small stand-in for a Jellyfin server: `/Users/Me` for tokens, and media served the ways a
real Jellyfin serves it (Range requests; a chunked stream with no length; a slow stream)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

_TOKEN = re.compile(r'Token="?([^",]+)"?', re.IGNORECASE)

# Tokens for which `/Users/Me` answers something that is not a Jellyfin user, as a misconfigured
# server or a proxy in front of it does: none of them may pass as a signed-in user.
HTML_LOGIN = "bad-answer-html-login"  # 200 with an HTML login page
REDIRECT_TO_LOGIN = "bad-answer-redirect"  # 302 to that login page (which answers 200)
JSON_WITHOUT_ID = "bad-answer-json-without-id"  # 200 JSON object with a Name but no Id
JSON_NOT_AN_OBJECT = "bad-answer-json-list"  # 200 JSON that is a list
PLAIN_OK = "bad-answer-plain-ok"  # 200 text "OK"
JSON_ID_NULL = "bad-answer-json-id-null"  # 200 JSON whose Id is null
JSON_ID_NUMBER = "bad-answer-json-id-number"  # 200 JSON whose Id is a number
HUGE_ANSWER = "bad-answer-huge"  # 200 JSON with an Id, padded to 8 MiB: no user's answer is
SERVER_ERROR = "bad-answer-server-error"  # 500: Jellyfin is in trouble, not the token
BAD_ANSWERS = (
    HTML_LOGIN,
    REDIRECT_TO_LOGIN,
    JSON_WITHOUT_ID,
    JSON_NOT_AN_OBJECT,
    PLAIN_OK,
    JSON_ID_NULL,
    JSON_ID_NUMBER,
    HUGE_ANSWER,
)
_LOGIN_PAGE = "<!DOCTYPE html><html><body><form action=/login>Sign in</form></body></html>"


@dataclass
class JellyfinStandIn:
    """Tokens it accepts, media it serves, and how often each path was asked for."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    media: dict[str, Path] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    down: bool = False
    url: str = ""
    _runner: web.AppRunner | None = None

    def add_user(self, token: str, user_id: str, name: str = "", admin: bool = False) -> None:
        self.users[token] = {
            "Id": user_id,
            "Name": name or user_id,
            "Policy": {"IsAdministrator": admin},
        }

    def add_media(self, item_id: str, path: Path) -> None:
        self.media[item_id] = path

    def stream_url(self, item_id: str, token: str, *, kind: str = "stream", **params: str) -> str:
        query = "&".join(
            f"{k}={v}" for k, v in {"Static": "true", **params, "api_key": token}.items()
        )
        return f"{self.url}/Videos/{item_id}/{kind}?{query}"

    def _token(self, request: web.Request) -> str | None:
        for header in ("Authorization", "X-Emby-Authorization"):
            value = request.headers.get(header, "")
            match = _TOKEN.search(value)
            if match:
                return match.group(1)
        return request.headers.get("X-Emby-Token") or request.query.get("api_key")

    async def users_me(self, request: web.Request) -> web.Response:
        self.hits["/Users/Me"] += 1
        if self.down:
            return web.Response(status=503)
        token = self._token(request) or ""
        if token in (HTML_LOGIN, PLAIN_OK):
            text = _LOGIN_PAGE if token == HTML_LOGIN else "OK"
            return web.Response(text=text, content_type="text/html")
        if token == REDIRECT_TO_LOGIN:
            raise web.HTTPFound("/web/login.html")
        if token == JSON_WITHOUT_ID:
            return web.json_response({"Name": "nobody", "Policy": {"IsAdministrator": True}})
        if token == JSON_NOT_AN_OBJECT:
            return web.json_response([{"Id": "user-list"}])
        if token in (JSON_ID_NULL, JSON_ID_NUMBER):
            return web.json_response({"Id": None if token == JSON_ID_NULL else 7, "Name": "x"})
        if token == HUGE_ANSWER:
            padding = "x" * (8 << 20)
            return web.json_response({"Id": "huge", "Name": "huge", "Padding": padding})
        if token == SERVER_ERROR:
            return web.Response(status=500, text="Internal Server Error")
        user = self.users.get(token)
        if user is None:
            return web.Response(status=401, text="Unauthorized")
        return web.json_response(user)

    def _item(self, request: web.Request) -> Path:
        if self._token(request) not in self.users:
            raise web.HTTPUnauthorized()
        path = self.media.get(request.match_info["item"])
        if path is None:
            raise web.HTTPNotFound()
        return path

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Static file with Range support, like `/Videos/{id}/stream?Static=true`.

        Test knobs: `fail_until=<epoch>` answers 503 until then; `slow_first=<s>` holds the
        first request for that URL that long before answering; `seek_rate=<bytes/s>` serves a
        range that does not start at 0 (a seek: what a segment of a split job reads) that slowly,
        while reads from the start (a probe, a keyframe index) go as fast as they can.
        """
        key = f"stream:{request.match_info['item']}"
        self.hits[key] += 1
        self.hits[str(request.rel_url)] += 1
        if float(request.query.get("fail_until", "0")) > time.time():
            return web.Response(status=503, text="busy")
        if self.hits[str(request.rel_url)] == 1 and "slow_first" in request.query:
            await asyncio.sleep(float(request.query["slow_first"]))
        seek_rate = int(request.query.get("seek_rate", "0"))
        if seek_rate and request.http_range.start:
            return await self._seek_slowly(request, self._item(request), seek_rate)
        return web.FileResponse(self._item(request))

    async def _seek_slowly(self, request: web.Request, path: Path, rate: int) -> web.StreamResponse:
        """A 206 of the requested range (from its start to the end), `rate` bytes a second."""
        size = (await asyncio.to_thread(path.stat)).st_size
        start = request.http_range.start or 0
        start = start if start >= 0 else max(0, size + start)  # bytes=-N: the last N
        if start >= size:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        response = web.StreamResponse(status=206)
        response.headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        response.headers["Accept-Ranges"] = "bytes"
        response.content_length = size - start
        await response.prepare(request)
        with path.open("rb") as handle:
            handle.seek(start)
            while chunk := handle.read(16 * 1024):
                await response.write(chunk)
                await asyncio.sleep(len(chunk) / rate)
        await response.write_eof()
        return response

    async def live(self, request: web.Request) -> web.StreamResponse:
        """Chunked, no Content-Length, no Range: the duration cannot be known up front."""
        self.hits[f"live:{request.match_info['item']}"] += 1
        path = self._item(request)
        rate = int(request.query.get("rate", "0"))  # bytes per second; 0 = as fast as possible
        response = web.StreamResponse()
        response.content_type = "video/mp2t"
        response.enable_chunked_encoding()
        await response.prepare(request)
        with path.open("rb") as handle:
            while chunk := handle.read(16 * 1024):
                await response.write(chunk)
                if rate:
                    await asyncio.sleep(len(chunk) / rate)
        await response.write_eof()
        return response

    async def login_page(self, request: web.Request) -> web.Response:
        return web.Response(text=_LOGIN_PAGE, content_type="text/html")

    async def text(self, request: web.Request) -> web.Response:
        """Any text file, e.g. an HLS playlist a test writes."""
        body = self.texts.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(text=body, content_type="application/vnd.apple.mpegurl")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/Files/{name}", self.text)
        app.router.add_get("/Users/Me", self.users_me)
        app.router.add_get("/web/login.html", self.login_page)
        app.router.add_get("/Videos/{item}/stream", self.stream)
        app.router.add_get("/Videos/{item}/stream.{ext}", self.stream)
        app.router.add_get("/Videos/{item}/live", self.live)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
