"""Password guessing costs: failed sign-ins are limited per username and per client address,
counted in NATS so every gateway replica (and a restarted one) shares the count; argon2 runs in a
bounded pool so a flood of sign-ins leaves other requests alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio

from services.gateway.login_limits import client_address
from tests.harness import ALICE, Api, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn

WRONG = "wrong-password"


@pytest_asyncio.fixture
async def sessions() -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
    """HTTP clients that connect from different loopback addresses (127.0.0.2, .3, ...)."""
    made: dict[str, aiohttp.ClientSession] = {}
    yield made
    for session in made.values():
        await session.close()


def from_address(sessions: dict[str, aiohttp.ClientSession], address: str, url: str) -> Api:
    if address not in sessions:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        sessions[address] = aiohttp.ClientSession(connector=connector)
    return Api(sessions[address], url)


async def sign_in(api: Api, username: str, password: str, path: str = "/api/auth/login") -> Any:
    status, body, resp = await api.call(
        "POST", path, json={"username": username, "password": password}
    )
    return status, body, resp.headers


async def test_failed_sign_ins_are_limited_per_username_across_gateways_and_restarts(
    env: dict[str, str], sessions: dict[str, aiohttp.ClientSession]
) -> None:
    limited = {**env, "VIDMESH_LOGIN_ATTEMPTS": "3"}
    first = await start_system(limited, "gateway")
    second = await start_system(limited, "gateway")  # a second replica, same namespace
    try:
        await from_address(sessions, "127.0.0.9", first.url).as_user("ann")
        # Given three wrong passwords for Ann, from two addresses, through two gateways
        for address, system in (("127.0.0.2", first), ("127.0.0.2", first), ("127.0.0.3", second)):
            status, _, _ = await sign_in(from_address(sessions, address, system.url), "ann", WRONG)
            assert status == 401
        # Then Ann's account refuses further sign-ins, even the right password from elsewhere
        for system, path in ((first, "/api/auth/login"), (second, "/api/login")):
            api = from_address(sessions, "127.0.0.4", system.url)
            status, body, headers = await sign_in(api, "ann", "password-123", path)
            assert status == 429, (status, body)
            assert body["error"]["code"] == "too_many_requests"
            assert 0 < int(headers["Retry-After"]) <= 15 * 60
        # And the count survives a restart of every gateway
        await first.stop("gateway")
        await second.stop("gateway")
        await first.start("gateway")
        api = from_address(sessions, "127.0.0.5", first.url)
        assert (await sign_in(api, "ann", "password-123"))[0] == 429
        # Other accounts are not affected
        await api.as_user("bea")
    finally:
        await second.stop()
        await second.nc.close()
        await stop_system(first)


async def test_failed_sign_ins_are_limited_per_address_and_a_success_does_not_reset_it(
    env: dict[str, str], sessions: dict[str, aiohttp.ClientSession]
) -> None:
    system = await start_system({**env, "VIDMESH_LOGIN_ATTEMPTS": "3"}, "gateway")
    try:
        await from_address(sessions, "127.0.0.9", system.url).as_user("bea")
        guesser = from_address(sessions, "127.0.0.6", system.url)
        # Given two wrong guesses from one address, then a right sign-in of the guesser's own
        assert (await sign_in(guesser, "carl", WRONG))[0] == 401
        assert (await sign_in(guesser, "dora", WRONG))[0] == 401
        assert (await sign_in(guesser, "bea", "password-123"))[0] == 200
        # The success did not wipe the address's failures: one more guess, then 429
        assert (await sign_in(guesser, "emil", WRONG))[0] == 401
        status, body, headers = await sign_in(guesser, "bea", "password-123")
        assert status == 429 and "Retry-After" in headers
        assert body["error"]["status"] == 429
        # A forwarded-for header does not help: no proxy is trusted by default
        status, _, _ = await guesser.call(
            "POST",
            "/api/login",
            json={"username": "bea", "password": "password-123"},
            headers={"X-Forwarded-For": "10.9.9.9"},
        )
        assert status == 429
        # Another address signs in as usual
        other = from_address(sessions, "127.0.0.7", system.url)
        assert (await sign_in(other, "bea", "password-123"))[0] == 200
    finally:
        await stop_system(system)


def test_the_client_address_is_the_peer_unless_the_peer_is_a_trusted_proxy() -> None:
    trusted = ["10.0.0.0/8"]
    assert client_address("203.0.113.9", "198.51.100.1", []) == "203.0.113.9"
    assert client_address("10.1.2.3", "198.51.100.1", []) == "10.1.2.3"
    # Behind a trusted proxy: the rightmost address that is not a trusted proxy
    assert client_address("10.1.2.3", "1.1.1.1, 198.51.100.1, 10.0.0.7", trusted) == (
        "198.51.100.1"
    )
    assert client_address("10.1.2.3", "garbage", trusted) == "10.1.2.3"
    assert client_address("10.1.2.3", "", trusted) == "10.1.2.3"
    assert client_address("203.0.113.9", "198.51.100.1", trusted) == "203.0.113.9"
    # A dual-stack socket names an IPv4 peer ::ffff:a.b.c.d: still the trusted proxy it is
    assert client_address("::ffff:10.1.2.3", "198.51.100.1", trusted) == "198.51.100.1"
    assert client_address("::ffff:203.0.113.9", "", []) == "203.0.113.9"


async def test_a_flood_of_sign_ins_leaves_other_requests_answering(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    system = await start_system({**env, "VIDMESH_LOGIN_ATTEMPTS": "1000"})
    try:
        ann = await Api(http, system.url).as_user("ann")
        job = await ann.ok(
            "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
        )
        await ann.wait_job(job["id"], "completed")
        anonymous = Api(http, system.url)
        done: list[int] = []

        async def wrong(n: int) -> None:
            await sign_in(anonymous, "ann" if n % 2 else f"nobody{n}", WRONG)
            done.append(n)

        # Given 50 wrong sign-ins at once, all of them arrived (the first has answered)
        flood = [asyncio.create_task(wrong(n)) for n in range(50)]
        while not done:
            await asyncio.wait(flood, return_when=asyncio.FIRST_COMPLETED)
        # When Ann downloads her output (a file response: the server opens it in a thread)
        status, body, _ = await ann.call("GET", f"/api/jobs/{job['id']}/file")
        answered_with = len(done)
        # Then it is answered while most sign-ins still wait for their turn
        assert status == 200 and body
        assert answered_with < 25, answered_with
        await asyncio.gather(*flood)
    finally:
        await stop_system(system)


async def test_an_ipv6_client_counts_as_its_whole_network(
    env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    # Behind a trusted proxy, a client with an IPv6 /64 (what one subscriber is handed) cannot
    # spread its guesses over its own addresses; an IPv4 client behind a dual-stack proxy that
    # writes it as ::ffff:a.b.c.d is the same client as a.b.c.d
    system = await start_system(
        {**env, "VIDMESH_LOGIN_ATTEMPTS": "3", "VIDMESH_TRUSTED_PROXIES": "127.0.0.0/8"},
        "gateway",
    )
    try:
        api = Api(http, system.url)

        async def guess(name: str, forwarded: str) -> tuple[int, Any]:
            status, body, _ = await api.call(
                "POST",
                "/api/auth/login",
                json={"username": name, "password": WRONG},
                headers={"X-Forwarded-For": forwarded},
            )
            return status, body

        for n in range(3):
            assert (await guess(f"user{n}", f"2001:db8:1:2::{n + 1}"))[0] == 401
        status, body = await guess("user9", "2001:db8:1:2:ffff:ffff:ffff:ffff")
        assert status == 429 and body["error"]["code"] == "too_many_requests"
        assert (await guess("user9", "2001:db8:1:3::1"))[0] == 401  # another network
        for n in range(3):
            assert (await guess(f"other{n}", "198.51.100.7"))[0] == 401
        assert (await guess("other9", "::ffff:198.51.100.7"))[0] == 429
    finally:
        await stop_system(system)


async def test_concurrent_guesses_at_one_username_however_written_stop_at_the_limit(
    env: dict[str, str], sessions: dict[str, aiohttp.ClientSession]
) -> None:
    system = await start_system({**env, "VIDMESH_LOGIN_ATTEMPTS": "3"}, "gateway")
    try:
        await from_address(sessions, "127.0.0.9", system.url).as_user("ann")
        spellings = ["ann", "ANN", " Ann ", "aNn\t"]
        # 24 wrong guesses at once, from 24 addresses, at Ann written four ways
        guesses = [
            sign_in(from_address(sessions, f"127.0.1.{n + 1}", system.url), spellings[n % 4], WRONG)
            for n in range(24)
        ]
        statuses = sorted(status for status, _, _ in await asyncio.gather(*guesses))
        assert statuses == [401] * 3 + [429] * 21
    finally:
        await stop_system(system)


async def test_a_longer_window_holds_after_a_restart_with_it(
    env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    # Given gateways that ran with a 3-second window (the counts' bucket was made for it)
    short = await start_system({**env, "VIDMESH_LOGIN_WINDOW_MINUTES": "0.05"}, "gateway")
    await short.stop()  # the namespace stays
    await short.nc.close()
    # When the operator restarts them with a 15-minute window and Ann's sign-ins are locked
    system = await start_system({**env, "VIDMESH_LOGIN_ATTEMPTS": "2"}, "gateway")
    try:
        ann = Api(http, system.url)
        await ann.as_user("ann")
        for _ in range(2):
            assert (await sign_in(ann, "ann", WRONG))[0] == 401
        assert (await sign_in(ann, "ann", "password-123"))[0] == 429
        await asyncio.sleep(4)  # the scenario: longer than the old window, far inside the new
        # Then they stay locked for the new window, not the old one
        assert (await sign_in(ann, "ann", "password-123"))[0] == 429
    finally:
        await stop_system(system)
