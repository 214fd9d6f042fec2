"""Bulk jobs with per-item results, paused batches that are renamed and started, user presets that
are structured and validated, and the operators' views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av

from services.gateway.state import GATEWAY
from tests.harness import ALICE, Api, System, eventually
from tests.jellyfin_standin import JellyfinStandIn


def url_of(jellyfin: JellyfinStandIn, item: str, **params: str) -> str:
    return jellyfin.stream_url(item, ALICE, **params)


async def test_bulk_reports_each_item_and_creates_the_valid_ones(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    jobs: list[Any] = [
        {"source": url_of(jellyfin, "fits")},
        {"source": "ftp://nowhere/x.mp4"},
        {"source": url_of(jellyfin, "fits", n="2"), "preset": "no-such-preset"},
        {"source": url_of(jellyfin, "fits", n="3"), "unknown_field": 1},
        "not an object",
    ]
    result = await ann.ok("POST", "/api/jobs/bulk", 201, json={"jobs": jobs})
    assert (result["created"], result["failed"], result["batch_id"]) == (1, 4, None)
    oks = [item["ok"] for item in result["results"]]
    assert oks == [True, False, False, False, False]
    codes = [item["error"]["code"] for item in result["results"] if item["error"]]
    assert codes == ["bad_request", "not_found", "bad_request", "bad_request"]
    await ann.wait_job(result["results"][0]["job"]["id"], "completed")


async def test_a_paused_batch_waits_is_renamed_then_started(
    system: System, ann: Api, ben: Api, jellyfin: JellyfinStandIn
) -> None:
    jobs = [{"source": url_of(jellyfin, "fits", n=str(n))} for n in range(2)]
    result = await ann.ok("POST", "/api/jobs/bulk", 201, json={"jobs": jobs, "paused": True})
    batch_id = result["batch_id"]
    ids = [item["job"]["id"] for item in result["results"]]
    batch = await ann.ok("GET", f"/api/batch/{batch_id}")
    assert batch["started"] is False and batch["counts"] == {"paused": 2}
    assert (await ben.call("GET", f"/api/batch/{batch_id}"))[0] == 404

    renamed = [{"id": ids[0], "filename": "Episode 1.mp4"}]
    await ann.ok("PATCH", f"/api/batch/{batch_id}/jobs", json={"jobs": renamed})
    status, body, _ = await ann.call(
        "PATCH", f"/api/batch/{batch_id}/jobs", json={"jobs": [{"id": ids[0], "filename": "../x"}]}
    )
    assert status == 400
    started = await ann.ok("POST", f"/api/batch/{batch_id}/start")
    assert started["started"] is True
    for job_id in ids:
        await ann.wait_job(job_id, "completed")
    status, _, resp = await ann.call("GET", f"/api/jobs/{ids[0]}/file")
    assert status == 200 and 'filename="Episode 1.mp4"' in resp.headers["Content-Disposition"]
    status, body, _ = await ann.call("PATCH", f"/api/batch/{batch_id}/jobs", json={"jobs": renamed})
    assert status == 409
    assert (await ann.call("POST", f"/api/batch/{batch_id}/start"))[0] == 409


async def test_built_in_presets_are_listed_and_cannot_be_changed(
    system: System, ann: Api, admin_api: Api
) -> None:
    listed = await ann.ok("GET", "/api/presets")
    names = {preset["name"] for preset in listed if preset["builtin"]}
    assert {"h264-1080p", "h264-720p", "h264-480p", "hevc-1080p", "av1-1080p", "audio-aac"} <= names
    profiles = await admin_api.ok("GET", "/api/admin/transcoding/profiles")
    assert {p["name"] for p in profiles} == names
    assert (await ann.call("GET", "/api/admin/transcoding/profiles"))[0] == 403
    spec = (await ann.ok("GET", "/api/presets/h264-720p"))["spec"]
    status, _, _ = await ann.call(
        "PUT", "/api/presets/h264-720p", json={"name": "mine", "spec": spec}
    )
    assert status == 403


async def test_a_user_preset_shapes_the_output(
    system: System, ann: Api, ben: Api, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    spec = {
        "container": "mkv",
        "video": {"codec": "h264", "quality": 30, "max_height": 144, "speed": "ultrafast"},
        "audio": {"codec": "aac", "channels": 1, "bitrate_kbps": 64},
    }
    preset = await ann.ok("POST", "/api/presets", 201, json={"name": "tiny", "spec": spec})
    assert (await ann.call("POST", "/api/presets", json={"name": "tiny", "spec": spec}))[0] == 409
    assert (await ben.call("GET", f"/api/presets/{preset['id']}"))[0] == 404
    assert (
        await ben.call(
            "POST", "/api/jobs", json={"source": url_of(jellyfin, "fits"), "preset": "tiny"}
        )
    )[0] == 404

    job = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "hevc"), "preset": "tiny"}
    )
    done = await ann.wait_job(job["id"], "completed", timeout=60)
    assert done["spec"]["container"] == "mkv" and done["output"]["container"] == "mkv"
    path = tmp_path / "out.mkv"
    path.write_bytes(await ann.ok("GET", f"/api/jobs/{job['id']}/file"))
    with av.open(str(path)) as container:
        assert container.streams.video[0].height <= 144
        assert container.streams.audio[0].codec_context.channels == 1

    # Changing the preset later does not change the job, which keeps the spec it started with
    wider = {**spec, "video": {**spec["video"], "max_height": 480}}
    updated = await ann.ok(
        "PUT", f"/api/presets/{preset['id']}", json={"name": "tiny", "spec": wider}
    )
    assert updated["spec"]["video"]["max_height"] == 480
    assert (await ann.ok("GET", f"/api/jobs/{job['id']}"))["spec"]["video"]["max_height"] == 144
    await ann.ok("DELETE", f"/api/presets/{preset['id']}")


async def test_preset_fields_cannot_smuggle_ffmpeg_arguments(system: System, ann: Api) -> None:
    base = {"container": "mp4", "video": {"codec": "h264"}, "audio": {"codec": "aac"}}
    attempts: list[dict[str, Any]] = [
        {**base, "container": "mp4 -f null"},
        {**base, "video": {"codec": "h264 -i /etc/passwd"}},
        {**base, "video": {"codec": "h264", "speed": "veryfast;rm -rf /"}},
        {**base, "video": {"codec": "h264", "quality": "23 -y"}},
        {**base, "video": {"codec": "h264", "max_height": 100_000}},
        {**base, "args": ["-i", "/etc/passwd"]},
        {**base, "video": {"codec": "h264", "filters": "movie=/etc/passwd"}},
        {**base, "audio": {"codec": "aac", "bitrate_kbps": "128k -map 0"}},
    ]
    for spec in attempts:
        status, body, _ = await ann.call("POST", "/api/presets", json={"name": "x", "spec": spec})
        assert status == 400, (spec, body)
    status, body, _ = await ann.call("POST", "/api/presets", json={"name": "../x", "spec": base})
    assert status == 400


async def test_operators_see_everyone_summarise_and_clean_up(
    system: System, ann: Api, ben: Api, admin_api: Api, jellyfin: JellyfinStandIn
) -> None:
    a = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "fits")})
    b = await ben.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "hevc")})
    await ann.wait_job(a["id"], "completed")
    await ben.wait_job(b["id"], "completed", timeout=60)
    assert (await ann.call("GET", "/api/admin/jobs"))[0] == 403
    everyone = await admin_api.ok("GET", "/api/admin/jobs")
    assert {job["id"] for job in everyone["items"]} == {a["id"], b["id"]}
    ben_id = (await ben.ok("GET", "/api/users/me"))["id"]
    only_ben = await admin_api.ok("GET", f"/api/admin/jobs?owner={ben_id}")
    assert [job["id"] for job in only_ben["items"]] == [b["id"]]

    async def measured() -> dict[str, Any] | None:
        summary = await admin_api.ok("GET", "/api/admin/jobs/summary")
        return summary if summary["files_on_disk"] == 2 else None

    summary = await eventually(measured, what="the store to be measured")
    assert summary["by_status"] == {"completed": 2} and summary["outputs_held"] == 2
    assert summary["bytes_held"] > 0

    # (a cleanup with no body takes jobs that ended over 24 hours ago: these ended just now)
    cleaned = await admin_api.ok(
        "POST", "/api/admin/jobs/cleanup", 202, json={"older_than_hours": 0}
    )
    assert cleaned["matched"] == 2

    async def cleared() -> bool:
        page = await admin_api.ok("GET", "/api/admin/jobs")
        return page["count"] == 0 and not system.output_files()

    await eventually(cleared, what="finished jobs and their files to be cleaned up")


async def test_moderators_read_everyones_jobs_but_change_only_their_own(
    system: System, ann: Api, admin_api: Api, http: Any, jellyfin: JellyfinStandIn
) -> None:
    await admin_api.ok(
        "POST",
        "/api/admin/users",
        201,
        json={"username": "mod", "password": "password-123", "role": "moderator"},
    )
    mo = await Api(http, system.url).as_user("mod", register=False)
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": url_of(jellyfin, "fits")})
    await ann.wait_job(job["id"], "completed")
    assert (await mo.ok("GET", f"/api/jobs/{job['id']}"))["id"] == job["id"]
    assert (await mo.call("DELETE", f"/api/jobs/{job['id']}"))[0] == 404
    assert (await mo.call("POST", "/api/admin/jobs/cleanup", json={}))[0] == 403
    await admin_api.ok("DELETE", f"/api/jobs/{job['id']}", 204)
    assert (await admin_api.ok("GET", f"/api/jobs/{job['id']}"))["status"] == "removed"


async def test_moderators_read_other_users_batches_but_cannot_rename_or_start_them(
    system: System, ann: Api, admin_api: Api, http: Any, jellyfin: JellyfinStandIn
) -> None:
    # Given Ann's paused batch and a moderator
    await admin_api.ok(
        "POST",
        "/api/admin/users",
        201,
        json={"username": "mod", "password": "password-123", "role": "moderator"},
    )
    mo = await Api(http, system.url).as_user("mod", register=False)
    jobs = [{"source": url_of(jellyfin, "fits", n="modb")}]
    result = await ann.ok("POST", "/api/jobs/bulk", 201, json={"jobs": jobs, "paused": True})
    batch_id, job_id = result["batch_id"], result["results"][0]["job"]["id"]
    # The moderator may read it
    assert (await mo.ok("GET", f"/api/batch/{batch_id}"))["id"] == batch_id
    # When the moderator tries to rename its outputs and to start it
    renamed = {"jobs": [{"id": job_id, "filename": "taken.mp4"}]}
    status, body, _ = await mo.call("PATCH", f"/api/batch/{batch_id}/jobs", json=renamed)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = await mo.call("POST", f"/api/batch/{batch_id}/start")
    assert status == 404 and body["error"]["code"] == "not_found"
    # Then nothing changed: the batch still waits and the job keeps its name
    batch = await ann.ok("GET", f"/api/batch/{batch_id}")
    assert batch["started"] is False and batch["counts"] == {"paused": 1}
    assert (await ann.ok("GET", f"/api/jobs/{job_id}"))["status"] == "paused"
    record = system.gateway.app[GATEWAY].jobs.get(job_id)
    assert record is not None and record.output_name != "taken.mp4"
    # An administrator may act on it
    await admin_api.ok("PATCH", f"/api/batch/{batch_id}/jobs", json=renamed)
    assert (await admin_api.ok("POST", f"/api/batch/{batch_id}/start"))["started"] is True
