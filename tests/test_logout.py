"""Signing out: `POST /api/auth/logout` ends one session (the access token it is called with,
and the refresh token sent with it) on every gateway replica, open feeds included, while the
account's other sessions go on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio

from services.gateway.state import GATEWAY
from shared.messages.accounts import RevokedToken
from shared.nats.projection import Projection
from shared.nats.topology import DAY
from tests.harness import Api, System, eventually, start_system, stop_system
from tests.test_api_revocation import both_end, open_socket, open_sse

# Long: a sign-out must end a feed at once, not at the next periodic check.
SLOW_RECHECK = "600"


@pytest_asyncio.fixture
async def gw(env: dict[str, str]) -> AsyncIterator[System]:
    """A gateway alone (accounts and feeds need nothing else)."""
    running = await start_system(
        {**env, "VIDMESH_FEED_RECHECK_SECONDS": SLOW_RECHECK, "VIDMESH_FEED_KEEPALIVE": "2"},
        "gateway",
    )
    yield running
    await stop_system(running)


class Session:
    """One sign-in: its access token (as an API client) and its refresh token."""

    def __init__(self, api: Api, refresh_token: str) -> None:
        self.api = api
        self.refresh_token = refresh_token

    def at(self, url: str) -> Api:
        """The same access token, sent to another gateway."""
        return Api(self.api.session, url, token=self.api.token)


async def sign_in(http: aiohttp.ClientSession, url: str, username: str) -> Session:
    tokens = await Api(http, url).ok(
        "POST", "/api/auth/login", json={"username": username, "password": "password-123"}
    )
    return Session(Api(http, url, token=tokens["access_token"]), tokens["refresh_token"])


async def register(http: aiohttp.ClientSession, url: str, username: str) -> Session:
    await Api(http, url).as_user(username)
    return await sign_in(http, url, username)


async def refresh(http: aiohttp.ClientSession, url: str, refresh_token: str) -> tuple[int, Any]:
    status, body, _ = await Api(http, url).call(
        "POST", "/api/auth/refresh", json={"refresh_token": refresh_token}
    )
    return status, body


async def me(api: Api) -> int:
    return (await api.call("GET", "/api/users/me"))[0]


def revoked_on(system: System) -> Projection[RevokedToken]:
    """The revocations the replica holds in memory."""
    return system.gateway.app[GATEWAY].identity.revocations.revoked


async def test_signing_out_with_the_refresh_token_ends_that_session_and_no_other(
    gw: System, http: aiohttp.ClientSession
) -> None:
    # Given Ann signed in twice (a laptop and a phone)
    laptop = await register(http, gw.url, "ann")
    phone = await sign_in(http, gw.url, "ann")
    # When she signs out on the laptop, sending its refresh token
    status, body, _ = await laptop.api.call(
        "POST", "/api/auth/logout", json={"refresh_token": laptop.refresh_token}
    )
    assert status == 204 and body == b""
    # Then the laptop's access token and refresh token are refused like expired ones
    status, body, _ = await laptop.api.call("GET", "/api/users/me")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert "signed out" in body["error"]["message"]
    status, body = await refresh(http, gw.url, laptop.refresh_token)
    assert status == 401 and "signed out" in body["error"]["message"]
    assert (await laptop.api.call("POST", "/api/auth/logout"))[0] == 401
    # And the phone's session goes on, refresh included
    assert await me(phone.api) == 200
    status, fresh = await refresh(http, gw.url, phone.refresh_token)
    assert status == 200 and await me(Api(http, gw.url, token=fresh["access_token"])) == 200
    # And she signs in again as before
    assert await me((await sign_in(http, gw.url, "ann")).api) == 200


async def test_signing_out_without_a_body_ends_the_access_token_only(
    gw: System, http: aiohttp.ClientSession
) -> None:
    # Given Ann signed in
    ann = await register(http, gw.url, "ann")
    # When she signs out sending no body
    assert (await ann.api.call("POST", "/api/auth/logout"))[0] == 204
    # Then her access token is refused, but the refresh token she kept still mints new tokens
    assert await me(ann.api) == 401
    status, fresh = await refresh(http, gw.url, ann.refresh_token)
    assert status == 200 and await me(Api(http, gw.url, token=fresh["access_token"])) == 200


async def test_a_refresh_token_that_is_not_the_callers_own_is_refused_and_ends_nothing(
    gw: System, http: aiohttp.ClientSession
) -> None:
    # Given Ann and Ben signed in
    ann = await register(http, gw.url, "ann")
    ben = await register(http, gw.url, "ben")
    # When Ann signs out sending Ben's refresh token, her own access token, or no token at all
    for sent, says in (
        (ben.refresh_token, "another account"),
        (ann.api.token, "not a refresh token"),
        ("not-a-token", "not valid"),
    ):
        status, body, _ = await ann.api.call(
            "POST", "/api/auth/logout", json={"refresh_token": sent}
        )
        # Then each is refused with 400, saying why
        assert status == 400 and body["error"]["code"] == "bad_request", body
        assert says in body["error"]["message"], body
    # And nothing was revoked: Ann's token and Ben's session still work
    assert await me(ann.api) == 200
    assert await me(ben.api) == 200
    assert (await refresh(http, gw.url, ben.refresh_token))[0] == 200
    assert len(revoked_on(gw)) == 0
    # And a body that is no sign-out request is refused too
    status, _, _ = await ann.api.call("POST", "/api/auth/logout", json={"token": "x"})
    assert status == 400 and await me(ann.api) == 200


async def test_an_api_key_is_deleted_not_signed_out(
    gw: System, http: aiohttp.ClientSession
) -> None:
    # Given Ann's API key
    ann = await register(http, gw.url, "ann")
    created = await ann.api.ok("POST", "/api/account/api-keys", 201, json={"name": "ci"})
    by_key = Api(http, gw.url, api_key=created["key"])
    # When the key's holder asks to sign out
    status, body, _ = await by_key.call("POST", "/api/auth/logout")
    # Then it is told to delete the key instead, and the key goes on working
    assert status == 400 and "delete the key" in body["error"]["message"]
    assert await me(by_key) == 200


async def test_a_sign_out_reaches_every_replica_and_ends_open_feeds_at_once(
    gw: System, http: aiohttp.ClientSession
) -> None:
    # Given a second gateway replica of the same namespace, where Ann's feeds are open
    other = await start_system(gw.env, "gateway")
    late: System | None = None
    try:
        ann = await register(http, gw.url, "ann")
        sse = await open_sse(ann.at(other.url))
        ws = await open_socket(http, other.url, ann.api.token)
        assert await me(ann.at(other.url)) == 200
        # When she signs out through the first gateway (the feeds' periodic check is far off)
        await ann.api.ok("POST", "/api/auth/logout", 204, json={"refresh_token": ann.refresh_token})
        # Then the second replica, following the bucket, ends her feeds at once
        rest, code = await both_end(sse, ws)
        assert "event: error" in rest and "signed out" in rest
        assert code == 4401
        # And refuses her access token and her refresh token
        assert await me(ann.at(other.url)) == 401
        assert (await refresh(http, other.url, ann.refresh_token))[0] == 401
        # And so does a replica started after the sign-out
        late = await start_system(gw.env, "gateway")
        assert await me(ann.at(late.url)) == 401
        assert (await refresh(http, late.url, ann.refresh_token))[0] == 401
    finally:
        for replica in (other, late):
            if replica is not None:
                await replica.stop()  # the namespace stays: the fixture's gateway uses it
                await replica.nc.close()


async def test_a_revocation_is_forgotten_in_memory_once_its_token_has_expired(
    env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    # Given access tokens that live about a second
    system = await start_system({**env, "VIDMESH_ACCESS_TOKEN_MINUTES": "0.02"}, "gateway")
    try:
        ann = await register(http, system.url, "ann")
        # When Ann signs out with no body, only her access token is held as revoked
        assert (await ann.api.call("POST", "/api/auth/logout"))[0] == 204
        revoked = revoked_on(system)
        assert len(revoked) == 1

        # Then, once it has expired, the next check forgets it (a refresh checks)
        async def forgotten() -> bool:
            assert (await refresh(http, system.url, ann.refresh_token))[0] == 200
            return len(revoked) == 0

        await eventually(forgotten, timeout=10, what="the expired revocation to be forgotten")
        # And the bucket keeps revocations as long as a refresh token lives (7 days)
        info = await system.nc.jetstream().stream_info(f"KV_{system.names.revoked_bucket}")
        assert info.config.max_age == 7 * DAY
    finally:
        await stop_system(system)


async def test_the_revocations_bucket_never_keeps_less_than_a_refresh_token_lives(
    gw: System,
) -> None:
    async def kept_days() -> float:
        info = await gw.nc.jetstream().stream_info(f"KV_{gw.names.revoked_bucket}")
        return (info.config.max_age or 0) / DAY

    assert await kept_days() == 7
    # A replica configured with longer refresh tokens makes the bucket keep them longer
    longer = await start_system({**gw.env, "VIDMESH_REFRESH_TOKEN_DAYS": "30"}, "gateway")
    # and one with shorter ones does not shorten it: tokens minted before still live 30 days
    shorter = await start_system({**gw.env, "VIDMESH_REFRESH_TOKEN_DAYS": "1"}, "gateway")
    try:
        assert await kept_days() == 30
    finally:
        for replica in (longer, shorter):
            await replica.stop()
            await replica.nc.close()
