"""Revoking access: administrators revoke keys, disable accounts, change roles and passwords,
and an open SSE or WebSocket feed ends as soon as its caller is no longer allowed (at once on an
account or key change, within `VIDMESH_FEED_RECHECK_SECONDS` when a token expires)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio

from tests.harness import ADMIN_PASSWORD, Api, System, start_system, stop_system

SSE = {"Accept": "text/event-stream"}
# Long: an account or key change must end a feed at once, not at the next periodic check.
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


@pytest_asyncio.fixture
async def admin(http: aiohttp.ClientSession, gw: System) -> Api:
    return await Api(http, gw.url).as_user("admin", ADMIN_PASSWORD, register=False)


@pytest_asyncio.fixture
async def ann(http: aiohttp.ClientSession, gw: System) -> Api:
    return await Api(http, gw.url).as_user("ann")


async def user_id(api: Api) -> str:
    return str((await api.ok("GET", "/api/users/me"))["id"])


class SseFeed:
    """An open `GET /api/events` that can tell when the server ends it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def ended(self, timeout: float = 5.0) -> str:
        """What the server sent until it closed the stream (keepalives come every 2 s)."""
        async with asyncio.timeout(timeout):
            rest = await self.response.content.read()
        self.response.close()
        return rest.decode()


async def open_sse(api: Api) -> SseFeed:
    response = await api.session.get(f"{api.base}/api/events", headers={**SSE, **api.headers()})
    assert response.status == 200, (response.status, await response.text())
    return SseFeed(response)


async def open_socket(http: aiohttp.ClientSession, url: str, token: str) -> Any:
    ws = await http.ws_connect(f"{url}/api/ws")
    await ws.send_json({"type": "c2s_auth", "payload": {"token": token}})
    assert (await ws.receive_json(timeout=5))["type"] == "s2c_auth_ok"
    return ws


