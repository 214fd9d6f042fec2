"""A split job's progress and ETA: every running part's report folded into the rendition's one
progress record, which every face reads. It measures the whole job (video time encoded over the
source's duration, across parts) and never goes back. Pure folds, no NATS."""

from __future__ import annotations

import msgspec
import pytest

from services.transcoder.part_progress import fold_finished, fold_running
from shared.jobs import state as jobstate
from shared.media import FfmpegProgress
from shared.messages.records import Part, Progress, Rendition, RenditionState, Split

NOW = 1_000_000.0
STALE = 45.0  # 3 × a 15 s ack_wait
SPLIT = Split(
    segments=3, audio=True, seconds=150.0, encoder="libx264", segment_seconds=60.0, at=NOW
)
SPANS = [(0.0, 60.0), (60.0, 120.0), (120.0, None)]


def a_split_rendition(generation: int = 1) -> Rendition:
    r = Rendition(
        key="k1",
        generation=generation,
        source="http://h/film.mkv",
        profile="optimized",
        container="mp4",
        state=RenditionState.RUNNING,
        worker="planner",
        attempt=1,
        created_at=NOW,
        updated_at=NOW,
    )
    return jobstate.split_rendition(r, SPLIT, NOW)


R1 = a_split_rendition()


def part(name: str, attempt: int = 1) -> Part:
    """Part `name` (v0000..v0002, audio) as its transcoder claimed it, attempt `attempt`."""
    kind = "audio" if name == "audio" else "video"
    index = int(name[1:]) if kind == "video" else 0
    start, end = SPANS[index] if kind == "video" else (0.0, None)
    return Part(
        key=f"k1.1.{name}",
        rendition="k1",
        generation=1,
        name=name,
        kind=kind,
        index=index,
        start=start,
        end=end,
        pool="default",
        state=RenditionState.RUNNING,
        attempt=attempt,
        worker="w",
        created_at=NOW,
        updated_at=NOW,
    )


def report(out_time: float, speed: float | None = 1.0, fps: float | None = 24.0) -> FfmpegProgress:
    return FfmpegProgress(
        out_time=out_time, speed=speed, fps=fps, frame=None, total_size=0, done=False
    )


def run(
    previous: Progress | None, name: str, out_time: float, at: float, attempt: int = 1, **kw: float
) -> Progress:
    return fold_running(
        previous, R1, part(name, attempt), report(out_time, **kw), at, stale_after=STALE
    )


def finish(previous: Progress | None, name: str, at: float) -> Progress:
    return fold_finished(previous, R1, part(name), at, stale_after=STALE)


def test_the_first_report_measures_the_whole_job() -> None:
    """Given a 150 s source split in three,
    when the first part reports 30 s encoded,
    then the rendition's progress is 20 % of the whole job, with its three segments, none done."""
    p = run(None, "v0000", 30.0, NOW)
    assert (p.key, p.generation, p.attempt, p.stage) == ("k1", 1, 1, "encoding")
    assert p.out_time == 30.0 and p.percent == 20.0 and p.total == 150.0
    assert (p.segments, p.segments_done, p.done_seconds) == (3, 0, 0.0)
    assert set(p.running) == {"v0000"} and p.running["v0000"].at == NOW


def test_speed_and_fps_add_up_over_the_parts_running_now_and_give_the_eta() -> None:
    """Given two parts encoding at 1.5× and 2× real time,
    then the job goes at 3.5×, and its ETA is what is left of the source over that speed."""
    p = run(None, "v0000", 20.0, NOW, speed=1.5, fps=36.0)
    p = run(p, "v0001", 15.0, NOW + 1, speed=2.0, fps=48.0)
    assert p.speed == 3.5 and p.fps == 84.0
    assert p.out_time == 35.0
    assert p.eta == pytest.approx((150.0 - 35.0) / 3.5)


