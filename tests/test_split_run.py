"""Transcoders run the parts of a split rendition: each video segment and the audio as a work item
of its own, then the join into the rendition's one output.

Until the scheduler leases parts, the test plays its part: it writes a running split rendition
and its part records (planned by the media core on a real clip), publishes their work items to
the pool's subject as the scheduler would, and the join once every part is stored. Real
nats-server, real transcoders, real ffmpeg.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from services.transcoder import Transcoder
from shared.jobs import state as jobstate
from shared.media.probe import probe
from shared.media.segments import keyframes, plan_segments
from shared.messages.records import Output, Part, Rendition, RenditionState, Split
from shared.messages.work import ENCODER, JoinWork, SegmentWork
from shared.nats.consumer import ABANDON, ACK
from shared.nats.kv import TypedKV
from tests.harness import (
    ALICE,
    System,
    build_service,
    eventually,
    start_system,
    stop_system,
)
from tests.harness.procfs import ffmpeg_pids
from tests.jellyfin_standin import JellyfinStandIn
from tests.media_clips import make_clip
from tests.test_segments_media import _frame_times

pytestmark = pytest.mark.slow

R = RenditionState
SEGMENT_SECONDS = 5.0


@pytest_asyncio.fixture
async def two_transcoders(
    env: dict[str, str], tmp_path: Path
) -> AsyncIterator[tuple[System, Transcoder, Transcoder]]:
    """Two transcoders of pool `default` (and no scheduler: the test publishes the work)."""
    media = tmp_path / "media"
    media.mkdir()
    settings = {**env, "VIDMESH_MEDIA_ROOTS": str(media), "VIDMESH_SLOTS": "2"}
    system = await start_system(settings, "transcoder")
    second = build_service("transcoder", system.nc, settings)
    await second.start()
    first = system.services["transcoder"]
    assert isinstance(first, Transcoder) and isinstance(second, Transcoder)
    try:
        yield system, first, second
    finally:
        await second.shutdown()
        await stop_system(system)


async def split_rendition(
    t: Transcoder, source: str, local: Path, key: str, *, audio: bool = True
) -> tuple[Rendition, list[Part]]:
    """A running rendition split as a planner would split it, its parts created and dispatched
    (pending → dispatched, as the scheduler leases them)."""
    found = probe(str(local))
    assert found.duration is not None
    segments = plan_segments(keyframes(str(local)), found.duration, target_seconds=SEGMENT_SECONDS)
    now = time.time()
    split = Split(
        segments=len(segments),
        audio=audio,
        seconds=found.duration,
        encoder="libx264",
        segment_seconds=SEGMENT_SECONDS,
        at=now,
    )
    r = Rendition(
        key=key,
        source=source,
        profile="optimized",
        container="mp4",
        state=R.RUNNING,
        attempt=1,
        probe=found,
        split=split,
        created_at=now,
        updated_at=now,
        started_at=now,
    )
    await t.store.renditions.create(key, r)
    parts = [jobstate.dispatch_part(p, now) for p in jobstate.new_parts(r, split, segments, now)]
    for p in parts:
        await t.parts.create(p.key, p)
    return r, parts


async def publish(t: Transcoder, work: SegmentWork | JoinWork, part: Part) -> None:
    """What the scheduler's publish does: the pool's work subject, de-duplicated by msg id."""
    js = t.nc.jetstream()
    subject = t.names.work(part.pool)
    headers = {"Nats-Msg-Id": f"{part.key}:{part.dispatch_seq}"}
    await js.publish(subject, ENCODER.encode(work), headers=headers)


def segment_work(r: Rendition, p: Part) -> SegmentWork:
    assert p.kind != "join"
    return SegmentWork(
        key=r.key,
        generation=r.generation,
        part=p.name,
        kind=p.kind,
        dispatch_seq=p.dispatch_seq,
        source=r.source,
        profile=r.profile,
        container=r.container,
        encoder="libx264",
        start=p.start,
        end=p.end,
        frames=p.frames,
        dispatched_at=time.time(),
    )


def join_work(r: Rendition, p: Part) -> JoinWork:
    return JoinWork(
        key=r.key,
        generation=r.generation,
        dispatch_seq=p.dispatch_seq,
        profile=r.profile,
        container=r.container,
        dispatched_at=time.time(),
    )


async def parts_now(parts: TypedKV[Part], r: Rendition) -> dict[str, Part]:
    return {p.name: p for p in (await parts.values(under=f"{r.key}.{r.generation}")).values()}


async def test_two_transcoders_encode_the_parts_and_join_them_frame_exactly(
    two_transcoders: tuple[System, Transcoder, Transcoder], tmp_path: Path
) -> None:
    """Given a running rendition of a 20 s clip split into 5 s segments and its audio, when its
    parts' work items are published to the pool and, once they are stored, its join, then the
    rendition is done with one output that has exactly the source's frames at the source's
    times, each part and the join ran once with a session of its own, and the rendition's
    progress never went back while it ran."""
    system, first, _ = two_transcoders
    local = make_clip(
        tmp_path / "media" / "source.mkv",
        seconds=20,
        fps=24,
        vcodec="mpeg4",  # the optimized profile's H.264 must encode it
        container="mkv",
        extra_args=["-g", "24"],
    )
    r, parts = await split_rendition(first, str(local), local, "splitrun0001")
    assert r.split is not None and r.split.segments == 4
    progress: list[float] = []

    async def watch_progress() -> None:
        while True:
            found = await first.store.progress.get(r.key)
            if found is not None:
                progress.append(found.value.out_time)
            await asyncio.sleep(0.1)

    watching = asyncio.create_task(watch_progress())
    try:
        # When every part but the join is published
        for p in parts[:-1]:
            await publish(first, segment_work(r, p), p)

        async def stored() -> bool:
            now = await parts_now(first.parts, r)
            return all(p.state is R.DONE for name, p in now.items() if name != "join")

        await eventually(stored, timeout=120, what="every segment and the audio stored")
        # ... then the join
        join = parts[-1]
        await publish(first, join_work(r, join), join)

        async def rendition_done() -> Rendition | None:
            found = await first.store.renditions.get(r.key)
            return found.value if found and found.value.state is R.DONE else None

        done = await eventually(rendition_done, timeout=60, what="the rendition done")
    finally:
        watching.cancel()

    # Then the output is stored once, with the source's frames at the source's times
    assert done.output is not None
    outputs = system.output_files()
    assert len(outputs) == 1 and outputs[0] == system.blobs.local_path(done.output.blob)
    before, after = _frame_times(local), _frame_times(outputs[0])
    assert len(after) == len(before) == 480
    assert after == pytest.approx(before, abs=0.002)
    assert done.output.container == "mp4" and done.output.size == outputs[0].stat().st_size
    # ... every part and the join ran once, each with its own session
    now = await parts_now(first.parts, r)
    assert {p.state for p in now.values()} == {R.DONE}
    sessions = [s for s in await first.runner.fleet.all_sessions() if s.rendition == r.key]
    assert sorted(s.part for s in sessions) == sorted(p.name for p in parts)
    assert all(s.state == "succeeded" and s.attempt == 1 for s in sessions)
    assert {s.id for s in sessions} == {f"{r.key}-1-{p.name}-1" for p in parts}
    # ... both transcoders took parts (two slots each, five parts to run)
    assert len({s.worker for s in sessions if s.part != "join"}) == 2
    # ... and the whole job's progress never went back while it ran
    assert progress and progress == sorted(progress)
    # the join's last word is 100 % (never 0 while the job's record catches up)
    final = await first.store.progress.get(r.key)
    assert final is not None and final.value.percent == 100.0


async def test_cancelling_a_split_rendition_stops_its_segments_ffmpeg_within_two_seconds(
    two_transcoders: tuple[System, Transcoder, Transcoder],
    jellyfin: JellyfinStandIn,
    tmp_path: Path,
) -> None:
    """Given a segment of a split rendition encoding from a slow source, when the rendition is
    cancelled, then no ffmpeg of it is left 2 s later and the part's session says cancelled."""
    _, first, _ = two_transcoders
    local = make_clip(
        tmp_path / "slow.ts",
        seconds=20,
        vcodec="mpeg4",
        container="mpegts",
        extra_args=["-g", "15"],
    )
    jellyfin.add_media("split_slow", local)
    slow = jellyfin.stream_url("split_slow", ALICE, kind="live", rate="20000")
    r, parts = await split_rendition(first, slow, local, "splitcancel01", audio=False)
    segment = next(p for p in parts if p.name == "v0000")
    await publish(first, segment_work(r, segment), segment)
    await eventually(lambda: ffmpeg_pids(r.key), timeout=20, what="the segment's ffmpeg")

    # When the rendition is cancelled
    sent = time.monotonic()
    await first.store.change_rendition(
        r.key, lambda current: current and jobstate.cancel_rendition(current, time.time())
    )

    # Then its ffmpeg is gone within 2 s
    def stopped_after() -> float | None:
        return None if ffmpeg_pids(r.key) else time.monotonic() - sent

    took = await eventually(
        stopped_after, timeout=2.0, interval=0.02, what="ffmpeg to stop within 2 s"
    )
    assert took <= 2.0

    async def session_state() -> str | None:
        sessions = await first.runner.fleet.all_sessions()
        found = [s.state for s in sessions if s.rendition == r.key and s.part == "v0000"]
        return found[0] if found and found[0] != "running" else None

    assert await eventually(session_state, timeout=10, what="the session ended") == "cancelled"


