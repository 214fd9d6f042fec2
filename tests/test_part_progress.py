"""A split job's progress and ETA: every running part's report folded into the rendition's one
progress record, which every face reads. It measures the whole job (video time encoded over the
source's duration, across parts) and never goes back. Pure folds, no NATS."""

from __future__ import annotations

import itertools

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


def test_speed_and_fps_add_up_over_the_parts_running_now() -> None:
    """Given two parts encoding at 1.5× and 2× real time,
    then the job goes at 3.5× and 84 fps now (speed and fps read on the same basis)."""
    p = run(None, "v0000", 20.0, NOW, speed=1.5, fps=36.0)
    p = run(p, "v0001", 15.0, NOW + 1, speed=2.0, fps=48.0)
    assert p.speed == 3.5 and p.fps == 84.0
    assert p.out_time == 35.0


def test_the_eta_is_what_is_left_at_the_rate_made_since_the_first_part_reported() -> None:
    """Given a first video report at 3 s encoded (2 %) and, 10 s later, 30 s encoded,
    then the job made 3 media seconds a second since its parts began, and its ETA is what is left
    of the source at that rate, half-way towards the running parts' own speed as it nears the end.
    Before 2 % is encoded there is no ETA."""
    first = run(None, "v0000", 2.0, NOW, speed=0.1)
    assert first.measured_from == NOW and first.eta is None

    p = run(first, "v0000", 30.0, NOW + 10, speed=3.0)
    assert p.measured_from == NOW
    rate = 30.0 / 10
    instant_weight = 0.5 * 30.0 / 150.0
    blended = (1 - instant_weight) * rate + instant_weight * 3.0
    assert p.eta == pytest.approx((150.0 - 30.0) / blended)

    audio_only = run(None, "audio", 150.0, NOW, speed=300.0)
    assert audio_only.measured_from is None and audio_only.eta is None


def test_a_split_jobs_eta_holds_steady_as_parts_start_stop_and_run_fewer() -> None:
    """Given a split job run as two transcoders run it: the audio first, then parts v0000 and
    v0001 side by side and v0002 alone (2 then 1 running), each part's ffmpeg reporting its own
    speed near 0 as it starts, a second's gap between one part's end and the next's start,
    when every report and every stored part is folded in as it comes,
    then once 10 % is encoded each ETA is within 45 % of the time really left (or 5 s, near the
    end), and no ETA is more than twice or less than half the one before it."""
    folds, finished_at = a_simulated_split_run()
    etas = [(at, p.eta, p.out_time) for at, p in folds if p.eta is not None]
    assert etas, "the job showed an ETA"
    for at, eta, out_time in etas:
        if out_time >= 0.1 * SPLIT.seconds:
            left = finished_at - at
            assert abs(eta - left) <= max(0.45 * left, 5.0), (at, eta, left)
    for (_, before, _), (at, eta, _) in itertools.pairwise(etas):
        if max(before, eta) > 5.0:
            assert before / 2 <= eta <= before * 2, (at, before, eta)


def a_simulated_split_run() -> tuple[list[tuple[float, Progress]], float]:
    """The folds of SPLIT run on two transcoders at 2.5× once ffmpeg is up (1.5 s), each part
    reporting every second, and when its encoding ended."""
    startup, pace, gap = 1.5, 2.5, 1.0
    free = [NOW + 3.0 + gap, NOW + gap]  # one transcoder ran the audio (3 s) first
    events: list[tuple[float, str, float, float]] = []
    for index, (start, end) in enumerate(SPANS):
        span = (SPLIT.seconds if end is None else end) - start
        slot = min(range(len(free)), key=free.__getitem__)
        began = free[slot]
        done = began + startup + span / pace
        at = began + 1.0
        while at < done:
            encoded = max(0.0, pace * (at - began - startup))
            events.append((at, f"v{index:04d}", encoded, encoded / (at - began)))
            at += 1.0
        events.append((done, f"v{index:04d}", -1.0, 0.0))  # -1: the part is stored
        free[slot] = done + gap
    progress: Progress | None = None
    folds: list[tuple[float, Progress]] = []
    for at, name, encoded, speed in sorted(events):
        if encoded < 0:
            progress = finish(progress, name, at)
        else:
            progress = run(progress, name, encoded, at, speed=speed)
        folds.append((at, progress))
    return folds, max(at for at, *_ in events)


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
    assert p.out_time == 70.0

    p = finish(finish(p, "v0001", NOW + 3), "v0002", NOW + 4)
    assert (p.segments_done, p.done_seconds, p.out_time) == (3, 150.0, 150.0)
    assert p.percent == 99.9 and p.running == {} and p.speed is None and p.eta == 0.0


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
