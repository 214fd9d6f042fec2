"""Jellyfin tokens: where clients put them, and whether the configured Jellyfin accepts them.

Accepted: `Authorization: <raw token>` (what the Streamyfin app sends), `Authorization:
MediaBrowser ..., Token="<token>"` (quoted or not, among other parameters; `Emby` too),
`X-Emby-Authorization` in the same form, `X-Emby-Token` and `X-MediaBrowser-Token`. A token is
checked with `GET /Users/Me` (no redirects followed; only a JSON object with an `Id`, of at most
1 MiB, is a user) and the answer cached briefly, keyed by the token's hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Mapping

import aiohttp
import msgspec
import structlog
from aiohttp import web

from shared.errors import NotConfigured, Unauthorized, Unavailable
from shared.recent import Recent

log = structlog.get_logger("vidmesh.gateway.auth")

_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"([^"]*)"|([^,\s]*))')
_SCHEMES = ("mediabrowser", "emby")
_NEGATIVE_SECONDS = 5.0
_MAX_CACHED = 10_000
# A Jellyfin user (UserDto) is a few KiB; an answer larger than this names no user.
_MAX_ANSWER_BYTES = 1 << 20


class JellyfinUser(msgspec.Struct, frozen=True, kw_only=True):
    """Who a token belongs to."""

    id: str
    name: str = ""
    is_admin: bool = False


class _Policy(msgspec.Struct, kw_only=True):
    IsAdministrator: bool = False


class _UserDto(msgspec.Struct, kw_only=True):
    Id: str = ""
    Name: str = ""
    Policy: _Policy | None = None


_USER = msgspec.json.Decoder(_UserDto)


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The Jellyfin token a request carries, if any."""
    for name in ("X-Emby-Token", "X-MediaBrowser-Token"):
        value = headers.get(name, "").strip()
        if value:
            return value
    for name in ("Authorization", "X-Emby-Authorization"):
        value = headers.get(name, "").strip()
        token = parse_authorization(value) if value else None
        if token:
            return token
    return None


def parse_authorization(value: str) -> str | None:
    """Token from an Authorization value: `MediaBrowser k="v", Token="t"` or a raw token."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() in _SCHEMES:
        for match in _PARAM.finditer(rest):
            if match.group(1).lower() == "token":
                token = match.group(2) if match.group(2) is not None else match.group(3)
                return token.strip() or None
        return None
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip()
    # The Streamyfin app sends the bare token; a bare token has no spaces.
    return value if " " not in value else None


class JellyfinAuth:
    """Validates tokens against one Jellyfin server, with a short cache."""

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        cache_seconds: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.cache_seconds = cache_seconds
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._cache: Recent[str, tuple[float, JellyfinUser | None]] = Recent(_MAX_CACHED)
        self._inflight: dict[str, asyncio.Future[JellyfinUser | None]] = {}

    @property
    def configured(self) -> bool:
        return bool(self.base_url)

    async def require(self, request: web.Request) -> JellyfinUser:
        """The caller, or an error saying why not (401 JSON, or 503 when Jellyfin is absent)."""
        if not self.configured:
            raise NotConfigured(
                "This server has no Jellyfin configured (set JELLYFIN_URL), so it cannot check "
                "Jellyfin tokens and refuses every request to the Streamyfin API."
            )
        token = token_from_headers(request.headers)
        if not token:
            raise Unauthorized(
                "A Jellyfin token is required: send it in the Authorization header "
                '(raw, or as MediaBrowser Token="...") or in X-Emby-Token.'
            )
        user = await self.check(token)
        if user is None:
            raise Unauthorized("Jellyfin did not accept this token.")
        return user

    async def check(self, token: str) -> JellyfinUser | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[JellyfinUser | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            user = await self._ask_jellyfin(token)
            ttl = self.cache_seconds if user is not None else _NEGATIVE_SECONDS
            self._remember(key, time.monotonic() + ttl, user)
            future.set_result(user)
            return user
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            self._inflight.pop(key, None)

    def _remember(self, key: str, expires: float, user: JellyfinUser | None) -> None:
        self._cache.remember(key, (expires, user))

    async def _ask_jellyfin(self, token: str) -> JellyfinUser | None:
        headers = {
            "Authorization": f'MediaBrowser Client="vidmesh", Token="{token}"',
            "X-Emby-Token": token,
            "Accept": "application/json",
        }
        url = f"{self.base_url}/Users/Me"
        try:
            # No redirects: a 3xx from /Users/Me leads to a login page, never to a user.
            async with self.session.get(
                url, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as response:
                if response.status >= 500:
                    raise Unavailable(
                        f"Jellyfin at {self.base_url} answered {response.status} to /Users/Me; "
                        "the token could not be checked."
                    )
                if response.status != 200:
                    return None
                body = await _bounded_body(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "jellyfin.unreachable", url=self.base_url, error=str(exc) or type(exc).__name__
            )
            raise Unavailable(
                f"Jellyfin at {self.base_url} could not be reached to check the token."
            ) from exc
        return user_from_answer(body)


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, or nothing once it grows past what a user's answer can be (it is
    never held whole in memory)."""
    if (response.content_length or 0) > _MAX_ANSWER_BYTES:
        return b""
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 << 10):
        body += chunk
        if len(body) > _MAX_ANSWER_BYTES:
            return b""
    return bytes(body)


def user_from_answer(body: bytes) -> JellyfinUser | None:
    """The user a `/Users/Me` answer names: a JSON object with an `Id`; anything else (a login
    page, JSON that names nobody) is no user at all."""
    try:
        dto = _USER.decode(body)
    except msgspec.DecodeError:
        return None
    if not dto.Id.strip():
        return None
    is_admin = bool(dto.Policy and dto.Policy.IsAdministrator)
    return JellyfinUser(id=dto.Id, name=dto.Name, is_admin=is_admin)
