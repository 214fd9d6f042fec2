"""The media server's (003) operator routes, walked as its administrators and moderators would:
any account's job read, created on its behalf (duplicates skipped), retried, linked, cancelled
and deleted; the cleanup with no body; the statuses and roles the document gives its job,
transcoding, storage, maintenance, telemetry, API-key and system-status routes; and the output's
file name on a job, batch renames included. One system serves the whole module."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.harness import (
    ADMIN_PASSWORD,
    ALICE,
    Api,
    System,
    eventually,
    fast_env,
    new_namespace,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn
from vidmesh.natsserver import NatsServer


@pytest_asyncio.fixture(scope="module")
async def system(
    nats_server: NatsServer, jellyfin: JellyfinStandIn, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    """One vidmesh for every walk of this module."""
    data = tmp_path_factory.mktemp("admin-jobs") / "data"
    running = await start_system(fast_env(new_namespace(), data, nats_server.url, jellyfin.url))
    yield running
    await stop_system(running)


@pytest_asyncio.fixture(scope="module")
async def people(system: System) -> AsyncIterator[dict[str, Api]]:
    """An administrator, a moderator and two users, signed in once for the module."""
    async with aiohttp.ClientSession() as http:
        admin = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        await admin.ok(
            "POST",
            "/api/admin/users",
            201,
            json={"username": "mod", "password": "password-123", "role": "moderator"},
        )
        yield {
            "admin": admin,
            "mod": await Api(http, system.url).as_user("mod", register=False),
            "ann": await Api(http, system.url).as_user("ann"),
            "ben": await Api(http, system.url).as_user("ben"),
        }


def slow_source(jellyfin: JellyfinStandIn, n: int = 0) -> str:
    """A source served slowly enough that its job is still running while the test acts on it."""
    url = jellyfin.stream_url("long_ts", ALICE, rate="10000", n=str(n))
    return url.replace("/stream?", "/live?")


async def test_administrators_act_on_any_accounts_jobs(
    system: System, people: dict[str, Api], jellyfin: JellyfinStandIn
) -> None:
    admin, mod, ann, ben = people["admin"], people["mod"], people["ann"], people["ben"]
    ann_id = (await ann.ok("GET", "/api/users/me"))["id"]
    slow = slow_source(jellyfin)
    fits = jellyfin.stream_url("fits", ALICE)

    # Given jobs an administrator creates for Ann: a finished one, and a running one (one slot:
    # the first finishes before the second starts); a repeated job is skipped as a duplicate
    first = {"user_id": ann_id, "jobs": [{"source": fits, "destination": {"filename": "a.mp4"}}]}
    (done,) = (await admin.ok("POST", "/api/admin/jobs", 201, json=first))["created"]
    finished = await ann.wait_job(done["id"], "completed")
    jobs = [{"source": slow}, {"source": slow}]
    made = await admin.ok("POST", "/api/admin/jobs", 201, json={"user_id": ann_id, "jobs": jobs})
    (running,) = made["created"]
    assert running["owner"] == ann_id and done["owner"] == ann_id
    assert made["skipped"] == [
        {"index": 1, "source": slow, "preset": "optimized", "duplicate_of": running["id"]}
    ]
    again = await admin.ok(
        "POST", "/api/admin/jobs", 201, json={"user_id": ann_id, "jobs": jobs[:1]}
    )
    assert again["created"] == [] and again["skipped"][0]["duplicate_of"] == running["id"]
    assert {j["id"] for j in (await ann.ok("GET", "/api/jobs"))["items"]} == {
        running["id"],
        done["id"],
    }
    assert (await mod.call("POST", "/api/admin/jobs", json={"jobs": jobs}))[0] == 403
    nobody = {"user_id": "nobody", "jobs": jobs}
    assert (await admin.call("POST", "/api/admin/jobs", json=nobody))[0] == 404
    # A job the account could not submit refuses the whole request, saying which one it was
    bad = {"user_id": ann_id, "jobs": [{"source": slow}, {"source": "/etc/passwd"}]}
    status, refused, _ = await admin.call("POST", "/api/admin/jobs", json=bad)
    assert status == 400 and refused["error"]["details"]["index"] == 1, refused
    assert refused["error"]["message"].startswith("jobs[1]: "), refused

    # Moderators read any job, and the list ignores filters it does not know
    seen = await mod.ok("GET", f"/api/admin/jobs/{done['id']}")
    assert seen["id"] == done["id"] and seen["filename"] == "a.mp4" and seen["spec"]
    assert (await ben.call("GET", f"/api/admin/jobs/{done['id']}"))[0] == 403
    assert (await mod.call("GET", "/api/admin/jobs/no-such-job"))[0] == 404
    listed = await mod.ok("GET", f"/api/admin/jobs?owner={ann_id}&media_file_id=7&destination=x")
    assert {j["id"] for j in listed["items"]} == {running["id"], done["id"]}
    # ... and takes the media server's names: user_id / user for the owner, pages and offsets
    for who in (f"user_id={ann_id}", f"user={ann_id}"):
        assert (await mod.ok("GET", f"/api/admin/jobs?{who}"))["items"] == listed["items"]
    first = await mod.ok("GET", f"/api/admin/jobs?user_id={ann_id}&limit=1&page=1")
    second = await mod.ok("GET", f"/api/admin/jobs?user_id={ann_id}&limit=1&page=2")
    third = await mod.ok("GET", f"/api/admin/jobs?user_id={ann_id}&limit=1&offset=2")
    assert [j["id"] for j in first["items"] + second["items"]] == [j["id"] for j in listed["items"]]
    assert third["items"] == [] and third["next_cursor"] is None
    # `pending` is the media server's word for `queued`; a status that is neither is refused
    pending = await mod.ok("GET", "/api/admin/jobs?status=pending")
    assert all(j["status"] == "queued" for j in pending["items"]), pending
    assert (await mod.call("GET", "/api/admin/jobs?status=stuck"))[0] == 400

    # A signed URL downloads any finished job's output without headers
    assert (await admin.call("POST", f"/api/admin/jobs/{running['id']}/url"))[0] == 409
    assert (await mod.call("POST", f"/api/admin/jobs/{done['id']}/url"))[0] == 403
    signed = await admin.ok("POST", f"/api/admin/jobs/{done['id']}/url")
    async with aiohttp.ClientSession() as anonymous, anonymous.get(signed["url"]) as resp:
        assert resp.status == 200 and len(await resp.read()) == finished["output"]["size"]
        assert 'filename="a.mp4"' in resp.headers["Content-Disposition"]

    # A running job's session is cancelled (200), retried, then cancelled by DELETE
    async def session_of_running() -> dict[str, Any] | None:
        found = await mod.ok("GET", "/api/admin/transcode-sessions?state=running")
        return next((s for s in found if running["id"] in s["jobs"]), None)

    session = await eventually(session_of_running, timeout=30, what="the slow job to run")
    await admin.ok("POST", f"/api/admin/transcode-sessions/{session['id']}/cancel")
    await ann.wait_job(running["id"], "cancelled")
    assert (await admin.call("POST", f"/api/admin/jobs/{done['id']}/retry"))[0] == 409
    retried = await admin.ok("POST", f"/api/admin/jobs/{running['id']}/retry")
    assert retried["status"] in ("queued", "running")
    cancelled = await admin.ok("DELETE", f"/api/admin/jobs/{running['id']}")
    assert cancelled["outcome"] == "cancelled" and cancelled["job"]["status"] == "cancelled"

    # A finished job's record is deleted, and the output it holds goes with it (an output never
    # outlives its record here), with or without remove_file=true
    deleted = await admin.ok("DELETE", f"/api/admin/jobs/{running['id']}")
    assert deleted == {
        "id": running["id"],
        "outcome": "deleted",
        "file_removed": False,
        "job": None,
    }
    assert (await mod.call("GET", f"/api/admin/jobs/{running['id']}"))[0] == 404
    assert len(system.output_files()) == 1
    assert (await mod.call("DELETE", f"/api/admin/jobs/{done['id']}"))[0] == 403
    gone = await admin.ok("DELETE", f"/api/admin/jobs/{done['id']}")
    assert gone["outcome"] == "deleted" and gone["file_removed"] is True
    assert (await ann.call("GET", f"/api/jobs/{done['id']}"))[0] == 404

    async def output_removed() -> bool:
        return not system.output_files()

    await eventually(output_removed, what="the deleted job's output to be removed")

    # The cleanup needs no body: it takes jobs that finished over 24 hours ago (none here)
    cleanup = await admin.ok("POST", "/api/admin/jobs/cleanup", 202)
    assert cleanup["matched"] == 0
    day_ago = time.time() - 24 * 3600
    assert abs(datetime.fromisoformat(cleanup["before"]).timestamp() - day_ago) < 60


async def test_a_jobs_file_name_is_shown_before_its_output_and_after_a_batch_rename(
    people: dict[str, Api], jellyfin: JellyfinStandIn
) -> None:
    ann = people["ann"]
    jobs = [{"source": jellyfin.stream_url("fits", ALICE, n="batch")}]
    batch = await ann.ok("POST", "/api/jobs/bulk", 201, json={"jobs": jobs, "paused": True})
    job_id = batch["results"][0]["job"]["id"]
    assert (await ann.ok("GET", f"/api/jobs/{job_id}"))["filename"].startswith(job_id)
    renamed = {"jobs": [{"id": job_id, "filename": "Episode 1.mp4"}]}
    await ann.ok("PATCH", f"/api/batch/{batch['batch_id']}/jobs", json=renamed)

    async def shown() -> dict[str, Any] | None:
        job = await ann.ok("GET", f"/api/jobs/{job_id}")
        return job if job["filename"] == "Episode 1.mp4" else None

    paused = await eventually(shown, what="the new name on the paused job")
    assert paused["status"] == "paused" and paused.get("output") is None
    assert (await people["admin"].ok("GET", f"/api/admin/jobs/{job_id}"))["filename"] == (
        "Episode 1.mp4"
    )


async def test_statuses_and_roles_are_the_documents(
    people: dict[str, Api], jellyfin: JellyfinStandIn
) -> None:
    admin, mod, ann = people["admin"], people["mod"], people["ann"]
    fits = jellyfin.stream_url("fits", ALICE, n="roles")
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": fits})
    finished = await ann.wait_job(job["id"], "completed")
    # Moderators read sessions and their export, system status, telemetry settings, estimates
    sessions = await mod.ok("GET", "/api/admin/transcode-sessions")
    session = next(s for s in sessions if job["id"] in s["jobs"])
    await mod.ok("GET", f"/api/admin/transcode-sessions/{session['id']}")
    await mod.ok("GET", f"/api/admin/transcode-sessions/{session['id']}/export")
    await mod.ok("GET", "/api/admin/system/status")
    settings = await mod.ok("GET", "/api/admin/settings/telemetry")
    assert (await mod.call("PUT", "/api/admin/settings/telemetry", json=settings))[0] == 403
    await mod.ok("POST", "/api/admin/jobs/estimate", json={"source": fits})
    assert (await ann.call("GET", "/api/admin/system/status"))[0] == 403

    # Deletes answer 204 with no body: a pool, one's own API key, the transcode cache
    await admin.ok("POST", "/api/admin/transcoding/pools", 201, json={"id": "walk"})
    status, body, _ = await admin.call("DELETE", "/api/admin/transcoding/pools/walk")
    assert (status, body) == (204, b"")
    key = await ann.ok("POST", "/api/account/api-keys", 201, json={"name": "walk"})
    await ann.ok("DELETE", f"/api/account/api-keys/{key['id']}", 204)
    # Administrators see the data folder and the outputs per owner as treemaps, in real bytes
    treemap = await admin.ok("GET", "/api/admin/storage/treemap")
    (ann_box,) = [box for box in treemap["children"] if box["name"] == "ann"]
    (output,) = [box for box in ann_box["children"] if job["id"] in box["name"]]
    assert output["size"] == finished["output"]["size"] and treemap["size"] >= output["size"]
    datadir = await admin.ok("GET", "/api/admin/storage/datadir")
    blobs = next(box for box in datadir["children"] if box["name"] == "blobs")
    assert blobs["size"] >= output["size"] and datadir["size"] >= blobs["size"]
    assert (await mod.call("GET", "/api/admin/storage/datadir"))[0] == 403
    assert (await mod.call("DELETE", "/api/admin/maintenance/cache/transcode"))[0] == 403
    await admin.ok("DELETE", "/api/admin/maintenance/cache/transcode", 204)
