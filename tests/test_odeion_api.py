"""Odeion media server clients against `vidmesh up`: an administrator, a moderator and a user walk
the document's (`seeds/003_*`) routes that are vidmesh's, with the document's bodies, and read
back the fields and statuses it gives.

Walked here: sign-in and accounts, API keys, transcoding pools, profiles, GPUs and settings,
transcode sessions, the storage summary, the transcode-cache clear, telemetry, the event feeds,
webhooks, and a user's jobs down to the signed download. Tasks, admin job routes and settings
groups have their own modules (test_tasks_api.py, test_admin_jobs_api.py, test_settings_api.py);
test_odeion_conformance.py checks every route's status and role against the document.

One `vidmesh up` serves the whole module; each test is one part of the document, so a part that
differs does not hide the others.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.harness import ADMIN_PASSWORD, ALICE, Api, eventually
from tests.harness.environment import CAPABILITIES_FILE
from tests.harness.up import Up, checkout_up, up_env, without_settings
from tests.jellyfin_standin import JellyfinStandIn

pytestmark = pytest.mark.slow  # the module's fixture runs `vidmesh up`

SSE = {"Accept": "text/event-stream"}


@dataclass
class Odeion:
    """The running server and its three kinds of client."""

    up: Up
    http: aiohttp.ClientSession
    admin: Api
    moderator: Api
    user: Api

    @property
    def url(self) -> str:
        return self.up.url

    def anonymous(self) -> Api:
        return Api(self.http, self.url)


@pytest_asyncio.fixture(scope="module")
async def odeion(
    tmp_path_factory: pytest.TempPathFactory, jellyfin: JellyfinStandIn
) -> AsyncIterator[Odeion]:
    root = tmp_path_factory.mktemp("odeion")
    data = root / "data"
    data.mkdir()
    env = up_env(
        data,
        jellyfin.url,
        base=without_settings(os.environ),
        VIDMESH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        VIDMESH_REGISTRATION="open",
        VIDMESH_CAPABILITIES_FILE=str(CAPABILITIES_FILE),  # the session's one probe
        VIDMESH_PROGRESS_INTERVAL="0.25",
        VIDMESH_OUTBOUND_ALLOW="127.0.0.0/8",  # the webhook receiver below is local
    )
    async with checkout_up(env, root / "up.log") as up, aiohttp.ClientSession() as http:
        admin = await Api(http, up.url).as_user("admin", ADMIN_PASSWORD, register=False)
        await admin.ok(
            "POST",
            "/api/admin/users",
            201,
            json={"username": "mona", "password": "password-123", "role": "moderator"},
        )
        moderator = await Api(http, up.url).as_user("mona", register=False)
        user = await Api(http, up.url).as_user("ulla")
        yield Odeion(up, http, admin, moderator, user)


@dataclass
class Receiver:
    """A webhook receiver: records each delivery and answers 200."""

    calls: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self

    async def _hook(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.calls.append((headers, json.loads(await request.read())))
        return web.json_response({"received": True})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class Document:
    """The statuses the document gives, checked at the end of a walk, so that one route that
    answers otherwise does not hide what the rest of the walk shows."""

    def __init__(self) -> None:
        self.differences: list[str] = []

    def expect(self, what: str, status: int, wanted: int, body: Any = None) -> None:
        if status != wanted:
            self.differences.append(f"{what}: {status} (the document: {wanted}) {body!r:.200}")

    def check(self) -> None:
        if self.differences:
            pytest.fail("\n".join(self.differences), pytrace=False)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = await Receiver().start()
    yield hook
    await hook.stop()


# ---- Auth -----------------------------------------------------------------------------------
async def test_a_client_registers_signs_in_refreshes_and_changes_its_password(
    odeion: Odeion,
) -> None:
    anonymous = odeion.anonymous()
    credentials = {"username": "olga", "password": "password-123"}
    registered = await anonymous.ok("POST", "/api/auth/register", 201, json=credentials)
    assert registered["user"]["username"] == "olga" and registered["user"]["role"] == "user"

    login = await anonymous.ok("POST", "/api/auth/login", json=credentials)
    assert login["token"] and login["user"]["username"] == "olga"
    olga = Api(odeion.http, odeion.url, token=login["token"])
    me = await olga.ok("GET", "/api/users/me")
    assert (me["id"], me["username"], me["role"]) == (registered["user"]["id"], "olga", "user")

    # vidmesh refreshes with the refresh token in the body (the document: with the session)
    refreshed = await anonymous.ok(
        "POST", "/api/auth/refresh", json={"refresh_token": login["refresh_token"]}
    )
    olga = Api(odeion.http, odeion.url, token=refreshed["token"])
    assert (await olga.ok("GET", "/api/users/me"))["id"] == me["id"]

    # vidmesh answers the change with fresh tokens (200; the document: 204), since it signs
    # every session out
    changed = await olga.ok(
        "PUT",
        "/api/users/me/password",
        json={"current_password": "password-123", "new_password": "password-456"},
    )
    assert (await olga.call("GET", "/api/users/me"))[0] == 401
    fresh = Api(odeion.http, odeion.url, token=changed["token"])
    assert (await fresh.ok("GET", "/api/users/me"))["id"] == me["id"]
    moved = {"username": "olga", "password": "password-456"}
    assert (await anonymous.ok("POST", "/api/auth/login", json=moved))["token"]
    assert (await anonymous.call("POST", "/api/auth/login", json=credentials))[0] == 401


# ---- API keys -------------------------------------------------------------------------------
async def test_api_keys_are_made_listed_and_revoked_by_their_owner_and_by_an_admin(
    odeion: Odeion,
) -> None:
    user, admin = odeion.user, odeion.admin
    me = await user.ok("GET", "/api/users/me")
    first = await user.ok("POST", "/api/account/api-keys", 201, json={"name": "laptop"})
    second = await user.ok("POST", "/api/account/api-keys", 201, json={"name": "phone"})
    assert first["name"] == "laptop" and first["key"].startswith(first["prefix"])

    # The plaintext is shown once; lists carry the keys without it
    listed = await user.ok("GET", "/api/account/api-keys")
    assert {k["id"] for k in listed} >= {first["id"], second["id"]}
    assert all("key" not in k for k in listed)
    by_admin = await admin.ok("GET", f"/api/admin/users/{me['id']}/api-keys")
    assert {k["id"] for k in by_admin} >= {first["id"], second["id"]}
    assert all(k["user_id"] == me["id"] for k in by_admin)

    # A key signs its owner in, by x-api-key as by Bearer
    for headers in ({"x-api-key": first["key"]}, {"Authorization": f"Bearer {first['key']}"}):
        async with odeion.http.get(f"{odeion.url}/api/users/me", headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["id"] == me["id"]

    # An administrator revokes one: 204, and it no longer signs in
    gone = f"/api/admin/users/{me['id']}/api-keys/{second['id']}"
    await admin.ok("DELETE", gone, 204)
    assert (await Api(odeion.http, odeion.url, api_key=second["key"]).call("GET", "/api/users/me"))[
        0
    ] == 401

    # Its owner revokes the other
    status, body, _ = await user.call("DELETE", f"/api/account/api-keys/{first['id']}")
    assert status in (200, 204), body
    assert (await Api(odeion.http, odeion.url, api_key=first["key"]).call("GET", "/api/users/me"))[
        0
    ] == 401
    document = Document()
    document.expect("DELETE /api/account/api-keys/{id}", status, 204, body)
    document.check()


# ---- Transcoding ----------------------------------------------------------------------------
async def test_an_admin_manages_pools_profiles_gpus_and_transcoder_settings(
    odeion: Odeion,
) -> None:
    admin = odeion.admin
    pools = await admin.ok("GET", "/api/admin/transcoding/pools")
    default = next(p for p in pools if p["id"] == "default")
    assert default["transcoders"] >= 1 and default["enabled"] is True

    created = await admin.ok(
        "POST",
        "/api/admin/transcoding/pools",
        201,
        json={"id": "odeion", "device": "cpu", "concurrency": 2, "description": "walk"},
    )
    assert (created["id"], created["device"], created["concurrency"]) == ("odeion", "cpu", 2)
    changed = await admin.ok(
        "PUT", "/api/admin/transcoding/pools/odeion", json={"concurrency": 3, "enabled": False}
    )
    assert (changed["concurrency"], changed["enabled"], changed["description"]) == (
        3,
        False,
        "walk",
    )
    assert (await admin.ok("GET", "/api/admin/transcoding/pools/odeion"))["concurrency"] == 3

    probed = await admin.ok("POST", "/api/admin/transcoding/pools/default/probe")
    assert probed["pool"] == "default" and probed["answered"] == probed["expected"] >= 1

    profiles = await admin.ok("GET", "/api/admin/transcoding/profiles")
    assert profiles and all(p["name"] for p in profiles)
    gpus = await admin.ok("GET", "/api/admin/transcoding/gpus")
    assert isinstance(gpus["gpus"], list)

    settings = await admin.ok("GET", "/api/admin/transcoding/settings")
    updated = await admin.ok("PUT", "/api/admin/transcoding/settings", json={"max_height": 1080})
    assert updated["max_height"] == 1080
    assert updated["hardware_preference"] == settings["hardware_preference"]
    await admin.ok("PUT", "/api/admin/transcoding/settings", json={"max_height": None})

    # The moderator role does not reach the administrator's transcoding routes
    assert (await odeion.moderator.call("GET", "/api/admin/transcoding/pools"))[0] == 403

    status, body, _ = await admin.call("DELETE", "/api/admin/transcoding/pools/odeion")
    assert status in (200, 204), body
    assert (await admin.call("GET", "/api/admin/transcoding/pools/odeion"))[0] == 404
    document = Document()
    document.expect("DELETE /api/admin/transcoding/pools/{id}", status, 204, body)
    document.check()


# ---- Jobs, signed URLs and the event feeds ---------------------------------------------------
async def test_a_user_runs_a_job_follows_it_and_downloads_it_by_signed_url(
    odeion: Odeion, jellyfin: JellyfinStandIn
) -> None:
    user = odeion.user
    # The document's SSE feed, the token in the query as EventSource sends it: its first event
    # is the job's acceptance
    feed_url = f"{odeion.url}/api/events?token={user.token}"
    async with odeion.http.get(feed_url, headers=SSE) as feed:
        assert feed.status == 200
        assert feed.headers["Content-Type"].startswith("text/event-stream")
        source = jellyfin.stream_url("fits", ALICE)
        job = await user.ok("POST", "/api/jobs", 201, json={"source": source})
        assert job["status"] in ("queued", "running", "completed") and job["source"] == source
        first = await _first_event(feed)
    assert first["event"] == "job.accepted" and first["data"]["job_id"] == job["id"]

    done = await user.wait_job(job["id"], "completed", "failed", timeout=60)
    assert done["status"] == "completed", done
    assert done["output"]["name"] and done["output"]["size"] > 0
    listed = await user.ok("GET", "/api/jobs")
    assert job["id"] in [j["id"] for j in listed["items"]] and listed["count"] >= 1

    signed = await user.ok("POST", f"/api/jobs/{job['id']}/url")
    assert "/api/files?token=" in signed["url"] and signed["expires_at"]
    async with odeion.http.get(signed["url"]) as resp:  # no header: the token is the key
        assert resp.status == 200
        assert resp.headers["Content-Disposition"].startswith("attachment")
        assert len(await resp.read()) == done["output"]["size"]

    confirmed = await user.ok("POST", f"/api/jobs/{job['id']}/complete")
    assert confirmed["downloaded_at"] is not None

    # Another user does not see it; the moderator reads every job
    stranger = await Api(odeion.http, odeion.url).as_user("vera")
    assert (await stranger.call("GET", f"/api/jobs/{job['id']}"))[0] == 404
    every = await odeion.moderator.ok("GET", "/api/admin/jobs")
    assert job["id"] in [j["id"] for j in every["items"]]
    summary = await odeion.moderator.ok("GET", "/api/admin/jobs/summary")
    assert summary["total"] >= 1 and summary["by_status"]["completed"] >= 1

    # Deleting a finished job lets its output go
    status, body, _ = await user.call("DELETE", f"/api/jobs/{job['id']}")
    assert status in (200, 204), body
    async with odeion.http.get(signed["url"]) as resp:
        assert resp.status == 404
    document = Document()
    document.expect("DELETE /api/jobs/{id}", status, 204, body)
    document.check()


async def _first_event(feed: aiohttp.ClientResponse, timeout: float = 20.0) -> dict[str, Any]:
    """The first event of an SSE stream (comments skipped): its `event` and parsed `data`."""
    found: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            raw = await feed.content.readline()
            assert raw, "the feed ended"
            line = raw.decode().rstrip("\n")
            if not line:
                if found:
                    return found
                continue
            if not line.startswith(":"):  # a comment (keepalive)
                name, _, value = line.partition(": ")
                found[name] = json.loads(value) if name == "data" else value


async def test_the_websocket_signs_in_with_its_first_frame(odeion: Odeion) -> None:
    me = await odeion.user.ok("GET", "/api/users/me")
    async with odeion.http.ws_connect(f"{odeion.url}/api/ws") as ws:
        await ws.send_json({"type": "c2s_auth", "payload": {"token": odeion.user.token}})
        ok = await ws.receive_json(timeout=5)
    assert ok == {"type": "s2c_auth_ok", "payload": {"user_id": me["id"], "role": "user"}}


async def test_transcode_sessions_are_listed_exported_and_cancelled(
    odeion: Odeion, jellyfin: JellyfinStandIn
) -> None:
    admin = odeion.admin
    # A job read slowly enough to be caught running
    slow = jellyfin.stream_url("long_ts", ALICE, rate="100000").replace("/stream?", "/live?")
    job = await odeion.user.ok("POST", "/api/jobs", 201, json={"source": slow})

    async def running() -> dict[str, Any] | None:
        found = await admin.ok("GET", "/api/admin/transcode-sessions?state=running")
        return next((s for s in found if job["id"] in s["jobs"]), None)

    session = await eventually(running, timeout=30, what="the job's session to run")
    assert session["pool"] == "default" and session["worker"]
    detail = await admin.ok("GET", f"/api/admin/transcode-sessions/{session['id']}")
    assert detail["session"]["id"] == session["id"] and detail["session"]["state"] == "running"
    status, export, resp = await admin.call(
        "GET", f"/api/admin/transcode-sessions/{session['id']}/export"
    )
    assert status == 200 and resp.headers["Content-Disposition"].startswith("attachment")
    assert export["session"]["id"] == session["id"]
    assert [j["id"] for j in export["jobs"]] == [job["id"]]

    # Cancelling it cancels its job
    document = Document()
    status, body, _ = await admin.call(
        "POST", f"/api/admin/transcode-sessions/{session['id']}/cancel"
    )
    assert status in (200, 202), body
    document.expect("POST /api/admin/transcode-sessions/{id}/cancel", status, 200, body)
    assert (await odeion.user.wait_job(job["id"], "cancelled"))["status"] == "cancelled"
    status, _, _ = await admin.call("POST", f"/api/admin/transcode-sessions/{session['id']}/cancel")
    assert status == 409  # it is over

    # The moderator reads sessions and their export, but does not cancel them
    moderator = odeion.moderator
    assert (await moderator.call("POST", f"/api/admin/transcode-sessions/{session['id']}/cancel"))[
        0
    ] == 403
    for path in (
        "/api/admin/transcode-sessions",
        f"/api/admin/transcode-sessions/{session['id']}",
        f"/api/admin/transcode-sessions/{session['id']}/export",
    ):
        status, body, _ = await moderator.call("GET", path)
        document.expect(f"GET {path} as a moderator", status, 200, body)
    document.check()


# ---- Storage and maintenance ----------------------------------------------------------------
async def test_the_storage_summary_counts_outputs_and_the_transcode_cache_clear_removes_them(
    odeion: Odeion, jellyfin: JellyfinStandIn
) -> None:
    admin, user = odeion.admin, odeion.user
    source = jellyfin.stream_url("fits", ALICE, n="storage")
    job = await user.ok("POST", "/api/jobs", 201, json={"source": source})
    done = await user.wait_job(job["id"], "completed", "failed", timeout=60)
    assert done["status"] == "completed", done

    summary = await admin.ok("GET", "/api/admin/storage/summary")
    assert summary["outputs_held"] >= 1 and summary["bytes_held"] >= done["output"]["size"]
    assert summary["stores"] and all(
        {"name", "kind", "files", "bytes"} <= set(s) for s in summary["stores"]
    )
    assert (await odeion.moderator.call("GET", "/api/admin/storage/summary"))[0] == 403

    status, body, _ = await admin.call("DELETE", "/api/admin/maintenance/cache/transcode")
    assert status in (200, 202, 204), body

    # The finished job lets its output go
    async def removed() -> dict[str, Any] | None:
        found = await user.ok("GET", f"/api/jobs/{job['id']}")
        return found if found["status"] == "removed" else None

    await eventually(removed, timeout=15, what="the cleared job to be removed")
    document = Document()
    document.expect("DELETE /api/admin/maintenance/cache/transcode", status, 204, body)
    document.check()


# ---- Telemetry and system status -------------------------------------------------------------
async def test_telemetry_is_read_by_admins_and_its_settings_by_moderators(odeion: Odeion) -> None:
    admin, moderator = odeion.admin, odeion.moderator
    metrics = await admin.ok("GET", "/api/admin/telemetry/metrics")
    names = {m["name"] for m in metrics}
    assert "jobs" in names and all(m["unit"] and m["description"] for m in metrics)
    result = await admin.ok("GET", "/api/admin/telemetry/query", params={"metric": "jobs"})
    assert result["metric"] == "jobs" and isinstance(result["series"], list)
    live = await admin.ok("GET", "/api/admin/telemetry/live-buffer")
    assert live["enabled"] is True and set(live["metrics"]) <= names
    pools = await admin.ok("GET", "/api/admin/telemetry/pool-metrics")
    assert "default" in [p["pool"] for p in pools["pools"]]

    settings = await admin.ok("GET", "/api/admin/settings/telemetry")
    assert {"enabled", "interval_seconds", "retention_hours"} <= set(settings)
    kept = {"retention_hours": settings["retention_hours"]}
    changed = await admin.ok("PUT", "/api/admin/settings/telemetry", json=kept)
    assert changed["retention_hours"] == settings["retention_hours"]
    assert (await admin.ok("GET", "/api/admin/system/status")) is not None

    # Moderators read the settings and the system status, change nothing, see no telemetry
    assert (await moderator.call("PUT", "/api/admin/settings/telemetry", json=kept))[0] == 403
    assert (await moderator.call("GET", "/api/admin/telemetry/metrics"))[0] == 403
    document = Document()
    for path in ("/api/admin/settings/telemetry", "/api/admin/system/status"):
        status, body, _ = await moderator.call("GET", path)
        document.expect(f"GET {path} as a moderator", status, 200, body)
    document.check()


# ---- Webhooks -------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["admin", "user"])
async def test_webhooks_are_created_read_changed_tested_and_deleted(
    odeion: Odeion, receiver: Receiver, who: str
) -> None:
    api = odeion.admin if who == "admin" else odeion.user
    base = "/api/admin/webhooks" if who == "admin" else "/api/webhooks"
    kinds = await api.ok("GET", f"{base}/event-types")
    assert "job.completed" in [k["type"] for k in kinds]

    body = {"url": receiver.url, "event_types": ["job.completed"], "description": "walk"}
    created = await api.ok("POST", base, 201, json=body)
    hook_id = created["id"]
    assert created["secret"] and created["enabled"] is True  # the secret, shown once

    listed = await api.ok("GET", base)
    (item,) = [h for h in listed if h["id"] == hook_id]
    assert "secret" not in item
    assert item["deliveries_24h"] == {"succeeded": 0, "failed": 0, "pending": 0}
    read = await api.ok("GET", f"{base}/{hook_id}")
    assert (read["url"], read["event_types"], read["description"]) == (
        receiver.url,
        ["job.completed"],
        "walk",
    )

    # PUT changes only the fields it is given
    changed = await api.ok("PUT", f"{base}/{hook_id}", json={"description": "changed"})
    assert (changed["url"], changed["event_types"], changed["description"]) == (
        receiver.url,
        ["job.completed"],
        "changed",
    )

    tested = await api.ok("POST", f"{base}/{hook_id}/test")
    assert tested["succeeded"] is True and tested["response"]["status"] == 200
    ((headers, payload),) = receiver.calls
    assert payload["type"] == "webhook.test" and headers["webhook-id"] == tested["delivery_id"]
    assert headers["webhook-signature"]

    deliveries = await api.ok("GET", f"{base}/{hook_id}/deliveries")
    assert tested["delivery_id"] in [d["id"] for d in deliveries]
    delivery = await api.ok("GET", f"{base}/deliveries/{tested['delivery_id']}")
    assert delivery["webhook_id"] == hook_id and delivery["event_type"] == "webhook.test"
    assert delivery["attempts"][0]["request_headers"]["webhook-id"] == tested["delivery_id"]
    counted = next(h for h in await api.ok("GET", base) if h["id"] == hook_id)
    assert counted["deliveries_24h"]["succeeded"] == 1

    # DELETE: 204, and the delivery history goes with it
    await api.ok("DELETE", f"{base}/{hook_id}", 204)
    assert (await api.call("GET", f"{base}/{hook_id}"))[0] == 404
    assert (await api.call("GET", f"{base}/deliveries/{tested['delivery_id']}"))[0] == 404


async def test_the_media_librarys_routes_are_not_served(odeion: Odeion) -> None:
    for method, path in (
        ("GET", "/api/libraries"),
        ("GET", "/api/movies/1"),
        ("POST", "/api/playback/movie/1/download-url"),
        ("DELETE", "/api/admin/maintenance/cache/subtitles"),
    ):
        status, body, _ = await odeion.admin.call(method, path)
        assert status == 404 and body["error"]["code"] == "not_found", (method, path, body)
