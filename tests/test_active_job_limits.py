"""Native API users are bounded per user (VIDMESH_MAX_ACTIVE_JOBS_PER_USER), never by the
Streamyfin face's per-device MAX_CACHED_PER_USER: their extra jobs wait visibly as `queued` and
start by themselves as the user's others finish, and one user's queue never holds another's."""

from __future__ import annotations

import aiohttp

from tests.harness import ALICE, Api, System, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn

# The 20 s clip served at this rate takes several seconds: long enough to look at running jobs.
SLOW = "100000"


def fast_source(jellyfin: JellyfinStandIn, n: int) -> str:
    # A distinct query parameter makes a distinct source (no sharing between these jobs).
    return jellyfin.stream_url("fits", ALICE, variant=str(n))


def slow_source(jellyfin: JellyfinStandIn, n: int) -> str:
    return jellyfin.stream_url("long_ts", ALICE, kind="live", rate=SLOW, variant=str(n))


async def users(http: aiohttp.ClientSession, system: System) -> tuple[Api, Api]:
    anonymous = Api(http, system.url)
    return await anonymous.as_user("ann"), await anonymous.as_user("ben")


async def test_a_native_user_past_the_device_cache_limit_gets_every_job_done(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # Given the Streamyfin face's per-device limit of 10 finished-but-not-downloaded jobs
    system = await start_system({**env, "MAX_CACHED_PER_USER": "10"})
    try:
        ann, ben = await users(http, system)
        # When a native user submits 14 jobs and downloads none of them
        ids = [
            (await ann.ok("POST", "/api/jobs", 201, json={"source": fast_source(jellyfin, n)}))[
                "id"
            ]
            for n in range(14)
        ]
        # Then all 14 complete (native jobs have no device: the limit is not theirs)
        for job_id in ids:
            await ann.wait_job(job_id, "completed", timeout=90)
        # And another native user's job is not held either
        other = await ben.ok("POST", "/api/jobs", 201, json={"source": fast_source(jellyfin, 99)})
        await ben.wait_job(other["id"], "completed")
    finally:
        await stop_system(system)


async def test_jobs_past_the_per_user_active_limit_wait_queued_and_start_by_themselves(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # Given room for three transcodes at once but two active jobs per user
    system = await start_system(
        {
            **env,
            "VIDMESH_MAX_ACTIVE_JOBS_PER_USER": "2",
            "MAX_CONCURRENT_JOBS": "3",
            "VIDMESH_SLOTS": "3",
        }
    )
    try:
        ann, ben = await users(http, system)
        first, second = [
            (await ann.ok("POST", "/api/jobs", 201, json={"source": slow_source(jellyfin, n)}))[
                "id"
            ]
            for n in range(2)
        ]
        await ann.wait_job(first, "running")
        await ann.wait_job(second, "running")
        # When the user submits a third job while two run
        third = (await ann.ok("POST", "/api/jobs", 201, json={"source": fast_source(jellyfin, 3)}))[
            "id"
        ]
        # Then another user's job is not held by ann's limit: it runs and completes...
        other = await ben.ok("POST", "/api/jobs", 201, json={"source": fast_source(jellyfin, 4)})
        await ben.wait_job(other["id"], "completed", timeout=60)
        # ...while ann's third waits visibly as queued, although a slot is free
        waiting = await ann.ok("GET", f"/api/jobs/{third}")
        assert (waiting["status"], waiting["stage"]) == ("queued", "queued"), waiting
        assert {
            (await ann.ok("GET", f"/api/jobs/{job_id}"))["status"] for job_id in (first, second)
        } == {"running"}

        # When one of the two ends, the third starts by itself and completes
        await ann.ok("POST", f"/api/jobs/{first}/cancel")
        await ann.wait_job(third, "completed", timeout=60)
        await ann.ok("POST", f"/api/jobs/{second}/cancel")

        async def second_ended() -> bool:
            job = await ann.ok("GET", f"/api/jobs/{second}")
            return bool(job["status"] == "cancelled")

        await eventually(second_ended, what="the second job to be cancelled")
    finally:
        await stop_system(system)


async def test_a_native_users_queue_does_not_go_ahead_of_another_users_job(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # Given two transcodes at once, both taken by one native user who has more waiting
    system = await start_system({**env, "MAX_CONCURRENT_JOBS": "2", "VIDMESH_SLOTS": "2"})
    try:
        ann, ben = await users(http, system)
        ids = [
            (await ann.ok("POST", "/api/jobs", 201, json={"source": slow_source(jellyfin, n)}))[
                "id"
            ]
            for n in range(4)
        ]
        statuses: dict[str, str] = {}

        async def two_running() -> list[str] | None:
            for job_id in ids:
                statuses[job_id] = (await ann.ok("GET", f"/api/jobs/{job_id}"))["status"]
            running = [job_id for job_id in ids if statuses[job_id] == "running"]
            return running if len(running) == 2 else None

        running = await eventually(two_running, what="two of ann's jobs to run")
        # When another native user submits a job, and then a slot frees
        other = await ben.ok("POST", "/api/jobs", 201, json={"source": slow_source(jellyfin, 9)})
        await ann.ok("POST", f"/api/jobs/{running[0]}/cancel")

        # Then the freed slot goes to the user who has none running (like two devices), not to
        # the next of ann's jobs
        bens = await ben.wait_job(other["id"], "running")
        for job_id in ids:
            if job_id not in running:
                anns = await ann.ok("GET", f"/api/jobs/{job_id}")
                assert anns["started_at"] is None or anns["started_at"] > bens["started_at"], anns
    finally:
        await stop_system(system)
