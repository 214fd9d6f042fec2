"""The download-jobs API (seeds/002) as its clients call it, against `vidmesh up`: one base URL,
http://host:port/api, an `x-api-key` header on every call, the document's routes and bodies, the
fields read back, and its status table (201 for POSTs that create, 504 when the metadata probe
times out). `vidmesh up` starts once for the module; the deep behaviour of each route is tested
in test_api_jobs.py, test_api_batches_presets.py and test_storage.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.harness import ALICE, BUCKET, Api, eventually
from tests.harness.up import Up, checkout_up, up_env, without_settings
from tests.jellyfin_standin import JellyfinStandIn
from tests.storage_servers import SeaweedS3

pytestmark = pytest.mark.slow

METADATA_TIMEOUT = 3  # seconds: a tiny clip probes in a fraction of that
# The transcoders' own probe limit, shorter: as with the defaults (15 s against 30 s), the
# transcoder gives up first, and its answer must still be a 504
PROBE_TIMEOUT = 2
JOB_FIELDS = {"id", "status", "progress", "source", "preset", "output", "created_at", "error"}


@pytest_asyncio.fixture(scope="module")
async def up(
    tmp_path_factory: pytest.TempPathFactory, jellyfin: JellyfinStandIn
) -> AsyncIterator[Up]:
    """One `vidmesh up` for the module, open registration, loopback storage allowed (SeaweedFS
    runs there)."""
    data = tmp_path_factory.mktemp("download-jobs-api") / "data"
    data.mkdir()
    env = up_env(
        data,
        jellyfin.url,
        base=without_settings(os.environ),
        VIDMESH_REGISTRATION="open",
        VIDMESH_OUTBOUND_ALLOW="127.0.0.0/8",
        VIDMESH_METADATA_TIMEOUT=str(METADATA_TIMEOUT),
        VIDMESH_PROBE_TIMEOUT=str(PROBE_TIMEOUT),
    )
    async with checkout_up(env, data.parent / "up.log") as run:
        yield run


@pytest_asyncio.fixture(scope="module")
async def client(up: Up) -> AsyncIterator[Api]:
    """A download-jobs client: base URL http://host:port/api and an API key (made by signing up
    on the native API, as its users do)."""
    async with aiohttp.ClientSession() as http:
        user = await Api(http, up.url).as_user("downloader")
        key = await user.ok("POST", "/api/account/api-keys", 201, json={"name": "downloads"})
        yield Api(http, f"{up.url}/api", api_key=key["key"])


async def job_in(client: Api, job_id: str, *statuses: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = await client.ok("GET", f"/jobs/{job_id}")
        return job if job["status"] in statuses else None

    return await eventually(check, timeout=60, what=f"job {job_id} to be {statuses}")


async def test_jobs_bulk_batches_metadata_and_usage_under_one_base_url(
    up: Up, client: Api, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    source = jellyfin.stream_url("fits", ALICE, n="dl")

    # POST /jobs creates (201); GET /jobs/{id} follows it; GET /jobs lists it
    job = await client.ok("POST", "/jobs", 201, json={"source": source})
    assert set(job) >= {"id", "status", "source", "created_at"}, job
    done = await job_in(client, job["id"], "completed", "failed")
    assert done["status"] == "completed", done
    assert set(done) >= JOB_FIELDS and done["output"]["size"] > 0, done
    listed = await client.ok("GET", "/jobs")
    assert [item["id"] for item in listed["items"]] == [job["id"]] and listed["count"] == 1

    # DELETE /jobs/{id}/file deletes the output; DELETE /jobs/{id} answers 204
    gone = await client.ok("DELETE", f"/jobs/{job['id']}/file")
    assert gone["id"] == job["id"] and gone["status"] == "removed", gone
    assert (await client.call("DELETE", f"/jobs/{job['id']}"))[0] == 204

    # POST /jobs/{id}/retry runs a failed job again
    broken = await client.ok(
        "POST", "/jobs", 201, json={"source": jellyfin.stream_url("not_video", ALICE)}
    )
    failed = await job_in(client, broken["id"], "failed")
    assert failed["error"]["reason"], failed
    retried = await client.ok("POST", f"/jobs/{broken['id']}/retry")
    assert retried["id"] == broken["id"] and retried["status"] != "failed", retried

    # POST /jobs/bulk creates (201) a paused batch; GET /batch/{id} shows it; PATCH renames;
    # POST /batch/{id}/start starts it; a queued job is cancelled with DELETE /jobs/{id} (204)
    sources = [{"source": jellyfin.stream_url("fits", ALICE, n=f"bulk{n}")} for n in (1, 2)]
    bulk = await client.ok("POST", "/jobs/bulk", 201, json={"jobs": sources, "paused": True})
    assert (bulk["created"], bulk["failed"]) == (2, 0) and bulk["batch_id"], bulk
    first, second = (item["job"]["id"] for item in bulk["results"])
    batch = await client.ok("GET", f"/batch/{bulk['batch_id']}")
    assert not batch["started"] and {j["id"] for j in batch["jobs"]} == {first, second}, batch
    renamed = await client.ok(
        "PATCH",
        f"/batch/{bulk['batch_id']}/jobs",
        json={"jobs": [{"id": first, "filename": "first.mp4"}]},
    )
    assert renamed["id"] == bulk["batch_id"], renamed
    assert (await client.call("DELETE", f"/jobs/{second}"))[0] == 204
    assert (await client.ok("GET", f"/jobs/{second}"))["status"] == "cancelled"
    started = await client.ok("POST", f"/batch/{bulk['batch_id']}/start")
    assert started["started"] and started["started_at"], started
    await job_in(client, first, "completed")

    # POST /metadata probes a source (200); one whose probe outlasts the timeout is a 504
    probe = await client.ok("POST", "/metadata", json={"source": source})
    assert probe["duration"] > 0 and probe["streams"], probe
    slow = jellyfin.stream_url("fits", ALICE, slow_first=str(METADATA_TIMEOUT * 3))
    status, answer, _ = await client.call("POST", "/metadata", json={"source": slow})
    assert status == 504 and answer["error"]["code"] == "gateway_timeout", answer

    # GET /usage counts the caller's jobs
    usage = await client.ok("GET", "/usage")
    assert usage["jobs"] == 4 and usage["jobs_by_status"]["completed"] >= 1, usage
    assert usage["minutes_transcoded"] > 0 and usage["bytes_stored"] > 0, usage

    # Without the key, every call is a 401 with a clear JSON error
    anonymous = Api(http, f"{up.url}/api")
    for method, path in (("GET", "/jobs"), ("GET", "/usage"), ("DELETE", "/user/s3")):
        status, answer, _ = await anonymous.call(method, path)
        assert status == 401 and "x-api-key" in answer["error"]["message"], answer


def s3_body(seaweed: SeaweedS3, prefix: str) -> dict[str, Any]:
    return {
        "bucket": BUCKET,
        "endpoint": seaweed.endpoint,
        "region": "us-east-1",
        "access_key_id": seaweed.access_key,
        "secret_access_key": seaweed.secret_key,
        "prefix": prefix,
    }


async def test_user_storage_configured_and_removed_under_the_base_url(
    client: Api, seaweed: SeaweedS3
) -> None:
    # POST /user/s3 and the legacy /user/bucket check the credentials and answer 201
    for slot in ("s3", "bucket"):
        created = await client.ok("POST", f"/user/{slot}", 201, json=s3_body(seaweed, slot))
        assert created["kind"] == "s3" and created["bucket"] == BUCKET, created
        assert created["prefix"] == slot and "secret_access_key" not in created, created
        listed = await client.ok("GET", "/user/storage")
        assert [(s["slot"], s["prefix"]) for s in listed] == [("s3", slot)], listed
        removed = await client.ok("DELETE", f"/user/{slot}")
        assert removed["message"], removed
        assert await client.ok("GET", "/user/storage") == []

    # Credentials a store refuses are a clear 400, and nothing is kept
    wrong = {**s3_body(seaweed, "x"), "secret_access_key": "not-the-secret"}
    refused: dict[str, dict[str, Any]] = {
        "s3": wrong,
        "oss": {**wrong, "endpoint": seaweed.endpoint},
        "blob": {
            "account_name": "devstoreaccount1",
            "container": BUCKET,
            "account_key": "bm90LXRoZS1rZXk=",
            "endpoint": seaweed.endpoint,
        },
        "gcs": {"bucket": BUCKET, "service_account_key": '{"type": "service_account"}'},
    }
    for slot, body in refused.items():
        status, answer, _ = await client.call("POST", f"/user/{slot}", json=body)
        assert status == 400 and answer["error"]["message"], (slot, status, answer)
    assert await client.ok("GET", "/user/storage") == []

    # DELETE of storage that is not configured is a 404, for every kind
    for slot in ("s3", "bucket", "oss", "blob", "gcs"):
        status, answer, _ = await client.call("DELETE", f"/user/{slot}")
        assert status == 404 and answer["error"]["code"] == "not_found", (slot, answer)
