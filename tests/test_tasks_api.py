"""Odeion-style tasks (`/api/admin/tasks`): an administrator follows vidmesh's background work
(transcodes, probes, webhook deliveries, cleanups) and acts on it, walking every Tasks route of the
media server's document against one running system."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from tests.harness import (
    ADMIN_PASSWORD,
    ALICE,
    Api,
    eventually,
    ffmpeg_pids,
    free_port,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn

SETTINGS = {
    "MAX_CONCURRENT_JOBS": "1",  # one transcode at a time: the next one waits, pending
    "VIDMESH_MAX_ATTEMPTS": "1",  # a source that fails fails its job at once
    "VIDMESH_OUTBOUND_ALLOW": "127.0.0.0/8",  # a webhook receiver on this machine
    "VIDMESH_WEBHOOK_TIMEOUT": "2",
}
TASKS = "/api/admin/tasks"


async def tasks_by_id(admin: Api, query: str = "") -> dict[str, dict[str, Any]]:
    page = await admin.ok("GET", f"{TASKS}?limit=200{query}")
    return {task["id"]: task for task in page["items"]}


async def task_is(admin: Api, task_id: str, *statuses: str, **fields: Any) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, task, _ = await admin.call("GET", f"{TASKS}/{task_id}")
        if status != 200 or task["status"] not in statuses:
            return None
        return task if all(task[k] == v for k, v in fields.items()) else None

    return await eventually(check, timeout=30, what=f"task {task_id} to be {statuses} {fields}")


async def test_an_administrator_follows_and_steers_background_work_as_tasks(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    system = await start_system({**env, **SETTINGS})
    try:
        admin = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        ann = await Api(http, system.url).as_user("ann")
        await walk(admin, ann, http, jellyfin, marker=str(system.data_dir))
    finally:
        await stop_system(system)


async def walk(
    admin: Api, ann: Api, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn, *, marker: str
) -> None:
    """The walk; `marker` names this system's ffmpeg processes (its data folder)."""
    # Tasks are for administrators only
    assert (await ann.call("GET", TASKS))[0] == 403
    assert (await ann.call("POST", f"{TASKS}/cancel-pending"))[0] == 403

    # Given a cleanup, two probes, a failed webhook delivery and three transcodes: one failed,
    # one running and one waiting behind it
    cleanup = await admin.ok("POST", "/api/admin/jobs/cleanup", 202, json={"older_than_hours": 0})
    assert cleanup["matched"] == 0
    await ann.ok("POST", "/api/metadata", json={"source": jellyfin.stream_url("hevc", ALICE)})
    bad_probe = jellyfin.stream_url("not_video", ALICE)
    assert (await ann.call("POST", "/api/metadata", json={"source": bad_probe}))[0] == 422
    hook = {"url": f"http://127.0.0.1:{free_port()}/hook", "event_types": ["pool.deleted"]}
    sub = await admin.ok("POST", "/api/admin/webhooks", 201, json=hook)
    ping = await admin.ok("POST", f"/api/admin/webhooks/{sub['id']}/test")
    assert ping["succeeded"] is False
    flaky = jellyfin.stream_url("fits", ALICE, fail_until=f"{time.time() + 1.5:.3f}")
    failing = await ann.ok("POST", "/api/jobs", 201, json={"source": flaky})
    await ann.wait_job(failing["id"], "failed")
    slow = jellyfin.stream_url("long_ts", ALICE, rate="100000").replace("/stream?", "/live?")
    running = await ann.ok("POST", "/api/jobs", 201, json={"source": slow})
    await ann.wait_job(running["id"], "running")
    queued = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("hevc", ALICE)}
    )
    # A job's task is there as soon as the job is: read at once, not only once the history
    # has folded the job's events in
    first_look = await admin.ok("GET", f"{TASKS}/transcode.{queued['id']}")
    assert first_look["status"] == "pending" and first_look["subject"] == queued["id"]

    # Then each shows up as a task, with its status in the media server's words
    transcode = {job["id"]: f"transcode.{job['id']}" for job in (failing, running, queued)}
    delivery = f"webhook_delivery.{ping['delivery_id']}"
    failed_job = await task_is(admin, transcode[failing["id"]], "failed")
    assert failed_job["error"] and failed_job["attempts"] == 1 and failed_job["owner"]
    assert failed_job["started_at"] and failed_job["finished_at"]
    assert failed_job["duration_seconds"] is not None
    running_task = await task_is(admin, transcode[running["id"]], "running")
    assert running_task["finished_at"] is None
    await task_is(admin, transcode[queued["id"]], "pending")
    await task_is(admin, delivery, "failed", attempts=1)

    async def probes_and_cleanup() -> dict[str, dict[str, Any]] | None:
        found = await tasks_by_id(admin, "&type=probe")
        found |= await tasks_by_id(admin, "&type=cleanup")
        return found if len(found) == 3 else None

    others = await eventually(probes_and_cleanup, what="two probes and a cleanup")
    by_type = sorted((task["type"], task["status"]) for task in others.values())
    assert by_type == [("cleanup", "completed"), ("probe", "completed"), ("probe", "failed")]
    probe_ok, probe_failed = (
        next(t for t in others.values() if t["type"] == "probe" and t["status"] == s)
        for s in ("completed", "failed")
    )
    assert "not_video" in probe_failed["title"] and probe_failed["error"]
    assert ALICE not in probe_ok["title"]  # the source's credentials are masked
    cleaned = next(t for t in others.values() if t["type"] == "cleanup")
    assert cleaned["result"] == 0 and cleaned["status"] == "completed"

    # The list filters by status and type, and pages
    every = await tasks_by_id(admin)
    assert len(every) == 7
    failed = await tasks_by_id(admin, "&status=failed")
    assert set(failed) == {transcode[failing["id"]], delivery, probe_failed["id"]}
    seen: list[str] = []
    for number in (1, 2, 3, 4):
        page = await admin.ok("GET", f"{TASKS}?limit=2&page={number}")
        assert page["total"] == 7 and page["pages"] == 4 and page["page"] == number
        seen += [task["id"] for task in page["items"]]
    assert sorted(seen) == sorted(every)  # each once
    created = [every[task_id]["created_at"] for task_id in seen]
    assert created == sorted(created, reverse=True)  # newest first
    assert (await admin.call("GET", f"{TASKS}?status=stuck"))[0] == 400
    assert (await admin.call("GET", f"{TASKS}?page=0"))[0] == 400
    # A filter vidmesh does not have (Odeion's related media) is ignored, not refused
    assert set(await tasks_by_id(admin, "&status=failed&media_type=movie&media_id=7")) == set(
        failed
    )

    # The summary counts what the list shows
    summary = await admin.ok("GET", f"{TASKS}/summary")
    assert summary["total"] == 7
    assert summary["by_status"] == {
        "pending": 1,
        "running": 1,
        "completed": 2,
        "failed": 3,
        "cancelled": 0,
    }
    assert summary["by_type"] == {"transcode": 3, "probe": 2, "webhook_delivery": 1, "cleanup": 1}

    # When the administrator cancels every pending task, the waiting job ends cancelled and the
    # running one runs on
    cancelled = await admin.ok("POST", f"{TASKS}/cancel-pending", 202)
    assert cancelled["tasks"] == 1 and cancelled["by_type"]["transcode"] == 1
    assert (await ann.ok("GET", f"/api/jobs/{queued['id']}"))["status"] == "cancelled"
    assert (await ann.ok("GET", f"/api/jobs/{running['id']}"))["status"] == "running"
    await task_is(admin, transcode[queued["id"]], "cancelled")

    # Cancelling the running task stops its ffmpeg; a finished task is not cancelled again
    await eventually(lambda: ffmpeg_pids(marker), what="the running task's ffmpeg")
    await admin.ok("DELETE", f"{TASKS}/{transcode[running['id']]}", 204)
    assert (await ann.ok("GET", f"/api/jobs/{running['id']}"))["status"] == "cancelled"
    await eventually(lambda: not ffmpeg_pids(marker), timeout=5, what="its ffmpeg to stop")
    assert (await admin.call("DELETE", f"{TASKS}/{transcode[running['id']]}"))[0] == 409
    assert (await admin.call("DELETE", f"{TASKS}/{probe_ok['id']}"))[0] == 409

    # Retrying: only a failed or cancelled task, and only work that can run again
    assert (await admin.call("POST", f"{TASKS}/{probe_ok['id']}/retry"))[0] == 409
    assert (await admin.call("POST", f"{TASKS}/{probe_failed['id']}/retry"))[0] == 409

    async def source_back() -> bool:
        async with http.get(flaky) as resp:
            return resp.status == 200

    await eventually(source_back, what="the flaky source to answer again")
    retried = await admin.ok("POST", f"{TASKS}/{transcode[failing['id']]}/retry", 202)
    assert retried["status"] in ("pending", "running", "completed")
    done = await ann.wait_job(failing["id"], "completed", "failed")
    assert done["status"] == "completed"  # the source answers again: the failed job ran again
    await task_is(admin, transcode[failing["id"]], "completed", attempts=2)

    # Retrying every failed task delivers the failed delivery again
    again = await admin.ok("POST", f"{TASKS}/retry-failed", 202)
    assert again["by_type"]["webhook_delivery"] == 1 and again["by_type"]["probe"] == 0
    await task_is(admin, delivery, "failed", attempts=2)

    # Reprocess runs failed work of one type again; other types are refused
    reprocessed = await admin.ok(
        "POST", f"{TASKS}/reprocess", 202, json={"type": "webhook_delivery"}
    )
    assert reprocessed["tasks"] == 1
    await task_is(admin, delivery, "failed", attempts=3)
    for body in ({"type": "probe"}, {"type": "refresh_metadata"}, {}):
        status, error, _ = await admin.call("POST", f"{TASKS}/reprocess", json=body)
        assert status == 400 and error["error"]["message"], (body, error)

    # There is no media library: a media item has no tasks; an unknown task is not found
    assert (await admin.call("GET", f"{TASKS}/movie/42"))[0] == 404
    assert (await admin.call("GET", f"{TASKS}/transcode.nope"))[0] == 404
    assert (await admin.call("GET", f"{TASKS}/nothing"))[0] == 404
    # ids no task could have (NATS refuses such keys) are unknown tasks too, not errors
    for odd in ("transcode.%2e%2e", "transcode.a%20b", "transcode.a*", "webhook_delivery.a>"):
        assert (await admin.call("GET", f"{TASKS}/{odd}"))[0] == 404, odd
        assert (await admin.call("DELETE", f"{TASKS}/{odd}"))[0] == 404, odd

    # Clearing old tasks empties the history of finished work; the user's jobs stay
    await admin.ok("DELETE", f"{TASKS}/clear-old", 204)
    assert await tasks_by_id(admin) == {}
    assert (await admin.ok("GET", f"{TASKS}/summary"))["total"] == 0
    jobs = await ann.ok("GET", "/api/jobs")
    assert {job["id"] for job in jobs["items"]} == set(transcode)
