"""Limits and retention with the original's environment names: MAX_CONCURRENT_JOBS,
MAX_CACHED_PER_USER, TIME_TO_KEEP_FILES, REMOVE_FILE_AFTER_RIGHT_DOWNLOAD; manual starts; and a
cache clear that leaves no job pointing at a missing file."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio

from tests.harness import ALICE, Client, System, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn

# The 20 s clip served at this rate takes several seconds: long enough to look at a running job.
SLOW = "100000"


def slow_url(jellyfin: JellyfinStandIn, variant: str) -> str:
    # A distinct query parameter makes a distinct source (no sharing between these jobs).
    return jellyfin.stream_url("long_ts", ALICE, kind="live", rate=SLOW, variant=variant)


@pytest_asyncio.fixture
async def tuned(env: dict[str, str], request: object) -> AsyncIterator[System]:
    overrides: dict[str, str] = getattr(request, "param", {})
    running = await start_system({**env, **overrides})
    yield running
    await stop_system(running)


async def open_client(http: aiohttp.ClientSession, system: System) -> Client:
    return Client(http, system.url, ALICE)


async def test_max_concurrent_jobs_queues_the_rest_and_start_job_starts_one_now(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    system = await start_system({**env, "MAX_CONCURRENT_JOBS": "1", "VIDMESH_SLOTS": "2"})
    try:
        alice = await open_client(http, system)
        first = await alice.submit(slow_url(jellyfin, "a"))
        second = await alice.submit(slow_url(jellyfin, "b"))
        await alice.wait_status(first, "optimizing")
        # Then the second waits while the first runs
        assert (await alice.job(second))["status"] == "queued"

        # When the user starts it by hand, it runs beside the first at once
        status, body, _ = await alice.request("POST", f"/start-job/{second}")
        assert status == 200 and body["message"]
        await alice.wait_status(second, "optimizing", timeout=10)
        assert (await alice.job(first))["status"] == "optimizing"
        for job_id in (first, second):
            await alice.request("DELETE", f"/cancel-job/{job_id}")
    finally:
        await stop_system(system)


async def device_list(client: Client, device: str) -> set[str]:
    """The ids `GET /all-jobs?deviceId=` lists, as the device polls it."""
    status, jobs, _ = await client.request("GET", f"/all-jobs?deviceId={device}")
    assert status == 200, jobs
    return {job["id"] for job in jobs}


async def test_jobs_over_the_device_limit_wait_and_continue_by_themselves(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    system = await start_system({**env, "MAX_CACHED_PER_USER": "1"})
    try:
        alice = await open_client(http, system)
        first = await alice.submit(jellyfin.stream_url("fits", ALICE), device="phone")
        second = await alice.submit(jellyfin.stream_url("hevc", ALICE), device="phone")
        other_device = await alice.submit(jellyfin.stream_url("hevc", ALICE), device="tablet")

        await alice.wait_status(first, "completed")
        # The first is downloaded by nobody yet, so the second waits for the device...
        await alice.wait_status(second, "pending downloads limit")
        # ...while another device is not held back
        await alice.wait_status(other_device, "completed", timeout=60)
        assert (await alice.job(second))["status"] == "pending downloads limit"

        # Each device's list is exactly its own jobs, whatever their status
        assert await device_list(alice, "phone") == {first, second}
        assert await device_list(alice, "tablet") == {other_device}

        # When the device confirms its download, the waiting job continues on its own
        await alice.request("DELETE", f"/cancel-job/{first}")
        await alice.wait_status(second, "completed", timeout=60)
        # and the downloaded job leaves the device's list
        assert await device_list(alice, "phone") == {second}
    finally:
        await stop_system(system)


async def test_unlimited_device_cache_when_max_cached_per_user_is_zero(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    system = await start_system({**env, "MAX_CACHED_PER_USER": "0"})
    try:
        alice = await open_client(http, system)
        ids = [
            await alice.submit(jellyfin.stream_url("fits", ALICE, variant=str(n)), device="phone")
            for n in range(4)
        ]
        for job_id in ids:
            await alice.wait_status(job_id, "completed", timeout=60)
    finally:
        await stop_system(system)


async def test_delete_cache_removes_outputs_and_leaves_no_job_pointing_at_a_missing_file(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    done = [await alice.submit(jellyfin.stream_url(item, ALICE)) for item in ("fits", "hevc")]
    for job_id in done:
        await alice.wait_status(job_id, "completed", timeout=60)
    assert len(system.output_files()) == 2

    status, body, _ = await alice.request("DELETE", "/delete-cache")
    assert status == 200, body
    assert body["deletedFiles"] == 2 and body["freedBytes"] > 0
    assert system.output_files() == []

    status, jobs, _ = await alice.request("GET", "/all-jobs")
    for job in jobs:
        assert job["status"] != "completed"  # nothing claims a file that is gone
        status, _, _ = await alice.request("GET", f"/download/{job['id']}")
        assert status == 404

    async def cache_empty() -> bool:
        _, stats, _ = await alice.request("GET", "/statistics")
        return bool(stats["cacheBytes"] == 0 and stats["cacheSize"] == "0.00 B")

    await eventually(cache_empty, what="statistics to show an empty cache")

    # And the same source can be optimized again afterwards
    again = await alice.submit(jellyfin.stream_url("fits", ALICE))
    await alice.wait_status(again, "completed")


async def test_outputs_expire_after_time_to_keep_files(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    system = await start_system({**env, "TIME_TO_KEEP_FILES": "0.0005"})  # 1.8 s
    try:
        alice = await open_client(http, system)
        job_id = await alice.submit(jellyfin.stream_url("fits", ALICE))
        await alice.wait_status(job_id, "completed")
        await alice.wait_status(job_id, "ready-for-removal", timeout=15)
        await eventually(lambda: not system.output_files(), timeout=10, what="expired file removal")
    finally:
        await stop_system(system)


async def test_files_are_kept_after_download_when_immediate_removal_is_off(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    system = await start_system({**env, "REMOVE_FILE_AFTER_RIGHT_DOWNLOAD": "false"})
    try:
        alice = await open_client(http, system)
        job_id = await alice.submit(jellyfin.stream_url("fits", ALICE))
        await alice.wait_status(job_id, "completed")
        status, _, _ = await alice.request("DELETE", f"/cancel-job/{job_id}")
        assert status == 200
        assert (await alice.job(job_id))["status"] == "ready-for-removal"
        # The file stays for TIME_TO_KEEP_FILES, so an interrupted download can still finish
        status, body, resp = await alice.request("GET", f"/download/{job_id}")
        assert status == 200 and len(body) == int(resp.headers["X-File-Size"])
        assert len(system.output_files()) == 1
    finally:
        await stop_system(system)