async def socket_closed_with(ws: Any, timeout: float = 5.0) -> int:
    """The close code of a socket the server closes (pings are answered meanwhile)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return int(msg.data)
            if msg.type is aiohttp.WSMsgType.CLOSED:
                return int(ws.close_code)


async def both_end(sse: SseFeed, ws: Any, timeout: float = 5.0) -> tuple[str, int]:
    """Read both feeds at once (a socket client answers pings only while it reads)."""
    return await asyncio.gather(sse.ended(timeout), socket_closed_with(ws, timeout))


# ---- open feeds end with their credentials ------------------------------------------
async def test_changing_the_password_ends_open_feeds_at_once(
    gw: System, ann: Api, http: aiohttp.ClientSession
) -> None:
    # Given an SSE feed and a WebSocket opened with Ann's token
    sse = await open_sse(ann)
    ws = await open_socket(http, gw.url, ann.token)
    # When Ann changes her password (the periodic check is 10 minutes away)
    await ann.ok(
        "PUT",
        "/api/users/me/password",
        json={"current_password": "password-123", "new_password": "password-456"},
    )
    # Then both feeds end at once: the SSE stream says why and closes, the socket closes 4401
    rest, code = await both_end(sse, ws)
    assert "event: error" in rest and "no longer" in rest
    assert code == 4401


async def test_a_change_made_through_another_gateway_ends_the_feed_at_once(
    gw: System, ann: Api, http: aiohttp.ClientSession
) -> None:
    # Given Ann's feeds open on a second gateway replica of the same namespace
    other = await start_system(gw.env, "gateway")
    try:
        there = Api(http, other.url, token=ann.token)
        sse = await open_sse(there)
        ws = await open_socket(http, other.url, ann.token)
        # When her password changes through the first gateway
        await ann.ok(
            "PUT",
            "/api/users/me/password",
            json={"current_password": "password-123", "new_password": "password-456"},
        )
        # Then the second gateway, following the accounts bucket, ends them at once
        rest, code = await both_end(sse, ws)
        assert "event: error" in rest and code == 4401
    finally:
        await other.stop()  # the namespace stays: the fixture's gateway uses it
        await other.nc.close()


async def test_deleting_the_api_key_ends_the_feeds_it_opened(
    gw: System, ann: Api, http: aiohttp.ClientSession
) -> None:
    created = await ann.ok("POST", "/api/account/api-keys", 201, json={"name": "feed"})
    by_key = Api(http, gw.url, api_key=created["key"])
    sse = await open_sse(by_key)
    ws = await open_socket(http, gw.url, created["key"])
    other = await open_sse(ann)  # opened with a token: not affected
    await ann.ok("DELETE", f"/api/account/api-keys/{created['id']}", 204)
    rest, code = await both_end(sse, ws)
    assert "event: error" in rest and code == 4401
    # (the token's feed goes on: it still gets keepalives)
    async with asyncio.timeout(5):
        assert (await other.response.content.readline()).startswith(b": keepalive")
    other.response.close()


async def test_an_expired_access_token_ends_its_feed_within_the_recheck_period(
    env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    system = await start_system(
        {
            **env,
            "VIDMESH_ACCESS_TOKEN_MINUTES": "0.03",  # about 2 seconds
            "VIDMESH_FEED_RECHECK_SECONDS": "0.5",
            "VIDMESH_FEED_KEEPALIVE": "2",
        },
        "gateway",
    )
    try:
        frank = await Api(http, system.url).as_user("frank")
        sse = await open_sse(frank)
        ws = await open_socket(http, system.url, frank.token)
        rest, code = await both_end(sse, ws, timeout=10)
        assert "event: error" in rest and "expired" in rest
        assert code == 4401
    finally:
        await stop_system(system)


async def test_lowering_the_role_ends_a_feed_that_needed_it(
    gw: System, admin: Api, http: aiohttp.ClientSession
) -> None:
    made = await admin.ok(
        "POST",
        "/api/admin/users",
        201,
        json={"username": "mod", "password": "password-123", "role": "moderator"},
    )
    mod = await Api(http, gw.url).as_user("mod", register=False)
    sse = await open_sse(mod)  # a moderator's feed carries every user's jobs
    ws = await open_socket(http, gw.url, mod.token)
    await admin.ok("PATCH", f"/api/admin/users/{made['id']}", json={"role": "user"})
    rest, code = await both_end(sse, ws)
    assert "event: error" in rest and code == 4401
    # A new feed opens, as a plain user's
    assert (await mod.ok("GET", "/api/users/me"))["role"] == "user"
    again = await open_sse(mod)
    again.response.close()


# ---- administrators revoke --------------------------------------------------------
async def test_an_administrator_revokes_a_users_api_key(
    gw: System, admin: Api, ann: Api, http: aiohttp.ClientSession
) -> None:
    created = await ann.ok("POST", "/api/account/api-keys", 201, json={"name": "ci"})
    by_key = Api(http, gw.url, api_key=created["key"])
    assert (await by_key.call("GET", "/api/users/me"))[0] == 200
    ann_id = await user_id(ann)
    path = f"/api/admin/users/{ann_id}/api-keys/{created['id']}"
    # Not for non-administrators, not under another account's id
    status, body, _ = await ann.call("DELETE", path)
    assert status == 403 and body["error"]["code"] == "forbidden"
    admin_id = await user_id(admin)
    status, body, _ = await admin.call(
        "DELETE", f"/api/admin/users/{admin_id}/api-keys/{created['id']}"
    )
    assert status == 404 and body["error"]["code"] == "not_found"
    # An administrator revokes it: 204, and the key stops working at once
    status, body, _ = await admin.call("DELETE", path)
    assert status == 204 and body == b""
    status, body, _ = await by_key.call("GET", "/api/users/me")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert await admin.ok("GET", f"/api/admin/users/{ann_id}/api-keys") == []
    assert (await admin.call("DELETE", path))[0] == 404


async def test_a_disabled_account_stops_working_at_once_and_can_be_enabled_again(
    gw: System, admin: Api, ann: Api, http: aiohttp.ClientSession
) -> None:
    key = (await ann.ok("POST", "/api/account/api-keys", 201, json={"name": "k"}))["key"]
    by_key = Api(http, gw.url, api_key=key)
    sse = await open_sse(ann)
    ws = await open_socket(http, gw.url, key)
    ann_id = await user_id(ann)
    assert (await ann.call("PATCH", f"/api/admin/users/{ann_id}", json={"disabled": True}))[
        0
    ] == 403
    # When an administrator disables Ann
    view = await admin.ok("PATCH", f"/api/admin/users/{ann_id}", json={"disabled": True})
    assert view["disabled"] is True
    # Then her token, her key and her feeds stop working at once, and she cannot sign in
    for api in (ann, by_key):
        status, body, _ = await api.call("GET", "/api/users/me")
        assert status == 401 and body["error"]["code"] == "unauthorized"
    rest, code = await both_end(sse, ws)
    assert "event: error" in rest and code == 4401
    anonymous = Api(http, gw.url)
    login = {"username": "ann", "password": "password-123"}
    assert (await anonymous.call("POST", "/api/auth/login", json=login))[0] == 401
    # Enabled again, she signs in again (tokens minted before stay revoked)
    await admin.ok("PATCH", f"/api/admin/users/{ann_id}", json={"disabled": False})
    await anonymous.ok("POST", "/api/auth/login", json=login)
    assert (await ann.call("GET", "/api/users/me"))[0] == 401
    assert (await by_key.call("GET", "/api/users/me"))[0] == 200


async def test_an_administrator_sets_a_password_which_revokes_older_tokens(
    gw: System, admin: Api, ann: Api, http: aiohttp.ClientSession
) -> None:
    ann_id = await user_id(ann)
    path = f"/api/admin/users/{ann_id}/password"
    assert (await ann.call("POST", path, json={"password": "by-myself-1"}))[0] == 403
    status, body, _ = await admin.call("POST", path, json={"password": "short"})
    assert status == 400 and "8 characters" in body["error"]["message"]
    unknown = "/api/admin/users/nobody/password"
    assert (await admin.call("POST", unknown, json={"password": "x" * 9}))[0] == 404
    await admin.ok("POST", path, json={"password": "set-by-admin-1"})
    assert (await ann.call("GET", "/api/users/me"))[0] == 401
    anonymous = Api(http, gw.url)
    old = {"username": "ann", "password": "password-123"}
    assert (await anonymous.call("POST", "/api/auth/login", json=old))[0] == 401
    await anonymous.ok(
        "POST", "/api/auth/login", json={"username": "ann", "password": "set-by-admin-1"}
    )


async def test_roles_change_but_the_last_active_administrator_stays(
    gw: System, admin: Api, ann: Api, http: aiohttp.ClientSession
) -> None:
    ann_id, admin_id = await user_id(ann), await user_id(admin)
    # The only active administrator cannot be disabled or demoted (not even by itself)
    for change in ({"disabled": True}, {"role": "moderator"}):
        status, body, _ = await admin.call("PATCH", f"/api/admin/users/{admin_id}", json=change)
        assert status == 409 and "last active administrator" in body["error"]["message"]
    status, body, _ = await admin.call("PATCH", f"/api/admin/users/{ann_id}", json={"role": "x"})
    assert status == 400
    assert (await admin.call("PATCH", "/api/admin/users/nobody", json={"role": "user"}))[0] == 404
    # With a second administrator, the first may step down
    promoted = await admin.ok("PATCH", f"/api/admin/users/{ann_id}", json={"role": "admin"})
    assert promoted["role"] == "admin"
    assert (await ann.ok("GET", "/api/admin/users"))[0]["username"] == "admin"
    await ann.ok("PATCH", f"/api/admin/users/{admin_id}", json={"role": "user"})
    assert (await admin.call("GET", "/api/admin/users"))[0] == 403
