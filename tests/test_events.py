"""The event contract as subscribers see it: the AsyncAPI document served by the gateway, and the
events stream's retention taken from configuration."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from nats.js.errors import NotFoundError

from shared.nats.topology import DAY
from tests.harness import ALICE, Api, Client, System, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn

REPO = Path(__file__).resolve().parent.parent


async def test_the_gateway_serves_the_committed_asyncapi_document(
    system: System, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{system.url}/api/asyncapi.json") as response:
        assert response.status == 200
        served = await response.json()
    assert served == json.loads((REPO / "schemas" / "asyncapi.json").read_text())
    assert served["asyncapi"] == "3.0.0"


async def test_event_retention_comes_from_configuration_and_follows_a_change(
    env: dict[str, str],
) -> None:
    system = await start_system({**env, "VIDMESH_EVENTS_RETENTION_DAYS": "2"}, "scheduler")
    try:
        js = system.nc.jetstream()
        info = await js.stream_info(system.names.events_stream)
        assert info.config.max_age == 2 * DAY
        # an operator raises it: the next service to start applies it to the stream
        await system.stop()
        changed = await start_system({**env, "VIDMESH_EVENTS_RETENTION_DAYS": "30"}, "statistics")
        try:
            info = await js.stream_info(system.names.events_stream)
            assert info.config.max_age == 30 * DAY
        finally:
            await changed.stop()
            await changed.nc.close()
    finally:
        await stop_system(system)


async def test_a_job_change_whose_writer_died_before_publishing_still_gets_its_event(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE))
    assert (await alice.wait_status(job_id, "completed"))["status"] == "completed"
    # A writer stores a change and dies before it publishes the event
    jobs = system.scheduler.store.jobs
    found = await jobs.get(job_id)
    assert found is not None
    changed = msgspec.structs.replace(
        found.value, downloaded_at=time.time(), updated_at=time.time() - 5
    )
    revision = await jobs.update(job_id, changed, found.revision)
    js = system.nc.jetstream()
    subject = system.names.job_event(job_id, "completed")

    async def published() -> dict[str, Any] | None:
        try:
            last = await js.get_last_msg(system.names.events_stream, subject)
        except NotFoundError:
            return None
        event: dict[str, Any] = json.loads(last.data or b"{}")
        return event if event["revision"] == revision else None

    event = await eventually(published, timeout=20)
    assert event["event_id"] == f"job:{job_id}:{revision}" and event["owner"]


async def test_pool_and_worker_changes_are_events_on_documented_subjects(
    system: System, admin_api: Api
) -> None:
    js = system.nc.jetstream()
    (worker,) = await admin_api.ok("GET", "/api/machines")
    online = await js.get_last_msg(
        system.names.events_stream, system.names.worker_event(worker["id"], "online")
    )
    assert json.loads(online.data or b"{}")["type"] == "worker.online"
    await admin_api.ok("POST", "/api/admin/transcoding/pools", 201, json={"id": "gpu"})
    await admin_api.ok("PUT", "/api/admin/transcoding/pools/gpu", json={"concurrency": 3})
    await admin_api.ok("DELETE", "/api/admin/transcoding/pools/gpu", 204)
    sub = await js.subscribe(system.names.pool_event("gpu", "*"), ordered_consumer=True)
    seen = []
    for _ in range(3):
        msg = await sub.next_msg(timeout=5)
        event = json.loads(msg.data)
        seen.append((event["type"], event.get("concurrency")))
    await sub.unsubscribe()
    assert seen == [("pool.created", 1), ("pool.updated", 3), ("pool.deleted", None)]


async def test_webhook_subscription_changes_are_events_without_their_secret(
    system: System, admin_api: Api
) -> None:
    created = await admin_api.ok(
        "POST",
        "/api/admin/webhooks",
        201,
        json={"url": "https://hooks.example.com/vidmesh", "event_types": ["job.*"]},
    )
    sub_id = created["id"]
    await admin_api.ok(
        "PUT",
        f"/api/admin/webhooks/{sub_id}",
        json={"url": "https://hooks.example.com/vidmesh", "enabled": False},
    )
    await admin_api.ok("DELETE", f"/api/admin/webhooks/{sub_id}", 204)
    js = system.nc.jetstream()
    sub = await js.subscribe(system.names.webhook_event(sub_id, "*"), ordered_consumer=True)
    seen = []
    for _ in range(3):
        msg = await sub.next_msg(timeout=5)
        assert created["secret"] not in msg.data.decode()
        event = json.loads(msg.data)
        seen.append((event["type"], event["enabled"]))
    await sub.unsubscribe()
    assert seen == [
        ("webhook.created", True),
        ("webhook.updated", False),
        ("webhook.deleted", False),
    ]
