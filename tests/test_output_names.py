"""Jobs that name the same destination file never overwrite each other's output: two users (and
one user twice) asking for `movie.mp4` from different sources each download their own encode,
still offered as `movie.mp4`; and a local output is on disk in full when it is published."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.blobs.backends import open_store
from shared.blobs.store import LocalBlobStore
from tests.harness import ALICE, BUCKET, Api, System
from tests.jellyfin_standin import JellyfinStandIn
from tests.storage_servers import SeaweedS3

NAME = "movie.mp4"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The Jellyfin stand-in and SeaweedFS listen on loopback: this operator allows it."""
    return {**env, "VIDMESH_OUTBOUND_ALLOW": "127.0.0.0/8"}


async def _submit_all(
    jobs: list[tuple[Api, str]], destination: dict[str, Any]
) -> list[tuple[Api, dict[str, Any]]]:
    submitted = [
        (
            user,
            await user.ok("POST", "/api/jobs", 201, json={"source": s, "destination": destination}),
        )
        for user, s in jobs
    ]
    done = []
    for user, job in submitted:
        finished = await user.wait_job(job["id"], "completed", "failed", timeout=90)
        assert finished["status"] == "completed", finished
        done.append((user, finished))
    return done


async def _each_downloads_its_own(done: list[tuple[Api, dict[str, Any]]]) -> None:
    checksums = []
    for user, job in done:
        status, body, resp = await user.call("GET", f"/api/jobs/{job['id']}/file")
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == job["output"]["sha256"], job["id"]
        assert f'filename="{NAME}"' in resp.headers["Content-Disposition"]
        checksums.append(job["output"]["sha256"])
    assert len(set(checksums)) == len(checksums)  # different sources, different encodes


def _sources(jellyfin: JellyfinStandIn) -> list[str]:
    return [jellyfin.stream_url(item, ALICE) for item in ("fits", "hevc", "long_ts")]


async def test_same_file_name_in_the_service_store_keeps_every_jobs_own_output(
    system: System, ann: Api, ben: Api, jellyfin: JellyfinStandIn
) -> None:
    first, second, third = _sources(jellyfin)
    done = await _submit_all([(ann, first), (ann, second), (ben, third)], {"filename": NAME})
    await _each_downloads_its_own(done)


async def test_same_file_name_in_users_storage_never_overwrites_another_jobs_object(
    system: System, ann: Api, ben: Api, seaweed: SeaweedS3, jellyfin: JellyfinStandIn
) -> None:
    # Given two users whose storage is the same bucket and folder (a team bucket)
    prefix = f"team-{uuid.uuid4().hex[:8]}"
    for user in (ann, ben):
        await user.ok(
            "POST",
            "/user/s3",
            201,
            json={
                "bucket": BUCKET,
                "endpoint": seaweed.endpoint,
                "region": "us-east-1",
                "access_key_id": seaweed.access_key,
                "secret_access_key": seaweed.secret_key,
                "prefix": prefix,
            },
        )
    # When Ann twice and Ben once ask for `movie.mp4` there, from different sources
    first, second, third = _sources(jellyfin)
    done = await _submit_all(
        [(ann, first), (ann, second), (ben, third)], {"store": "s3", "filename": NAME}
    )
    # Then each downloads their own encode, offered as movie.mp4, and all three are stored
    await _each_downloads_its_own(done)
    bucket = open_store(seaweed.config(BUCKET))
    stored = await bucket.list_blobs(f"{prefix}/")
    assert len(stored) == 3, [b.key for b in stored]
    assert f"{prefix}/{NAME}" in {b.key for b in stored}  # the first keeps the name it asked for


async def test_overlapping_prefixes_in_one_bucket_never_overwrite_each_others_object(
    system: System, ann: Api, ben: Api, seaweed: SeaweedS3, jellyfin: JellyfinStandIn
) -> None:
    # Given two users of one bucket: Ann's storage is its folder `team`, Ben's `team/videos`
    team = f"team-{uuid.uuid4().hex[:8]}"
    for user, prefix in ((ann, team), (ben, f"{team}/videos")):
        await user.ok(
            "POST",
            "/user/s3",
            201,
            json={
                "bucket": BUCKET,
                "endpoint": seaweed.endpoint,
                "region": "us-east-1",
                "access_key_id": seaweed.access_key,
                "secret_access_key": seaweed.secret_key,
                "prefix": prefix,
            },
        )
    # When Ann asks for videos/movie.mp4 and Ben for movie.mp4: the same object in the bucket
    first, second, _ = _sources(jellyfin)
    done = [
        *await _submit_all([(ann, first)], {"store": "s3", "prefix": "videos", "filename": NAME}),
        *await _submit_all([(ben, second)], {"store": "s3", "filename": NAME}),
    ]
    # Then each downloads their own encode, and both objects are in the bucket
    await _each_downloads_its_own(done)
    bucket = open_store(seaweed.config(BUCKET))
    stored = await bucket.list_blobs(f"{team}/")
    assert len(stored) == 2, [b.key for b in stored]


async def test_a_local_output_is_synced_to_disk_before_it_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy on os.fsync (the one mock here: no strace on this machine) records what was synced
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store = LocalBlobStore(tmp_path / "blobs")
    payload = os.urandom(3 << 20)
    for how in ("writer", "put_file"):
        key = f"outputs/ab/{how}/1-1.mp4"
        target = store.root / key
        synced.clear()
        if how == "writer":
            writer = await store.writer(key)
            for start in range(0, len(payload), 1 << 20):
                await writer.write(payload[start : start + (1 << 20)])
            stored = await writer.close()
        else:
            source = tmp_path / "scratch.mp4"
            source.write_bytes(payload)
            stored = await store.put_file(key, source)
        # The published file is there in full
        assert target.read_bytes() == payload
        assert stored.sha256 == hashlib.sha256(payload).hexdigest()
        # Its data was synced, and so was its folder after the rename
        folder = str(target.parent)
        assert synced and synced[-1] == folder, (how, synced)
        assert any(path != folder for path in synced[:-1]), (how, synced)
