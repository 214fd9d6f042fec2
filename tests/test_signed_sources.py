"""A source in a user's bucket is read through a signed URL: its signature and credential never
show where sources and argv are shown (transcode sessions, the job's events and record, logs),
whether the job succeeds or fails."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shared.blobs.backends import open_store
from shared.blobs.store import BlobStore
from tests.harness import BUCKET, Api, System, eventually
from tests.storage_servers import SeaweedS3

# A parameter of a signed S3 URL whose value is anything but the mask.
UNMASKED = re.compile(r"(?i)x-amz-(?:signature|credential|security-token)=(?!\*\*\*)")


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """SeaweedFS listens on loopback: this operator allows it for users' storage."""
    return {**env, "VIDMESH_OUTBOUND_ALLOW": "127.0.0.0/8"}


async def _upload(store: BlobStore, key: str, path: Path) -> None:
    """Put a file in a bucket as a user would."""
    writer = await store.writer(key)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            await writer.write(chunk)
    await writer.close()


def assert_no_secret(shown: Any, seaweed: SeaweedS3, where: str) -> None:
    text = shown if isinstance(shown, str) else json.dumps(shown, default=str)
    assert not UNMASKED.search(text), f"{where}: {UNMASKED.search(text)} in {text[:3000]}"
    # the credential's scope (access key id/date/region/s3/aws4_request) and the secret itself
    assert "aws4_request" not in text, f"{where}: credential scope shown: {text[:3000]}"
    assert seaweed.secret_key not in text, where


async def _session_of(admin_api: Api, job_id: str) -> dict[str, Any]:
    async def found() -> list[dict[str, Any]] | None:
        sessions = await admin_api.ok("GET", "/api/admin/transcode-sessions")
        return [s for s in sessions if job_id in s["jobs"] and s["state"] != "running"] or None

    (summary,) = await eventually(found, what="the job's finished transcode session")
    detail = await admin_api.ok("GET", f"/api/admin/transcode-sessions/{summary['id']}")
    export = await admin_api.ok("GET", f"/api/admin/transcode-sessions/{summary['id']}/export")
    return {"summary": summary, "detail": detail, "export": export}


async def test_signed_s3_urls_never_show_their_signature_or_credential(
    system: System, ann: Api, admin_api: Api, seaweed: SeaweedS3, clips: dict[str, Path]
) -> None:
    # Given a user whose own S3 bucket holds a movie
    prefix = f"ann-{uuid.uuid4().hex[:8]}"
    body = {
        "bucket": BUCKET,
        "endpoint": seaweed.endpoint,
        "region": "us-east-1",
        "access_key_id": seaweed.access_key,
        "secret_access_key": seaweed.secret_key,
        "prefix": prefix,
    }
    await ann.ok("POST", "/user/s3", 201, json=body)
    await _upload(open_store(seaweed.config(BUCKET)), f"{prefix}/in/movie.mkv", clips["hevc"])
    with capture_logs() as logs:
        # When a job transcodes it, and another names an object that is not there
        good = await ann.ok(
            "POST", "/api/jobs", 201, json={"source": f"s3://{BUCKET}/{prefix}/in/movie.mkv"}
        )
        bad = await ann.ok(
            "POST", "/api/jobs", 201, json={"source": f"s3://{BUCKET}/{prefix}/in/missing.mkv"}
        )
        done = await ann.wait_job(good["id"], "completed", "failed", timeout=60)
        failed = await ann.wait_job(bad["id"], "completed", "failed", timeout=60)
        sessions = {
            "good": await _session_of(admin_api, good["id"]),
            "bad": await _session_of(admin_api, bad["id"]),
        }
    assert done["status"] == "completed", done
    assert failed["status"] == "failed" and failed["error"]["reason"], failed
    # Then ffmpeg did read a signed URL (the session shows it, masked) ...
    argv = sessions["good"]["detail"]["session"]["argv"]
    signed = next(arg for arg in argv if "X-Amz-Signature=" in arg)
    assert "X-Amz-Signature=***" in signed and "X-Amz-Credential=***" in signed
    # ... and no signature or credential shows in sessions, job records, events or logs
    assert_no_secret(sessions, seaweed, "transcode sessions")
    for job in (done, failed):
        assert_no_secret(job, seaweed, f"job {job['id']}")
        events = await ann.ok("GET", f"/api/jobs/{job['id']}/events")
        assert any(e["event"]["type"] == f"job.{job['status']}" for e in events)
        assert_no_secret(events, seaweed, f"events of {job['id']}")
    # the transcoder logged the failure with ffmpeg's words, which quote the URL it opened
    (logged,) = [e for e in logs if e["event"] == "work.failed"]
    assert "X-Amz-Signature=***" in logged["detail"], logged
    assert_no_secret(logs, seaweed, "logs")


async def test_a_presigned_https_source_is_masked_for_everyone_but_its_owner(
    system: System, ann: Api, admin_api: Api, seaweed: SeaweedS3, clips: dict[str, Path]
) -> None:
    # Given a presigned URL a user made for an object in some bucket
    bucket = open_store(seaweed.config(BUCKET))
    key = f"shared-{uuid.uuid4().hex[:8]}/movie.mkv"
    await _upload(bucket, key, clips["fits"])
    signed = await bucket.presign(key, 600)
    assert signed is not None and "X-Amz-Signature=" in signed
    # When the job that reads it has run
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": signed})
    assert (await ann.wait_job(job["id"], "completed", "failed", timeout=60))["status"] == (
        "completed"
    )
    # Then its owner sees what they sent; an administrator, the session and events do not
    assert (await ann.ok("GET", f"/api/jobs/{job['id']}"))["source"] == signed
    seen = await admin_api.ok("GET", f"/api/jobs/{job['id']}")
    assert seen["source"].split("?")[0] == signed.split("?")[0]
    assert_no_secret(seen, seaweed, "the job as an administrator sees it")
    assert_no_secret(await _session_of(admin_api, job["id"]), seaweed, "its transcode session")
    assert_no_secret(await ann.ok("GET", f"/api/jobs/{job['id']}/events"), seaweed, "events")
