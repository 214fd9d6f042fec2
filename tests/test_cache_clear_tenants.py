"""`DELETE /delete-cache` clears the caller's own cache: a Jellyfin user's call removes only what
their own jobs hold (an output another user's job also holds stays for that user); a Jellyfin
administrator's call clears everything; and a clear never takes a file stored a moment ago for an
orphan (the storage service's grace period holds for every sweep)."""

from __future__ import annotations

import hashlib
import os
import time

from tests.harness import ADMIN, ALICE, BOB, Client, System, eventually
from tests.jellyfin_standin import JellyfinStandIn


async def _download(client: Client, job_id: str) -> tuple[int, bytes]:
    status, body, _ = await client.request("GET", f"/download/{job_id}")
    return status, body if isinstance(body, bytes) else b""


async def test_a_users_cache_clear_leaves_other_users_outputs_and_an_admins_clears_all(
    system: System, alice: Client, bob: Client, jellyfin: JellyfinStandIn
) -> None:
    # Given Alice has two completed jobs, one of them on media Bob also optimized (one shared
    # output), and Bob has a job of his own
    alice_own = await alice.submit(jellyfin.stream_url("hevc", ALICE), device="alice-phone")
    alice_shared = await alice.submit(jellyfin.stream_url("fits", ALICE), device="alice-phone")
    bob_shared = await bob.submit(jellyfin.stream_url("fits", BOB), device="bob-phone")
    bob_own = await bob.submit(jellyfin.stream_url("fits", BOB, variant="b"), device="bob-phone")
    for client, job_id in (
        (alice, alice_own),
        (alice, alice_shared),
        (bob, bob_shared),
        (bob, bob_own),
    ):
        assert (await client.wait_status(job_id, "completed", "failed", timeout=60))[
            "status"
        ] == "completed"
    assert len(system.output_files()) == 3
    own_size = (await alice.job(alice_own))["size"]

    # When Alice clears the cache
    status, body, _ = await alice.request("DELETE", "/delete-cache")

    # Then only the output no one else holds is deleted, and only it is counted
    assert status == 200, body
    assert body["deletedFiles"] == 1 and body["freedBytes"] == own_size, body
    assert len(system.output_files()) == 2
    # Alice's jobs let go of their outputs
    for job_id in (alice_own, alice_shared):
        assert (await alice.job(job_id))["status"] == "ready-for-removal"
        assert (await _download(alice, job_id))[0] == 404
    # Bob's jobs are untouched and still download, the shared output included
    for job_id in (bob_shared, bob_own):
        job = await bob.job(job_id)
        assert job["status"] == "completed", job
        status, whole = await _download(bob, job_id)
        assert status == 200 and hashlib.sha256(whole).hexdigest() == job["checksum"]

    # When a Jellyfin administrator clears the cache, everything goes
    admin = Client(alice.session, system.url, ADMIN)
    status, body, _ = await admin.request("DELETE", "/delete-cache")
    assert status == 200, body
    assert body["deletedFiles"] == 2 and body["freedBytes"] > 0, body
    assert system.output_files() == []
    for job_id in (bob_shared, bob_own):
        assert (await bob.job(job_id))["status"] == "ready-for-removal"
        assert (await _download(bob, job_id))[0] == 404


async def test_a_cache_clear_keeps_the_orphan_grace_for_a_file_stored_a_moment_ago(
    system: System, alice: Client
) -> None:
    # Given a file a transcoder stored a moment ago, before its rendition records it, and an
    # orphan left behind an hour ago (VIDMESH_ORPHAN_GRACE is 30 s in tests)
    fresh = system.data_dir / "blobs" / "outputs" / "ab" / "abfresh" / "1-1.mp4"
    stale = system.data_dir / "blobs" / "outputs" / "cd" / "cdstale" / "1-1.mp4"
    # and a segment of a split job that no longer runs, left behind an hour ago
    stale_part = system.data_dir / "blobs" / "parts" / "ef" / "efgone" / "1" / "v0003-1.mp4"
    for path in (fresh, stale, stale_part):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(stale_part, (hour_ago, hour_ago))

    # When an administrator clears the cache
    admin = Client(alice.session, system.url, ADMIN)
    status, body, _ = await admin.request("DELETE", "/delete-cache")

    # Then the fresh output is kept for its rendition (the old orphan goes, by this clear or by
    # the periodic sweep, whichever comes first)
    assert status == 200, body
    assert body["freedBytes"] == 1000 * body["deletedFiles"] <= 2000, body
    await eventually(lambda: not stale.exists(), timeout=5, what="the stale orphan to go")
    await eventually(lambda: not stale_part.exists(), timeout=5, what="the stale part to go")
    assert fresh.exists() and fresh.stat().st_size == 1000


async def test_a_cache_clear_leaves_the_callers_running_job_alone_and_a_user_without_jobs_clears_nothing(  # noqa: E501
    system: System, alice: Client, bob: Client, jellyfin: JellyfinStandIn
) -> None:
    # Given Alice has a completed job, and another one still being transcoded
    done = await alice.submit(jellyfin.stream_url("hevc", ALICE), device="alice-phone")
    await alice.wait_status(done, "completed", timeout=60)
    running = await alice.submit(
        jellyfin.stream_url("long_ts", ALICE, kind="live", rate="100000"), device="alice-phone"
    )
    await alice.wait_status(running, "optimizing", timeout=30)
    files = system.output_files()

    # When Bob, who has no job at all, clears the cache
    status, body, _ = await bob.request("DELETE", "/delete-cache")
    # Then nothing is deleted, and that is a success
    assert status == 200, body
    assert (body["deletedFiles"], body["freedBytes"]) == (0, 0), body
    assert system.output_files() == files

    # When Alice clears the cache while her second job runs
    status, body, _ = await alice.request("DELETE", "/delete-cache")
    assert status == 200, body
    assert body["deletedFiles"] == 1, body
    # Then the finished output goes, and the running job carries on, completes and downloads
    job = await alice.wait_status(running, "completed", "failed", timeout=90)
    assert job["status"] == "completed", job
    status, whole = await _download(alice, running)
    assert status == 200 and hashlib.sha256(whole).hexdigest() == job["checksum"]
