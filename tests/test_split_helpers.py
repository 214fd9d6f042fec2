"""A pool lends its full queue's video segments to a helper pool: two CPU pools, a transcoder in
each, one split job whose segments run in both and join into one frame-exact output.

The planner is not in this branch: the test plays it, splitting the job's rendition while its pool
is paused (as a transcoder that probed and indexed the source would), then lets the real
scheduler, storage and transcoders do the rest. Real nats-server, real ffmpeg.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import msgspec
import pytest

from services.transcoder import Transcoder
from shared.jobs import state as jobstate
from shared.media.probe import probe
from shared.media.segments import keyframes, plan_segments
from shared.messages.records import Rendition, RenditionState, Split
from tests.harness import (
    ADMIN_PASSWORD,
    ALICE,
    Api,
    Client,
    build_service,
    eventually,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn
from tests.media_clips import make_clip
from tests.test_segments_media import _frame_times

pytestmark = pytest.mark.slow

R = RenditionState
POOLS = "/api/admin/transcoding/pools"
PLANNER = "test-planner"


async def split_when_attached(t: Transcoder, job_id: str, local: Path) -> Rendition:
    """Once the job follows its pending rendition, split that rendition into 5 s segments of
    `local` (the stand-in serves the same file), its audio and its join: parts first, then the
    rendition claimed and marked split with its probe, as the planner writes them."""

    async def attached() -> str | None:
        found = await t.store.jobs.get(job_id)
        return found.value.rendition if found and found.value.rendition else None

    key = await eventually(attached, what="the job to follow a rendition")
    found = await t.store.renditions.get(key)
    assert found is not None and found.value.state is R.PENDING
    source = probe(str(local))
    assert source.duration is not None
    segments = plan_segments(keyframes(str(local)), source.duration, target_seconds=5.0)
    now = time.time()
    split = Split(
        segments=len(segments),
        audio=True,
        seconds=source.duration,
        encoder="libx264",
        segment_seconds=5.0,
        at=now,
    )
    for p in jobstate.new_parts(found.value, split, segments, now):
        await t.parts.create(p.key, p)

    def plan(r: Rendition | None) -> Rendition | None:
        if r is None or r.state is not R.PENDING:
            return None
        claimed = jobstate.claim(r, PLANNER, now)
        return jobstate.split_rendition(msgspec.structs.replace(claimed, probe=source), split, now)

    r, changed = await t.store.change_rendition(key, plan)
    assert changed and r is not None
    return r


async def test_a_full_pools_segments_run_in_its_helper_pool_and_join_frame_exactly(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    # Given two CPU pools of one slot each, a transcoder in each, `default` helped by `extra`
    settings = {**env, "VIDMESH_SLOTS": "1"}
    system = await start_system(settings, "scheduler", "storage", "gateway", "transcoder")
    extra = build_service("transcoder", system.nc, {**settings, "VIDMESH_POOL": "extra"})
    await extra.start()
    try:
        home = system.services["transcoder"]
        assert isinstance(home, Transcoder) and isinstance(extra, Transcoder)
        admin = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        await admin.ok("POST", POOLS, 201, json={"id": "extra", "concurrency": 1})
        helped = {"concurrency": 1, "segment_helpers": ["extra", "extra"], "enabled": False}
        default = await admin.ok("PUT", f"{POOLS}/default", json=helped)
        assert default["segment_helpers"] == ["extra"] and not default["enabled"]
        # (a pool cannot help itself, and a helper is named like a pool)
        for wrong in (["default"], ["Not A Pool"]):
            status, body, _ = await admin.call(
                "PUT", f"{POOLS}/default", json={"segment_helpers": wrong}
            )
            assert status in (400, 422), (wrong, status, body)
        listed = {p["id"]: p["segment_helpers"] for p in await admin.ok("GET", POOLS)}
        assert listed == {"default": ["extra"], "extra": []}

        # ... and a 20 s job that must be re-encoded, split into four segments while its pool
        # is paused
        local = make_clip(
            tmp_path / "helped.mkv",
            seconds=20,
            fps=24,
            vcodec="mpeg4",  # the optimized profile's H.264 must encode it
            container="mkv",
            extra_args=["-g", "24"],
        )
        jellyfin.add_media("helped", local)
        alice = Client(http, system.url, ALICE)
        job_id = await alice.submit(jellyfin.stream_url("helped", ALICE), device="dev-helped")
        r = await split_when_attached(home, job_id, local)
        assert r.split is not None and r.split.segments == 4

        # When the pool is given work again
        await admin.ok("PUT", f"{POOLS}/default", json={"enabled": True})

        # Then the job completes with one output holding the source's frames at their times
        await alice.wait_status(job_id, "completed", timeout=120)
        outputs = system.output_files()
        assert len(outputs) == 1
        before, after = _frame_times(local), _frame_times(outputs[0])
        assert len(after) == len(before) == 480
        assert after == pytest.approx(before, abs=0.002)
        # ... its audio and join ran in its own pool, and the segment its full pool could not
        # take (the first, beside the audio) ran in the helper, each part once, on the CPU
        sessions = [s for s in await home.runner.fleet.all_sessions() if s.rendition == r.key]
        ran = {s.part: s for s in sessions}
        assert len(ran) == len(sessions) == r.split.segments + 2
        assert (ran["audio"].pool, ran["join"].pool, ran["v0000"].pool) == (
            "default",
            "default",
            "extra",
        )
        assert ran["v0000"].worker == extra.worker_id
        videos = [s for s in sessions if s.part.startswith("v")]
        assert all(s.state == "succeeded" and s.pipeline == "cpu" for s in sessions)
        assert all("split job" in s.pipeline_reason for s in videos)
    finally:
        await extra.shutdown()
        await stop_system(system)
