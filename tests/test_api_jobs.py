"""Jobs through the native API: create (idempotently), follow, list with filters and cursors,
cancel, delete, restart, retry, confirm, download with headers or a signed URL, and usage."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import ALICE, Api, System, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn


def url_of(jellyfin: JellyfinStandIn, item: str, **params: str) -> str:
    return jellyfin.stream_url(item, ALICE, **params)


async def test_a_job_tells_its_story_from_queued_to_completed(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    job = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "hevc"), "preset": "h264-720p"}
    )
    assert job["status"] in ("queued", "running") and job["preset"] == "h264-720p"
    assert job["spec"]["video"]["codec"] == "h264"
    done = await ann.wait_job(job["id"], "completed", "failed")
    assert done["status"] == "completed" and done["stage"] == "completed", done
    assert done["progress"] == 100 and done["attempts"] == 1 and done["error"] is None
    assert done["output"]["size"] > 0 and len(done["output"]["sha256"]) == 64
    assert done["probe"]["streams"] and done["probe"]["duration"] > 1.5
    status = await ann.ok("GET", f"/api/jobs/{job['id']}/status")
    assert status["stage"] == "completed" and status["progress"] == 100
    body = await ann.ok("GET", f"/api/jobs/{job['id']}/file")
    assert hashlib.sha256(body).hexdigest() == done["output"]["sha256"]


async def test_a_running_job_shows_stage_progress_speed_and_eta(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    source = url_of(jellyfin, "long_ts", rate="120000")
    source = source.replace("/stream?", "/live?")
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})

    async def encoding() -> dict[str, Any] | None:
        status = await ann.ok("GET", f"/api/jobs/{job['id']}/status")
        return status if status["stage"] == "encoding" and status["speed"] else None

    live = await eventually(encoding, timeout=20, what="the job to be encoding")
    assert 0 <= live["progress"] < 100 and live["fps"] is not None
    await ann.ok("POST", f"/api/jobs/{job['id']}/cancel")
    assert (await ann.ok("GET", f"/api/jobs/{job['id']}"))["status"] == "cancelled"
    status, body, _ = await ann.call("POST", f"/api/jobs/{job['id']}/cancel")
    assert status == 409 and body["error"]["code"] == "conflict"


async def test_the_same_idempotency_key_returns_the_same_job(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    request = {"source": url_of(jellyfin, "fits"), "preset": "optimized"}
    headers = {"Idempotency-Key": "order-42"}
    first = await ann.ok("POST", "/api/jobs", 201, json=request, headers=headers)
    status, again, resp = await ann.call("POST", "/api/jobs", json=request, headers=headers)
    assert status == 201 and again["id"] == first["id"]
    assert resp.headers["Idempotent-Replayed"] == "true"
    different = {**request, "priority": 5}
    status, body, _ = await ann.call("POST", "/api/jobs", json=different, headers=headers)
    assert status == 409 and "different request" in body["error"]["message"]
    listed = await ann.ok("GET", "/api/jobs")
    assert [job["id"] for job in listed["items"]] == [first["id"]]


async def test_lists_filter_and_page_with_cursors(
    system: System, ann: Api, ben: Api, jellyfin: JellyfinStandIn
) -> None:
    sources = [{"source": url_of(jellyfin, "fits", n=str(n))} for n in range(5)]
    bulk = await ann.ok("POST", "/api/jobs/bulk", 201, json={"jobs": sources, "paused": True})
    assert bulk["created"] == 5
    await ben.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "fits")})
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2&status=paused" + (f"&cursor={cursor}" if cursor else "")
        page = await ann.ok("GET", "/api/jobs" + query)
        assert page["count"] <= 2
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    created = [item["job"]["id"] for item in bulk["results"]]
    assert seen == list(reversed(created))  # newest first, each once, only the caller's
    assert (await ann.ok("GET", "/api/jobs?status=completed"))["items"] == []
    future = "2999-01-01T00:00:00Z"
    assert (await ann.ok("GET", f"/api/jobs?created_after={future}"))["count"] == 0
    status, body, _ = await ann.call("GET", "/api/jobs?cursor=garbage!")
    assert status == 400
    status, body, _ = await ann.call("GET", "/api/jobs?limit=0")
    assert status == 400


async def test_delete_cancels_an_active_job_or_lets_a_finished_output_go(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "fits")})
    await ann.wait_job(job["id"], "completed")
    assert len(system.output_files()) == 1
    await ann.ok("DELETE", f"/api/jobs/{job['id']}", 204)
    assert (await ann.ok("GET", f"/api/jobs/{job['id']}"))["status"] == "removed"
    await eventually(lambda: not system.output_files(), what="the output file to be deleted")
    assert (await ann.call("GET", f"/api/jobs/{job['id']}/file"))[0] == 404
    status, _, _ = await ann.call("DELETE", f"/api/jobs/{job['id']}/file")
    assert status == 409


async def test_restart_transcodes_a_finished_job_anew(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "hevc")})
    first = await ann.wait_job(job["id"], "completed", timeout=60)
    restarted = await ann.ok("POST", f"/api/jobs/{job['id']}/restart")
    assert restarted["status"] in ("queued", "running", "completed")
    second = await ann.wait_job(job["id"], "completed", timeout=60)
    assert second["output"]["sha256"]
    record = system.scheduler.jobs.get(job["id"])
    assert record is not None and record.nonce  # its own rendition, transcoded again
    assert second["finished_at"] > first["finished_at"]


async def test_retry_runs_a_failed_job_again(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    system = await start_system({**env, "VIDMESH_MAX_ATTEMPTS": "1"})
    try:
        ann = await Api(http, system.url).as_user("ann")
        source = url_of(jellyfin, "fits", fail_until=f"{time.time() + 1.5:.3f}")
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
        failed = await ann.wait_job(job["id"], "failed", "completed")
        assert failed["status"] == "failed" and failed["error"]["reason"]
        status, _, _ = await ann.call("POST", f"/api/jobs/{job['id']}/complete")
        assert status == 409

        async def source_back() -> bool:
            async with http.get(source) as resp:
                return resp.status == 200

        await eventually(source_back, what="the source to answer again")
        await ann.ok("POST", f"/api/jobs/{job['id']}/retry")
        done = await ann.wait_job(job["id"], "completed", "failed")
        assert done["status"] == "completed" and done["error"] is None
        status, _, _ = await ann.call("POST", f"/api/jobs/{job['id']}/retry")
        assert status == 409
    finally:
        await stop_system(system)


async def test_confirming_a_download_extends_retention(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "fits")})
    done = await ann.wait_job(job["id"], "completed")
    confirmed = await ann.ok("POST", f"/api/jobs/{job['id']}/complete")
    assert confirmed["status"] == "completed" and confirmed["downloaded_at"]
    assert confirmed["keep_until"] >= done["keep_until"]


async def test_signed_urls_download_without_headers_and_expire_in_their_token(
    system: System, ann: Api, ben: Api, jellyfin: JellyfinStandIn, http: aiohttp.ClientSession
) -> None:
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "hevc")})
    done = await ann.wait_job(job["id"], "completed", timeout=60)
    signed = await ann.ok("POST", f"/api/jobs/{job['id']}/url")
    assert "/api/files?token=" in signed["url"] and signed["expires_at"]
    async with http.get(signed["url"], headers={"Range": "bytes=0-99"}) as resp:
        assert resp.status == 206 and len(await resp.read()) == 100
        assert resp.headers["X-File-Checksum"] == done["output"]["sha256"]
    async with http.get(signed["url"] + "x") as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    # Ben can neither mint a link to Ann's job nor use a sign-in token as a link token
    assert (await ben.call("POST", f"/api/jobs/{job['id']}/url"))[0] == 404
    async with http.get(f"{system.url}/api/files?token={ann.token}") as resp:
        assert resp.status == 401


async def test_a_signed_url_stops_with_the_account_that_minted_it(
    system: System, ann: Api, admin_api: Api, jellyfin: JellyfinStandIn, http: aiohttp.ClientSession
) -> None:
    # A signed URL is a credential like a token: a password change or a disabled account ends it
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "fits")})
    await ann.wait_job(job["id"], "completed", timeout=60)
    link = (await ann.ok("POST", f"/api/jobs/{job['id']}/url"))["url"]
    async with http.get(link) as resp:
        assert resp.status == 200
    changed = await ann.ok(
        "PUT",
        "/api/users/me/password",
        json={"current_password": "password-123", "new_password": "password-456"},
    )
    async with http.get(link) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    ann.token = changed["access_token"]
    link = (await ann.ok("POST", f"/api/jobs/{job['id']}/url"))["url"]
    ann_id = (await ann.ok("GET", "/api/users/me"))["id"]
    await admin_api.ok("PATCH", f"/api/admin/users/{ann_id}", json={"disabled": True})
    async with http.get(link) as resp:
        assert resp.status == 401
    # Enabled again, links minted before stay dead (as its tokens do); new ones work
    await admin_api.ok("PATCH", f"/api/admin/users/{ann_id}", json={"disabled": False})
    async with http.get(link) as resp:
        assert resp.status == 401
    ann = await Api(http, system.url).as_user("ann", "password-456", register=False)
    async with http.get((await ann.ok("POST", f"/api/jobs/{job['id']}/url"))["url"]) as resp:
        assert resp.status == 200


async def test_sources_must_be_http_or_under_a_media_root(
    env: dict[str, str], http: aiohttp.ClientSession, clips: dict[str, Path], tmp_path: Path
) -> None:
    media = clips["fits"].parent
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(clips["fits"].read_bytes())
    (media / "escape.mp4").unlink(missing_ok=True)
    (media / "escape.mp4").symlink_to(outside)
    system = await start_system({**env, "VIDMESH_MEDIA_ROOTS": str(media)})
    try:
        ann = await Api(http, system.url).as_user("ann")
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": str(clips["fits"])})
        assert (await ann.wait_job(job["id"], "completed", "failed"))["status"] == "completed"
        for bad in (
            "/etc/passwd",
            f"{media}/../secret.mp4",
            "relative/file.mp4",
            "ftp://example.com/a.mp4",
            "s3://bucket/key.mp4",
        ):
            status, body, _ = await ann.call("POST", "/api/jobs", json={"source": bad})
            assert status == 400, (bad, body)
        # A link that leads out of the media root is refused where the file is read
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": str(media / "escape.mp4")})
        failed = await ann.wait_job(job["id"], "failed", "completed")
        assert failed["status"] == "failed" and failed["error"]["code"] == "source_refused"
    finally:
        await stop_system(system)
        (media / "escape.mp4").unlink(missing_ok=True)


async def test_metadata_probes_a_source_without_transcoding(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    probe = await ann.ok("POST", "/api/metadata", json={"source": url_of(jellyfin, "hevc")})
    kinds = {stream["kind"]: stream for stream in probe["streams"]}
    assert kinds["video"]["codec"] == "hevc" and kinds["video"]["width"] == 320
    assert kinds["audio"]["channels"] == 6 and probe["duration"] > 1.5
    assert system.output_files() == []
    status, body, _ = await ann.call(
        "POST", "/api/metadata", json={"source": url_of(jellyfin, "not_video")}
    )
    assert status == 422 and body["error"]["message"]


async def test_usage_counts_the_callers_jobs_minutes_and_bytes(
    system: System, ann: Api, ben: Api, jellyfin: JellyfinStandIn
) -> None:
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "fits")})
    done = await ann.wait_job(job["id"], "completed")
    usage = await ann.ok("GET", "/api/usage")
    assert usage["jobs"] == 1 and usage["jobs_by_status"] == {"completed": 1}
    assert usage["bytes_stored"] == done["output"]["size"] and usage["minutes_transcoded"] > 0
    assert (await ben.ok("GET", "/api/usage"))["jobs"] == 0


async def test_a_remote_playlist_cannot_make_the_server_read_its_own_files(
    system: System, ann: Api, jellyfin: JellyfinStandIn, clips: dict[str, Path]
) -> None:
    # A playlist on someone's server whose segment is a file on ours
    jellyfin.texts["evil.m3u8"] = (
        "#EXTM3U\n#EXT-X-TARGETDURATION:20\n#EXTINF:20.0,\n"
        f"file://{clips['long_ts']}\n#EXT-X-ENDLIST\n"
    )
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": f"{jellyfin.url}/Files/evil.m3u8"})
    done = await ann.wait_job(job["id"], "failed", "completed")
    assert done["status"] == "failed" and done["output"] is None


async def test_a_higher_priority_job_starts_first(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    system = await start_system({**env, "MAX_CONCURRENT_JOBS": "1"})
    try:
        ann = await Api(http, system.url).as_user("ann")
        slow = url_of(jellyfin, "long_ts", rate="100000").replace("/stream?", "/live?")
        running = await ann.ok("POST", "/api/jobs", 201, json={"source": slow})
        await ann.wait_job(running["id"], "running")
        low = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "fits")})
        high = await ann.ok(
            "POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "hevc"), "priority": 5}
        )
        await ann.ok("POST", f"/api/jobs/{running['id']}/cancel")
        done_high = await ann.wait_job(high["id"], "completed", timeout=60)
        done_low = await ann.wait_job(low["id"], "completed", timeout=60)
        assert done_high["started_at"] < done_low["started_at"]
    finally:
        await stop_system(system)


async def test_http_sources_to_private_or_metadata_addresses_are_refused(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    for source in (
        "http://127.0.0.1:9/a.mp4",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/a.mp4",
        "http://[::1]/a.mp4",
        "http://localhost:8096/a.mp4",
        "http://2130706433/a.mp4",
    ):
        status, error, _ = await ann.call("POST", "/api/jobs", json={"source": source})
        assert status == 400 and error["error"]["code"] == "outbound_refused", (source, error)
    # the configured Jellyfin server is allowed although it is on loopback here
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "fits")})
    assert job["status"] == "queued"
