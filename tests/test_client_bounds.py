"""One client cannot stop dispatch for everyone: every client-supplied string that is stored is
bounded (200 characters, a 400 above), and leases and totals keep a size that does not grow
with the number of clients."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from shared.messages.records import Lease
from shared.nats.kv import TypedKV
from shared.nats.topology import ensure_topology
from tests.harness import (
    ADMIN_PASSWORD,
    ALICE,
    Api,
    Client,
    System,
    eventually,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn

STARTED_JOBS = 1000
# What one lease or the totals may take, whatever the number of clients (the old single lease
# record held ~300 KB for 1,000 of them, ~600 KB for 2,000; NATS refuses a message over 1 MiB).
RECORD_BOUND = 16 * 1024
AT_ONCE = 32  # requests in flight at once, as many clients would send them


async def largest_value(kv: KeyValue) -> int:
    """The size of the largest record in a KV bucket, in bytes."""
    sizes = [0]
    for key in await TypedKV(kv, Lease).keys():
        with contextlib.suppress(KeyNotFoundError):
            entry = await kv.get(key)
            sizes.append(len(entry.value or b""))
    return max(sizes)


def long_device(n: int) -> str:
    return f"device-{n:05d}-".ljust(200, "x")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("deviceId", "d" * 201),
        ("itemId", "i" * 201),
        ("item", {"Id": "item-1", "Name": "n" * 201, "Type": "Movie"}),
        ("item", {"Id": "i" * 201, "Name": "A film", "Type": "Movie"}),
    ],
)
async def test_optimize_version_refuses_ids_and_names_over_200_characters(
    system: System, alice: Client, jellyfin: JellyfinStandIn, field: str, value: Any
) -> None:
    body: dict[str, Any] = {
        "url": jellyfin.stream_url("fits", ALICE),
        "deviceId": "phone",
        "itemId": "item-1",
        field: value,
    }
    status, answer, _ = await alice.request("POST", "/optimize-version", json=body)
    assert status == 400, answer
    assert answer["error"]["code"] == "bad_request"
    assert field in answer["error"]["message"] or field in str(answer["error"].get("details"))

    # Exactly 200 characters is fine
    trimmed = {k: v[:200] if isinstance(v, str) else v for k, v in body.items() if k != "item"}
    status, answer, _ = await alice.request("POST", "/optimize-version", json=trimmed)
    assert status == 201, answer


async def test_a_thousand_started_jobs_with_long_device_ids_leave_dispatch_working(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # Given the system without a transcoder yet: started jobs are leased and wait as work
    system = await start_system(env, "scheduler", "storage", "statistics", "notifier", "gateway")
    try:
        alice = Client(http, system.url, ALICE)
        admin = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        gate = asyncio.Semaphore(AT_ONCE)

        async def submit_and_start(n: int) -> str:
            async with gate:
                url = jellyfin.stream_url("fits", ALICE, variant=str(n))
                job_id = await alice.submit(url, device=long_device(n))
                status, body, _ = await alice.request("POST", f"/start-job/{job_id}")
                assert status == 200, body
                return job_id

        # When 1,000 clients each start a job with a 200-character device id
        ids = await asyncio.gather(*(submit_and_start(n) for n in range(STARTED_JOBS)))

        async def all_leased() -> bool:
            pools = await admin.ok("GET", "/api/admin/transcoding/pools")
            default = next(pool for pool in pools if pool["id"] == "default")
            return bool(default["running"] == STARTED_JOBS)

        await eventually(all_leased, timeout=60, what="every started job to hold a lease")
        # ...while no stored record grew with the clients (NATS refuses a message over 1 MiB)
        buckets = await ensure_topology(system.nc.jetstream(), system.names)
        assert await largest_value(buckets.leases) < RECORD_BOUND

        # ...and then let them go
        async def cancel(job_id: str) -> None:
            async with gate:
                status, body, _ = await alice.request("DELETE", f"/cancel-job/{job_id}")
                assert status == 200, body

        await asyncio.gather(*(cancel(job_id) for job_id in ids))

        # Then an ordinary job still completes once a transcoder is there
        await system.start("transcoder")
        ordinary = await alice.submit(jellyfin.stream_url("fits", ALICE), device="phone")
        await alice.wait_status(ordinary, "completed", timeout=60)

        # And the statistics count the devices, in a record that did not grow with them
        async def devices_counted() -> bool:
            _, stats, _ = await alice.request("GET", "/statistics")
            return abs(stats["uniqueDevices"] - (STARTED_JOBS + 1)) <= 0.05 * STARTED_JOBS

        await eventually(devices_counted, what="about 1,001 unique devices in the statistics")
        assert await largest_value(buckets.stats) < RECORD_BOUND
    finally:
        await stop_system(system)
