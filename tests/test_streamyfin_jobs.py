"""The Streamyfin optimize-server API, used the way the Streamyfin app uses it: optimize, poll
`/all-jobs`, download, confirm with `cancel-job`; plus the promises of the original's
documentation that the original itself broke."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import av
import pytest

from tests.harness import ALICE, BOB, Client, System, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn
from tests.media_clips import make_clip, mp4_top_level_boxes

STREAMYFIN_FIELDS = {
    "id",
    "status",
    "progress",
    "outputPath",
    "inputUrl",
    "deviceId",
    "itemId",
    "item",
    "timestamp",
    "size",
    "speed",
    "checksum",
}


async def download(client: Client, job_id: str) -> tuple[bytes, dict[str, str]]:
    status, body, resp = await client.request("GET", f"/download/{job_id}")
    assert status == 200, (status, body)
    return body, dict(resp.headers)


def probe_file(data: bytes, tmp_path: Path, name: str) -> av.container.InputContainer:
    path = tmp_path / name
    path.write_bytes(data)
    return av.open(str(path))


async def test_streamyfin_app_flow_optimize_poll_download_confirm(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    # Given the app asks for an optimized version of an item
    item = {"Id": "fits", "Name": "Big Buck", "Type": "Movie", "RunTimeTicks": 20_000_000}
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE), device="phone", item=item)

    # When it polls /all-jobs for its device, as it does every 2 s
    async def listed_complete() -> dict[str, Any] | None:
        status, jobs, _ = await alice.request("GET", "/all-jobs?deviceId=phone")
        assert status == 200 and [j["id"] for j in jobs] == [job_id]
        return jobs[0] if jobs[0]["status"] == "completed" else None

    job = await eventually(listed_complete, timeout=30, what="job to complete")

    # Then the job carries what the app reads, with the original's field names
    assert set(job) >= STREAMYFIN_FIELDS
    assert job["item"]["Name"] == "Big Buck" and job["item"]["Type"] == "Movie"
    assert job["progress"] == 100 and job["size"] > 0 and job["deviceId"] == "phone"
    assert job["inputUrl"] == jellyfin.stream_url("fits", ALICE)
    assert job["timestamp"].endswith("Z")

    # And the download is the file, with its size and checksum
    body, headers = await download(alice, job_id)
    assert int(headers["Content-Length"]) == len(body) == job["size"]
    assert hashlib.sha256(body).hexdigest() == headers["X-File-Checksum"] == job["checksum"]
    assert headers["X-File-Size"] == str(len(body))
    assert headers["Content-Type"] == "video/mp4"
    assert 'filename="fits.mp4"' in headers["Content-Disposition"]

    # When the app confirms its download with DELETE /cancel-job
    status, body, _ = await alice.request("DELETE", f"/cancel-job/{job_id}")
    assert status == 200 and body["message"]

    # Then the job leaves the device's list, reads ready-for-removal, and its file is gone
    status, jobs, _ = await alice.request("GET", "/all-jobs?deviceId=phone")
    assert jobs == []
    assert (await alice.job(job_id))["status"] == "ready-for-removal"
    await eventually(lambda: not system.output_files(), what="output file to be deleted")
    status, body, _ = await alice.request("GET", f"/download/{job_id}")
    assert status == 404 and body["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "payload,fragment",
    [
        ({"deviceId": "d"}, "url"),
        ({"url": "", "deviceId": "d"}, "url"),
        ({"url": 42}, "url"),
        ({"url": "ftp://example.com/a.mkv"}, "http"),
        ({"url": "/media/movie.mkv"}, "http"),
        ({"url": "http:///nohost"}, "host"),
        ({"url": "http://example.com/a.mkv", "fileExtension": "avi"}, "mp4"),
        ({"url": "http://example.com/a.mkv", "fileExtension": "webm"}, "webm"),
        ({"url": "http://example.com/a.mkv", "item": "not an object"}, "item"),
    ],
)
async def test_bad_optimize_requests_are_a_400_with_a_clear_json_error(
    system: System, alice: Client, payload: dict[str, Any], fragment: str
) -> None:
    status, body, _ = await alice.request("POST", "/optimize-version", json=payload)
    assert status == 400, body
    assert body["error"]["code"] == "bad_request"
    assert fragment in body["error"]["message"]


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]"])
async def test_a_body_that_is_not_a_json_object_is_a_400(
    system: System, alice: Client, raw: bytes
) -> None:
    headers = {"Content-Type": "application/json"}
    status, body, _ = await alice.request("POST", "/optimize-version", data=raw, headers=headers)
    assert status == 400 and body["error"]["message"]


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/job-status/"),
        ("DELETE", "/cancel-job/"),
        ("POST", "/start-job/"),
        ("GET", "/download/"),
    ],
)
async def test_unknown_job_ids_are_a_404(
    system: System, alice: Client, method: str, path: str
) -> None:
    for job_id in ("00000000-0000-0000-0000-000000000000", "no-such-job", "x" * 300):
        status, body, _ = await alice.request(method, path + job_id)
        assert status == 404, (method, path, status)
        assert body["error"]["code"] == "not_found"


async def test_starting_a_job_that_is_not_queued_is_a_409(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE))
    await alice.wait_status(job_id, "completed")
    status, body, _ = await alice.request("POST", f"/start-job/{job_id}")
    assert status == 409 and body["error"]["code"] == "conflict"


async def test_source_that_already_fits_is_stream_copied(
    system: System, alice: Client, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE))
    await alice.wait_status(job_id, "completed")
    record = system.scheduler.jobs.get(job_id)
    assert record is not None and record.output is not None
    assert record.output.mode == "copy"
    body, _ = await download(alice, job_id)
    with probe_file(body, tmp_path, "out.mp4") as container:
        video = container.streams.video[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 320, 240)


async def test_hevc_surround_source_becomes_h264_aac_stereo_faststart_mp4(
    system: System, alice: Client, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("hevc", ALICE))
    await alice.wait_status(job_id, "completed", timeout=60)
    body, _ = await download(alice, job_id)
    path = tmp_path / "out.mp4"
    path.write_bytes(body)
    boxes = mp4_top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart: playable while loading
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac" and audio.codec_context.channels == 2


async def test_file_extension_mkv_is_honoured(
    system: System, alice: Client, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE), ext="mkv")
    job = await alice.wait_status(job_id, "completed")
    body, headers = await download(alice, job_id)
    assert headers["Content-Type"] == "video/x-matroska"
    assert job["outputPath"].endswith(".mkv")
    assert body[:4] == b"\x1a\x45\xdf\xa3"  # EBML magic: a Matroska file
    with probe_file(body, tmp_path, "out.mkv") as container:
        assert "matroska" in container.format.name


async def test_source_larger_than_1080p_is_scaled_down(
    system: System, alice: Client, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    jellyfin.add_media(
        "wide", make_clip(tmp_path / "wide.mp4", seconds=0.6, width=2400, height=1350, fps=5)
    )
    job_id = await alice.submit(jellyfin.stream_url("wide", ALICE))
    await alice.wait_status(job_id, "completed", timeout=60)
    body, _ = await download(alice, job_id)
    with probe_file(body, tmp_path, "out.mp4") as container:
        video = container.streams.video[0]
        assert (video.width, video.height) == (1920, 1080)


async def test_progress_and_speed_move_every_second_when_duration_is_unknown(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    # A chunked MPEG-TS stream with no length, and an item without RunTimeTicks
    url = jellyfin.stream_url("long_ts", ALICE, kind="live", rate="120000")
    job_id = await alice.submit(url, item={"Id": "long_ts", "Name": "Live", "Type": "Movie"})
    await alice.wait_status(job_id, "optimizing")
    await eventually(lambda: _has_progress(alice, job_id), what="first progress")
    samples: list[tuple[float, float | None]] = []
    for _ in range(4):
        before = (await alice.job(job_id))["progress"]
        await eventually(
            lambda previous=before: _moved(alice, job_id, previous),
            timeout=1.2,
            interval=0.1,
            what="progress to move within a second",
        )
        after = await alice.job(job_id)
        samples.append((after["progress"], after["speed"]))
    progresses = [p for p, _ in samples]
    assert progresses == sorted(progresses) and 0 < progresses[-1] < 100
    assert all(speed is not None and speed > 0 for _, speed in samples)
    await alice.request("DELETE", f"/cancel-job/{job_id}")


async def _has_progress(client: Client, job_id: str) -> bool:
    job = await client.job(job_id)
    return bool(job["progress"] > 0 and job["speed"])


async def _moved(client: Client, job_id: str, before: float) -> bool:
    return bool((await client.job(job_id))["progress"] > before)


async def test_same_source_from_two_devices_is_transcoded_once(
    system: System, alice: Client, bob: Client, jellyfin: JellyfinStandIn
) -> None:
    # Two users, two devices, two tokens in the URL: the same media with the same profile
    first = await alice.submit(jellyfin.stream_url("hevc", ALICE), device="alice-phone")
    second = await bob.submit(jellyfin.stream_url("hevc", BOB), device="bob-tablet")
    a = await alice.wait_status(first, "completed", timeout=60)
    b = await bob.wait_status(second, "completed", timeout=60)
    assert a["checksum"] == b["checksum"] and a["outputPath"] == b["outputPath"]
    assert len(system.scheduler.renditions) == 1
    assert len(system.output_files()) == 1
    body_a, _ = await download(alice, first)
    body_b, _ = await download(bob, second)
    assert body_a == body_b
    # Confirming one download keeps the file for the other device
    await alice.request("DELETE", f"/cancel-job/{first}")
    body_b_again, _ = await download(bob, second)
    assert body_b_again == body_b


async def test_a_missing_source_fails_visibly_with_a_reason(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("no-such-item", ALICE))
    job = await alice.wait_status(job_id, "failed", "completed", timeout=30)
    assert job["status"] == "failed"
    assert "404" in job["error"]


async def test_a_source_that_is_not_video_fails_with_a_reason(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("not_video", ALICE))
    job = await alice.wait_status(job_id, "failed", "completed", timeout=30)
    assert job["status"] == "failed" and job["error"]
    record = system.scheduler.jobs.get(job_id)
    assert record is not None and record.attempts == 1  # a bad source is not retried


async def test_statistics_count_history_and_survive_a_restart(
    env: dict[str, str], system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE), device="phone-1")
    await alice.wait_status(job_id, "completed")

    async def counted() -> dict[str, Any] | None:
        status, stats, _ = await alice.request("GET", "/statistics")
        assert status == 200
        return stats if stats["completedJobs"] == 1 and stats["cacheBytes"] > 0 else None

    stats = await eventually(counted, what="statistics to count the job")
    assert stats["totalTranscodes"] == 1 and stats["uniqueDevices"] == 1
    assert stats["activeJobs"] == 0
    assert re.fullmatch(r"\d+\.\d{2} (B|KB|MB)", stats["cacheSize"])

    # When every service restarts
    await system.stop()
    again = await start_system(env)
    try:
        restarted = Client(alice.session, again.url, ALICE)
        status, stats_after, _ = await restarted.request("GET", "/statistics")
        assert status == 200
        for key in ("totalTranscodes", "completedJobs", "uniqueDevices", "cacheSize"):
            assert stats_after[key] == stats[key], key
        assert (await restarted.job(job_id))["status"] == "completed"
    finally:
        await stop_system(again)


async def test_a_job_does_not_fail_because_probing_failed(
    env: dict[str, str], http: object, jellyfin: JellyfinStandIn
) -> None:
    # Given probing gives up fast, and the source answers its first request too slowly for it
    system = await start_system({**env, "VIDMESH_PROBE_TIMEOUT": "0.3"})
    try:
        alice = Client(http, system.url, ALICE)  # type: ignore[arg-type]
        url = jellyfin.stream_url("fits", ALICE, slow_first="1.5")
        item = {"Id": "fits", "Name": "Clip", "Type": "Movie", "RunTimeTicks": 20_000_000}
        job_id = await alice.submit(url, item=item)
        # Then ffmpeg still reads it, and the job completes (re-encoded, as nothing was known)
        job = await alice.wait_status(job_id, "completed", "failed", timeout=60)
        assert job["status"] == "completed", job
        record = system.scheduler.jobs.get(job_id)
        assert record is not None and record.output is not None
        assert record.output.mode == "transcode"
    finally:
        await stop_system(system)


async def test_a_source_that_is_briefly_unavailable_is_retried_until_it_answers(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    import time

    # The source answers 503 for the next two seconds; attempts back off 1 s, then 2 s.
    url = jellyfin.stream_url("fits", ALICE, fail_until=f"{time.time() + 2.0:.3f}")
    job_id = await alice.submit(url)
    job = await alice.wait_status(job_id, "completed", "failed", timeout=60)
    assert job["status"] == "completed", job
    record = system.scheduler.jobs.get(job_id)
    assert record is not None and record.attempts >= 2


async def test_an_oversized_request_body_is_a_413(system: System, alice: Client) -> None:
    item = {"Id": "x", "Overview": "a" * 600_000}
    payload = {"url": "http://example.com/a.mp4", "item": item}
    status, body, _ = await alice.request("POST", "/optimize-version", json=payload)
    assert status == 413 and body["error"]["code"] == "payload_too_large"


async def test_a_shared_output_is_not_given_to_a_token_that_may_not_read_the_source(
    system: System, alice: Client, bob: Client, jellyfin: JellyfinStandIn
) -> None:
    first = await alice.submit(jellyfin.stream_url("fits", ALICE), device="alice-phone")
    await alice.wait_status(first, "completed")
    # Bob's app sends the same media with a token the media server refuses
    refused = await bob.submit(jellyfin.stream_url("fits", "revoked-token"), device="bob-phone")
    job = await bob.wait_status(refused, "failed", "completed")
    assert job["status"] == "failed" and "refused" in job["error"]


async def test_only_jellyfin_media_routes_are_pointed_at_jellyfin(
    env: dict[str, str], jellyfin: JellyfinStandIn, clips: dict[str, Path], http: Any
) -> None:
    from aiohttp import web

    # Given a CDN (not Jellyfin) whose paths happen to have a `videos` segment
    async def clip(request: web.Request) -> web.FileResponse:
        return web.FileResponse(clips["fits"])

    app = web.Application()
    app.router.add_get("/static/videos/fits/clip.mp4", clip)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    cdn = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    # (the operator lets sources reach loopback, where both stand-ins listen)
    system = await start_system({**env, "VIDMESH_OUTBOUND_ALLOW": "127.0.0.0/8"})
    try:
        alice = Client(http, system.url, ALICE)
        # When the app sends a CDN URL, it is read from the CDN as sent
        from_cdn = await alice.submit(f"{cdn}/static/videos/fits/clip.mp4")
        job = await alice.wait_status(from_cdn, "completed", "failed", timeout=60)
        assert job["inputUrl"] == f"{cdn}/static/videos/fits/clip.mp4"
        assert job["status"] == "completed", job
        # And a Jellyfin media URL with a public address and base path is read from JELLYFIN_URL
        public = jellyfin.stream_url("fits", ALICE).replace(jellyfin.url, "http://tv.example/jf")
        rebased = await alice.submit(public, device="dev-2")
        job = await alice.job(rebased)
        assert job["inputUrl"] == jellyfin.stream_url("fits", ALICE)
    finally:
        await stop_system(system)
        await runner.cleanup()
