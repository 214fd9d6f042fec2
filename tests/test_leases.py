"""Leases are a KV key each: scheduler replicas racing for a pool's slots never run more than its
limit, and a deployment upgraded from the one-record layout loses no lease."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
from structlog.testing import capture_logs

from services.scheduler.config import SchedulerSettings
from services.scheduler.service import Scheduler
from shared import config
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.media import builtin
from shared.messages.records import Lease, LeaseSet
from shared.nats.kv import TypedKV
from shared.nats.leases import slot_key
from shared.nats.topology import ensure_topology
from tests.harness import ALICE, Client, System, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn

# The 20 s clip served at this rate takes several seconds: long enough to look at running jobs.
SLOW = "100000"


async def test_two_schedulers_never_run_more_than_the_pools_limit(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # Given two scheduler replicas, one slot per pool, and a transcoder that could run three
    settings = {**env, "MAX_CONCURRENT_JOBS": "1", "VIDMESH_SLOTS": "3"}
    system = await start_system(settings)
    second = Scheduler(system.nc, config.load(SchedulerSettings, settings))
    await second.start()
    try:
        alice = Client(http, system.url, ALICE)
        ids = [
            await alice.submit(
                jellyfin.stream_url("long_ts", ALICE, kind="live", rate=SLOW, variant=str(n)),
                device=f"device-{n}",
            )
            for n in range(3)
        ]

        async def running() -> list[str]:
            _, jobs, _ = await alice.request("GET", "/all-jobs")
            return [job["id"] for job in jobs if job["status"] == "optimizing"]

        # When each running job is let go in turn, both replicas race to give out the slot
        for _ in ids:
            await eventually(running, what="a job to run")
            await asyncio.sleep(1.0)  # part of the scenario: time for a second one to start
            # Then only one runs at a time
            now_running = await running()
            assert len(now_running) == 1, now_running
            status, body, _ = await alice.request("DELETE", f"/cancel-job/{now_running[0]}")
            assert status == 200, body
        for job_id in ids:
            await alice.wait_status(job_id, "cancelled")
    finally:
        await second.shutdown()
        await stop_system(system)


async def test_an_old_one_record_lease_set_is_migrated_into_lease_keys(
    env: dict[str, str],
) -> None:
    # Given a leases bucket as an older version left it: one record per pool, every holder in it
    system = await start_system(env, "storage")
    try:
        js = system.nc.jetstream()
        buckets = await ensure_topology(js, system.names)
        old = TypedKV(buckets.leases, LeaseSet)
        holders = {
            "a" * 40: Lease(generation=1, since=time.time()),
            "b" * 40: Lease(generation=1, since=time.time(), manual=True),
        }
        await old.create("default", LeaseSet(pool="default", holders=holders))

        # When the new scheduler starts
        with capture_logs() as logs:
            await system.start("scheduler")

        # Then each holder became a lease key of its own and the old record is gone
        migrated = [e for e in logs if e["event"] == "leases.migrated"]
        assert migrated and migrated[0]["holders"] == 2
        assert await old.get("default") is None
        # ...and, their renditions being long gone, the leases are released
        keys = TypedKV(buckets.leases, Lease)

        async def released() -> bool:
            return not await keys.values(under="default")

        await eventually(released, what="the migrated leases of vanished renditions to go")
    finally:
        await stop_system(system)


async def lease_subjects(system: System) -> int:
    """How many keys the leases bucket's stream holds: live leases and delete markers alike."""
    buckets = await ensure_topology(system.nc.jetstream(), system.names)
    return len(await TypedKV(buckets.leases, Lease).keys())


async def test_the_leases_of_ended_renditions_leave_nothing_behind_in_the_bucket(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # Given the system without a transcoder yet, so every job waits for one with its lease
    system = await start_system(env, "scheduler", "storage", "statistics", "notifier", "gateway")
    try:
        alice = Client(http, system.url, ALICE)
        count = 5
        ids = [
            await alice.submit(
                jellyfin.stream_url("fits", ALICE, variant=str(n)), device=f"device-{n}"
            )
            for n in range(count)
        ]
        # When each is started by hand (a lease key per rendition, beyond the pool's limit)...
        for job_id in ids:
            status, body, _ = await alice.request("POST", f"/start-job/{job_id}")
            assert status == 200, body

        async def all_leased() -> bool:
            return await lease_subjects(system) >= count

        await eventually(all_leased, what="every started job to hold a lease")
        # ...and every one of them is transcoded and ends
        await system.start("transcoder")
        for job_id in ids:
            await alice.wait_status(job_id, "completed", timeout=60)

        # Then the bucket is left with no key per ended rendition: not even a delete marker,
        # or the bucket (and every scheduler's start) grows with every job ever started
        async def forgotten() -> bool:
            return await lease_subjects(system) <= 1

        await eventually(forgotten, timeout=60, what="the ended leases to leave no key behind")
    finally:
        await stop_system(system)


async def test_a_lease_whose_scheduler_died_before_publishing_still_gets_its_job_done(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # Given what a scheduler killed mid-pass leaves: each job placed on its rendition and holding
    # a slot's lease (one a moment ago, one long ago), but no work published for it. No scheduler
    # runs, so the jobs are stored as its intake stores a Streamyfin submission.
    system = await start_system(env, "storage", "statistics", "notifier", "gateway")
    try:
        alice = Client(http, system.url, ALICE)
        js = system.nc.jetstream()
        buckets = await ensure_topology(js, system.names)
        store = RecordStore(js, system.names, buckets)
        leases = TypedKV(buckets.leases, Lease)
        ids = []
        for slot, age in enumerate((0.0, 3600.0)):
            job_id = str(uuid.uuid4())
            submitted = jobstate.new_job(
                job_id=job_id,
                owner="user-alice",
                owner_name="Alice",
                client="streamyfin",
                device_id=f"device-{slot}",
                item_id="item-1",
                source=jellyfin.stream_url("fits", ALICE, variant=str(slot)),
                spec=builtin("optimized"),
                now=time.time(),
            )
            await store.create_job(submitted)
            ids.append(job_id)
            found = await store.jobs.get(job_id)
            assert found is not None
            now = time.time()
            key = jobstate.rendition_key_of(found.value)
            r = jobstate.new_rendition(key, found.value, now)
            await store.change_rendition(key, lambda current, r=r: r if current is None else None)
            attached = jobstate.attach(found.value, r, now, shared=False)
            await store.change_job(job_id, lambda _, attached=attached: attached)
            lease = Lease(generation=r.generation, since=now - age, rendition=key, pool="default")
            await leases.create(slot_key("default", slot), lease)

        # When a scheduler starts again
        await system.start("scheduler", "transcoder")

        # Then both jobs are transcoded, and their leases go once they end
        for job_id in ids:
            await alice.wait_status(job_id, "completed", timeout=60)

        async def released() -> bool:
            return not await leases.values(under="default")

        await eventually(released, what="the leases of the ended renditions to go")
    finally:
        await stop_system(system)
