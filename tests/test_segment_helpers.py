"""Pools that help with another pool's split jobs: the scheduler leases a video segment in a helper
pool when the segment's own pool is full, and a helper (a GPU one too) encodes it with the split's
CPU encoder, so every segment still joins without a seam. Pure decisions and argv, no NATS."""

from __future__ import annotations

from typing import Any

import msgspec

from services.scheduler.changes import Change, Claim, PublishPart
from services.scheduler.decide import decide
from services.transcoder.pipelines import segment_choice
from shared.jobs import state as jobstate
from shared.media import make_plan
from shared.media.presets import get_profile
from shared.media.probe import ProbeResult, StreamInfo
from shared.media.profiles import get_container
from shared.media.segments import Segment, segment_args
from shared.messages.fleet import Pool
from shared.messages.records import JobRecord, JobStatus, Lease, Part, Rendition, RenditionState
from shared.nats.leases import slot_key
from tests.test_decide import (
    NOW,
    done,
    of_kind,
    on,
    part_lease,
    pending,
    settings,
    split_film,
    view_of,
)

J = JobStatus
R = RenditionState

# the default pool runs one work item at a time and lends its video segments to `extra`
DEFAULT = Pool(id="default", concurrency=1, segment_helpers=["extra"])
EXTRA = Pool(id="extra", concurrency=2)


def sent(changes: list[Change]) -> list[tuple[str, str]]:
    """Each part whose work is published, with the pool it goes to, in order."""
    out = []
    for change in changes:
        then = change.then if isinstance(change, Claim) else change
        if isinstance(then, PublishPart):
            out.append((then.part.name, then.pool))
    return out


def busy_film(**changes: Any) -> tuple[JobRecord, Rendition, list[Part], dict[str, Lease]]:
    """A split film whose audio runs in the default pool's one slot."""
    job, r, parts = split_film(**changes)
    parts = [msgspec.structs.replace(p, state=R.RUNNING) if p.name == "audio" else p for p in parts]
    return job, r, parts, {slot_key("default", 0): part_lease(r, "audio")}


def running_in(pool: str) -> tuple[JobRecord, Rendition, dict[str, Lease]]:
    """Another job's rendition running in `pool`'s first slot."""
    job, r = pending(f"busy-{pool}", pool=pool)
    r = msgspec.structs.replace(r, state=R.RUNNING)
    lease = Lease(generation=r.generation, since=NOW - 5, rendition=r.key, pool=pool)
    return on(job, r, J.RUNNING), r, {slot_key(pool, 0): lease}


# ---- the scheduler ------------------------------------------------------------------------------


def test_a_full_pools_video_segments_are_leased_in_a_helper_pool_with_room() -> None:
    # Given a film whose own pool's one slot is busy with its audio, and a helper pool of two
    job, r, parts, leases = busy_film()
    view = view_of([job], [r], parts=parts, leases=leases, pools=[DEFAULT, EXTRA])

    # When the scheduler looks
    changes = decide(view, NOW, settings())

    # Then the first two video segments are leased in the helper, and their work goes there
    assert sent(changes) == [("v0000", "extra"), ("v0001", "extra")]
    claims = of_kind(changes, Claim)
    assert [c.key for c in claims] == [slot_key("extra", 0), slot_key("extra", 1)]
    assert all(c.lease.pool == "extra" and not c.lease.manual for c in claims)
    # ... and once published, the part records the pool it was leased in
    assert jobstate.dispatch_part(claims[0].then.part, NOW, "extra").pool == "extra"


def test_a_pool_with_a_free_slot_runs_its_own_segments() -> None:
    # Given a film in a pool with a free slot, and a helper with room
    job, r, parts = split_film()
    view = view_of([job], [r], parts=parts, pools=[DEFAULT, EXTRA])

    # Then its own pool takes what fits, the helper only what it has no room for
    changes = decide(view, NOW, settings())
    assert sent(changes) == [("audio", "default"), ("v0000", "extra"), ("v0001", "extra")]


def test_audio_and_join_never_go_to_a_helper_pool() -> None:
    # Given a film whose own pool is full with another job, and a helper with room
    job, r, parts = split_film()
    other_job, other, busy = running_in("default")
    jobs, renditions = [job, other_job], [r, other]
    videos_stored = [done(p) if p.kind == "video" else p for p in parts]
    all_stored = [done(p) if p.kind != "join" else p for p in parts]

    # Then neither its audio (every video segment stored) nor its join (ready) is lent
    for now in (videos_stored, all_stored):
        view = view_of(jobs, renditions, parts=now, leases=busy, pools=[DEFAULT, EXTRA])
        assert sent(decide(view, NOW, settings())) == []
    # ... while the join is published once its own pool has room
    view = view_of([job], [r], parts=all_stored, pools=[DEFAULT, EXTRA])
    assert sent(decide(view, NOW, settings())) == [("join", "default")]