def test_progress_never_goes_back_when_a_part_starts_again() -> None:
    """Given a part 40 s in, when it is retried (attempt 2 starts from 0),
    then the job's time and percentage stay where they were; a late report of attempt 1 does not
    replace attempt 2's, and ffmpeg's final flush (out_time read as 0) does not lower it."""
    before = run(None, "v0001", 40.0, NOW)
    retried = run(before, "v0001", 0.0, NOW + 20, attempt=2)
    assert retried.out_time == before.out_time and retried.percent == before.percent
    assert retried.running["v0001"].attempt == 2 and retried.running["v0001"].out_time == 0.0

    late = run(retried, "v0001", 45.0, NOW + 21, attempt=1)
    assert late.running["v0001"] == retried.running["v0001"]

    on = run(late, "v0001", 50.0, NOW + 40, attempt=2)
    flushing = run(on, "v0001", 0.0, NOW + 41, attempt=2, speed=None)
    assert flushing.running["v0001"].out_time == 50.0
    assert flushing.out_time == on.out_time and flushing.percent == on.percent


def test_a_part_not_heard_from_for_three_ack_waits_stops_counting() -> None:
    """Given a part whose transcoder died (no report for longer than 3 × ack_wait),
    when another part reports, then the dead one is dropped from the running parts and from the
    speed, and the job's time does not go back."""
    p = run(None, "v0000", 30.0, NOW, speed=2.0)
    p = run(p, "v0001", 10.0, NOW + STALE + 1, speed=1.0)
    assert set(p.running) == {"v0001"}
    assert p.speed == 1.0 and p.out_time == 30.0


def test_a_finished_part_counts_its_whole_span_as_done() -> None:
    """Given two running parts, when the first is stored,
    then its 60 s count as done, one segment of three is done, it leaves the running parts and
    the speed is the other's alone; the last segment counts to the end of the source."""
    p = run(None, "v0000", 58.0, NOW, speed=2.0)
    p = run(p, "v0001", 10.0, NOW + 1, speed=1.0)
    p = finish(p, "v0000", NOW + 2)
    assert (p.segments_done, p.done_seconds) == (1, 60.0)
    assert set(p.running) == {"v0001"} and p.speed == 1.0
    assert p.out_time == 70.0 and p.eta == pytest.approx(80.0)

    p = finish(finish(p, "v0001", NOW + 3), "v0002", NOW + 4)
    assert (p.segments_done, p.done_seconds, p.out_time) == (3, 150.0, 150.0)
    assert p.percent == 99.9 and p.running == {} and p.speed is None and p.eta is None


def test_the_audio_is_not_measured_as_video_time() -> None:
    p = run(None, "audio", 150.0, NOW, speed=300.0)
    assert p.out_time == 0.0 and p.running == {} and p.speed is None
    p = finish(p, "audio", NOW + 1)
    assert (p.segments_done, p.done_seconds) == (0, 0.0)


def test_a_report_past_its_part_counts_no_more_than_its_span() -> None:
    p = run(None, "v0000", 61.5, NOW)
    assert p.running["v0000"].out_time == 60.0 and p.out_time == 60.0


def test_the_join_storing_the_output_is_not_sent_back_to_encoding_by_a_late_report() -> None:
    storing = msgspec.structs.replace(run(None, "v0002", 20.0, NOW), stage="storing")
    assert run(storing, "v0002", 25.0, NOW + 1).stage == "storing"


def test_progress_of_an_earlier_generation_is_started_afresh() -> None:
    old = msgspec.structs.replace(run(None, "v0000", 90.0, NOW), generation=0, percent=60.0)
    p = run(old, "v0000", 15.0, NOW + 1)
    assert p.generation == 1 and p.out_time == 15.0 and p.percent == 10.0


def test_only_a_split_rendition_has_its_progress_folded_from_parts() -> None:
    whole = msgspec.structs.replace(R1, split=None)
    with pytest.raises(ValueError, match="not split"):
        fold_running(None, whole, part("v0000"), report(1.0), NOW, stale_after=STALE)
