"""The Streamyfin face is never open: every way Jellyfin clients send tokens works, anything else
is a JSON 401, and without a Jellyfin server it refuses everything and says why."""

from __future__ import annotations

import aiohttp
import pytest

from tests.harness import ADMIN, ALICE, Client, System, start_system, stop_system
from tests.jellyfin_standin import BAD_ANSWERS, SERVER_ERROR, JellyfinStandIn

ROUTES = [
    ("POST", "/optimize-version"),
    ("GET", "/job-status/x"),
    ("GET", "/all-jobs"),
    ("DELETE", "/cancel-job/x"),
    ("POST", "/start-job/x"),
    ("GET", "/statistics"),
    ("DELETE", "/delete-cache"),
    ("GET", "/download/x"),
]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": ALICE},
        {"Authorization": f'MediaBrowser Client="Streamyfin", Device="iPhone", Token="{ALICE}"'},
        {"Authorization": f"MediaBrowser Client=Streamyfin, Token={ALICE}, Version=1"},
        {"Authorization": f'Emby Token="{ALICE}"'},
        {"X-Emby-Authorization": f'MediaBrowser Token="{ALICE}"'},
        {"X-Emby-Token": ALICE},
        {"X-MediaBrowser-Token": ALICE},
    ],
    ids=[
        "raw",
        "mediabrowser-quoted",
        "mediabrowser-bare",
        "emby",
        "x-emby-auth",
        "x-emby",
        "x-mb",
    ],
)
async def test_jellyfin_token_is_accepted_however_the_client_sends_it(
    system: System, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with http.get(f"{system.url}/all-jobs", headers=headers) as resp:
        assert resp.status == 200
        assert await resp.json() == []


@pytest.mark.parametrize("method,path", ROUTES)
async def test_every_route_refuses_a_caller_without_a_token(
    system: System, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with http.request(method, system.url + path) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("method,path", ROUTES)
async def test_every_route_refuses_a_token_jellyfin_rejects(
    system: System, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with http.request(method, system.url + path, headers={"Authorization": "nope"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["message"]


async def test_accepted_tokens_are_cached_briefly(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    before = jellyfin.hits["/Users/Me"]
    for _ in range(5):
        status, _, _ = await alice.request("GET", "/all-jobs")
        assert status == 200
    assert jellyfin.hits["/Users/Me"] - before <= 1


async def test_unreachable_jellyfin_is_a_503_not_a_401(
    env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    env = {**env, "JELLYFIN_URL": "http://127.0.0.1:9"}
    running = await start_system(env, "gateway")
    try:
        async with http.get(f"{running.url}/all-jobs", headers={"Authorization": "t"}) as resp:
            assert resp.status == 503
            assert "Jellyfin" in (await resp.json())["error"]["message"]
    finally:
        await stop_system(running)


async def test_without_jellyfin_the_face_refuses_everything_and_says_why(
    env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    env = {**env, "JELLYFIN_URL": ""}
    running = await start_system(env, "gateway")
    try:
        for method, path in ROUTES:
            async with http.request(
                method, running.url + path, headers={"Authorization": ALICE}
            ) as r:
                assert r.status == 503
                body = await r.json()
                assert body["error"]["code"] == "not_configured"
                assert "JELLYFIN_URL" in body["error"]["message"]
    finally:
        await stop_system(running)


async def test_other_users_jobs_are_invisible(
    system: System, alice: Client, bob: Client, jellyfin: JellyfinStandIn
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE), device="alice-phone")
    status, _, _ = await bob.request("GET", f"/job-status/{job_id}")
    assert status == 404
    status, body, _ = await bob.request("GET", "/all-jobs")
    assert status == 200 and body == []
    for method, path in [
        ("DELETE", "/cancel-job/"),
        ("POST", "/start-job/"),
        ("GET", "/download/"),
    ]:
        status, _, _ = await bob.request(method, path + job_id)
        assert status == 404


async def test_an_administrator_sees_every_job_but_not_other_users_credentials(
    system: System, alice: Client, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE), device="alice-phone")
    admin = Client(http, system.url, ADMIN)
    status, jobs, _ = await admin.request("GET", "/all-jobs")
    assert status == 200 and [j["id"] for j in jobs] == [job_id]
    assert ALICE not in jobs[0]["inputUrl"] and "api_key=***" in jobs[0]["inputUrl"]


@pytest.mark.parametrize("token", BAD_ANSWERS)
async def test_an_answer_that_is_not_a_jellyfin_user_is_a_401_every_time(
    system: System, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn, token: str
) -> None:
    # Given a /Users/Me answer that is a login page, a redirect to one, or JSON that names nobody
    caller = Client(http, system.url, token)
    payload = {"url": jellyfin.stream_url("fits", ALICE), "deviceId": "d", "itemId": "fits"}
    before = jellyfin.hits["/Users/Me"]
    # When the caller uses the Streamyfin face, twice
    for _ in range(2):
        status, body, _ = await caller.request("POST", "/optimize-version", json=payload)
        # Then each request is refused, and nothing was created
        assert status == 401, body
        assert body["error"]["code"] == "unauthorized"
        status, body, _ = await caller.request("GET", "/all-jobs")
        assert status == 401, body
    assert jellyfin.hits["/Users/Me"] > before  # it asked Jellyfin, and trusted no answer
    status, jobs, _ = await Client(http, system.url, ADMIN).request("GET", "/all-jobs")
    assert status == 200 and jobs == []


async def test_a_jellyfin_that_answers_5xx_is_a_503_not_a_pass(
    system: System, http: aiohttp.ClientSession
) -> None:
    caller = Client(http, system.url, SERVER_ERROR)
    for _ in range(2):
        status, body, _ = await caller.request("GET", "/all-jobs")
        assert status == 503, body
        assert "Jellyfin" in body["error"]["message"]