def test_a_disabled_helper_or_one_without_room_is_skipped() -> None:
    job, r, parts, leases = busy_film()
    lends_to_both = Pool(id="default", concurrency=1, segment_helpers=["off", "full", "extra"])
    off = Pool(id="off", concurrency=4, enabled=False)
    full = Pool(id="full", concurrency=1)
    other_job, other, elsewhere = running_in("full")
    leases = {**leases, **elsewhere}
    jobs, renditions = [job, other_job], [r, other]
    pools = [lends_to_both, off, full, EXTRA]
    view = view_of(jobs, renditions, parts=parts, leases=leases, pools=pools)
    assert sent(decide(view, NOW, settings())) == [("v0000", "extra"), ("v0001", "extra")]

    # and a pool whose only helper is disabled or full keeps its segments waiting
    for helpers in (["off"], ["full"], ["nowhere"]):
        pool = Pool(id="default", concurrency=1, segment_helpers=helpers)
        pools = [pool, off, full, EXTRA]
        view = view_of(jobs, renditions, parts=parts, leases=leases, pools=pools)
        assert sent(decide(view, NOW, settings())) == [], helpers


def test_a_helpers_own_work_goes_before_the_segments_it_helps_with() -> None:
    # Given a helper of one slot with a film of its own waiting
    job, r, parts, leases = busy_film()
    own_job, own, own_parts = split_film("own", pool="extra")
    view = view_of(
        [job, own_job],
        [r, own],
        parts=[*parts, *own_parts],
        leases=leases,
        pools=[DEFAULT, Pool(id="extra", concurrency=1)],
    )
    # Then its slot goes to its own work
    assert sent(decide(view, NOW, settings())) == [("audio", "extra")]


def test_a_segment_leased_in_a_helper_and_not_dispatched_is_published_there_again() -> None:
    # Given a segment a helper leased a moment ago, its work not yet marked dispatched
    job, r, parts, leases = busy_film()
    lent = msgspec.structs.replace(part_lease(r, "v0000"), pool="extra")
    leases = {**leases, slot_key("extra", 0): lent}
    view = view_of([job], [r], parts=parts, leases=leases, pools=[DEFAULT, EXTRA])

    # Then it is published to the helper again (not leased a second time), and the helper's
    # other slot takes the next segment
    changes = decide(view, NOW, settings())
    assert sent(changes) == [("v0000", "extra"), ("v0001", "extra")]
    assert [c.then.part.name for c in of_kind(changes, Claim)] == ["v0001"]


# ---- the transcoder -----------------------------------------------------------------------------

# an H100's probe: NVDEC and scale_cuda work, NVENC does not exist
H100 = frozenset({"libx264", "libx265", "libsvtav1", "cuda", "cuda:h264", "scale_cuda"})
# a card with NVENC as well
NVENC_CARD = H100 | {"h264_nvenc", "hevc_nvenc"}
H264_1080P = ProbeResult(
    container="mov,mp4,m4a,3gp,3g2,mj2",
    duration=180.0,
    streams=[StreamInfo(index=0, kind="video", codec="h264", width=1920, height=1080)],
)


def test_a_video_segment_on_an_nvdec_node_decodes_on_the_gpu_and_encodes_with_the_cpu() -> None:
    # Given a helper node whose probe offers NVDEC, and a segment of a split x264 job
    profile = get_profile("h264-720p")
    plan = make_plan(H264_1080P, profile, get_container("mp4"))
    segment = Segment(index=3, start=60.0, end=80.0, frames=480)

    # When it chooses the segment's pipeline
    choice = segment_choice(H100, profile, plan, H264_1080P, device="nvidia", preference="auto")

    # Then the GPU decodes and scales, the split's CPU encoder encodes
    assert (choice.name, choice.encoder, choice.hw_decode) == ("nvdec", "libx264", True)
    argv = segment_args("ffmpeg", "/media/film.mp4", "/tmp/v0003.mp4", segment, plan, profile,
                        pipeline=choice)  # fmt: skip
    assert argv[argv.index("-hwaccel") + 1] == "cuda" and argv.index("-hwaccel") < argv.index("-i")
    assert argv[argv.index("-c:v") + 1] == "libx264"
    assert argv[argv.index("-frames:v") + 1] == "480" and argv[argv.index("-ss") + 1] == "60.000000"


def test_a_video_segment_is_never_encoded_with_nvenc() -> None:
    # Given a node that could encode with NVENC: a whole job would
    profile = get_profile("h264-720p")
    plan = make_plan(H264_1080P, profile, get_container("mp4"))
    choice = segment_choice(NVENC_CARD, profile, plan, H264_1080P, device="any", preference="gpu")

    # Then a segment only decodes there: mixing encoders in one output risks a seam
    assert (choice.name, choice.encoder) == ("nvdec", "libx264")
    assert "nvenc: not allowed in this pool" in choice.reason
    # ... and in a CPU pool, or where the operator prefers the CPU, it runs on the CPU
    for device, preference in (("cpu", "auto"), ("nvidia", "cpu")):
        cpu = segment_choice(H100, profile, plan, H264_1080P, device=device, preference=preference)
        assert (cpu.name, cpu.encoder, cpu.hw_decode) == ("cpu", "libx264", False)