async def test_a_redelivered_part_is_taken_over_and_the_losers_file_is_deleted(
    two_transcoders: tuple[System, Transcoder, Transcoder], tmp_path: Path
) -> None:
    """Given a segment claimed by one transcoder, when its work item comes back to another (a
    redelivery: the first stopped heartbeating), then the other takes it over as attempt 2; the
    first one's late file is deleted instead of recorded, and the second one's is the part's."""
    system, first, second = two_transcoders
    local = make_clip(tmp_path / "media" / "short.mkv", seconds=12, vcodec="mpeg4", container="mkv")
    r, parts = await split_rendition(first, str(local), local, "splittakeover1")
    segment = next(p for p in parts if p.name == "v0000")
    work = segment_work(r, segment)
    mine, theirs = first.runner.parts.records, second.runner.parts.records

    claimed = await mine.claim(work, redelivered=False, ack_subject="")
    assert claimed is not None and claimed[0].attempt == 1
    # a first delivery of a part running elsewhere is not taken...
    assert await theirs.claim(work, redelivered=False, ack_subject="") is None
    # ... a redelivery is
    taken = await theirs.claim(work, redelivered=True, ack_subject="")
    assert taken is not None and (taken[0].attempt, taken[0].worker) == (2, second.worker_id)

    async def stored(worker: Transcoder, attempt: int) -> Output:
        scratch = tmp_path / f"v0000-{attempt}.mp4"  # the store takes the file (moved)
        shutil.copyfile(local, scratch)
        blob = await worker.stores.service.put_file(
            f"parts/{r.key[:2]}/{r.key}/1/v0000-{attempt}.mp4", scratch
        )
        return Output(
            blob=blob.key, size=blob.size, sha256=blob.sha256, container="segment", mime="video/mp4"
        )

    late = await stored(first, 1)
    late_path = system.blobs.local_path(late.blob)
    assert late_path is not None and late_path.exists()
    assert await mine.record_success(claimed[0], late) is ABANDON
    assert not late_path.exists()
    winner = await stored(second, 2)
    assert await theirs.record_success(taken[0], winner) is ACK
    found = await first.parts.get(segment.key)
    assert found is not None and found.value.state is R.DONE and found.value.output == winner
