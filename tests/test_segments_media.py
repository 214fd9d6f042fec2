"""Segment-parallel encoding's media core: cut on keyframes, encode segments, join frame-exactly.

The end-to-end cases run the real ffmpeg on small generated clips and check the joined file
with PyAV against the source, frame by frame.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import av
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from shared.media.args import build_args
from shared.media.ffmpeg import run_ffmpeg
from shared.media.plan import make_plan
from shared.media.presets import get_profile
from shared.media.probe import probe
from shared.media.profiles import ContainerSpec, Profile, get_container
from shared.media.segments import (
    KeyframeIndex,
    Segment,
    audio_args,
    concat_list,
    join_args,
    keyframes,
    plan_segments,
    segment_args,
    write_concat_list,
)
from tests.media_clips import ffmpeg_exe, make_clip

# the default H.264 rendition, made to encode the small H.264 test clips it would copy
ENCODE = msgspec.structs.replace(get_profile("optimized"), allow_copy=False)
# x264's "fast" makes B-frames (ultrafast, make_clip's default, makes none)
B_FRAMES = ["-preset", "fast", "-bf", "3"]


def _index(keys: list[float], counts: list[int], last: float) -> KeyframeIndex:
    return KeyframeIndex(keyframe_times=keys, frame_counts=counts, last_frame_time=last)


def test_cuts_fall_on_the_first_keyframe_at_or_after_each_target() -> None:
    """Given keyframes at irregular times, each cut is the first keyframe at least the target
    past the previous cut, and the segments' frame counts add up to every frame."""
    index = _index([0.0, 1.5, 2.2, 3.9, 4.1, 6.5, 7.0], [15, 7, 17, 2, 24, 5, 30], 9.9)
    segments = plan_segments(index, 10.0, target_seconds=2.0)
    assert [(s.start, s.end, s.frames) for s in segments] == [
        (0.0, 2.2, 22),
        (2.2, 6.5, 43),  # 4.1 is only 1.9 s past 2.2
        (6.5, None, 35),
    ]
    assert [s.index for s in segments] == [0, 1, 2]
    assert all(s.start in index.keyframe_times for s in segments)
    assert sum(s.frames for s in segments) == index.frames == 100
    assert [s.duration for s in segments] == [2.2, pytest.approx(4.3), None]


def test_a_tail_shorter_than_half_the_target_joins_the_segment_before() -> None:
    """Given a cut that would leave 0.5 s of a 6.5 s source with a 2 s target, that tail is
    part of the last segment instead; a 1 s tail (half the target) stays its own."""
    index = _index([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [10] * 6 + [5], 6.4)
    tailless = plan_segments(index, 6.5, target_seconds=2.0)
    assert [(s.start, s.end, s.frames) for s in tailless] == [
        (0.0, 2.0, 20),
        (2.0, 4.0, 20),
        (4.0, None, 25),
    ]
    with_tail = plan_segments(index, 7.0, target_seconds=2.0)
    assert [(s.start, s.end) for s in with_tail][-2:] == [(4.0, 6.0), (6.0, None)]
    # without a duration the tail is measured to the last frame
    assert len(plan_segments(index, None, target_seconds=2.0)) == 3


def test_a_source_shorter_than_the_target_is_one_segment() -> None:
    index = _index([0.0, 1.0, 2.0], [10, 10, 10], 2.9)
    assert plan_segments(index, 3.0, target_seconds=60.0) == [
        Segment(index=0, start=0.0, end=None, frames=30)
    ]


def test_sparse_keyframes_make_long_segments_never_a_cut_between_them() -> None:
    """Given keyframes 10 s apart and a 2 s target, every cut is still a keyframe."""
    index = _index([0.0, 10.0, 20.0], [100, 100, 100], 29.9)
    segments = plan_segments(index, 30.0, target_seconds=2.0)
    assert [(s.start, s.end) for s in segments] == [(0.0, 10.0), (10.0, 20.0), (20.0, None)]


def test_the_concat_list_quotes_names_and_refuses_line_breaks() -> None:
    """A quote in a file name is escaped, local names become absolute `file:` paths (never a
    protocol), URLs stay as they are, and every segment but the last has its exact duration."""
    text = concat_list(["/seg/it's 0.mp4", "https://blobs/seg1.mp4"], [2.0000005, None])
    assert text.splitlines() == [
        "ffconcat version 1.0",
        "file 'file:/seg/it'\\''s 0.mp4'",
        "duration 2.000001",
        "file 'https://blobs/seg1.mp4'",
    ]
    with pytest.raises(ValueError, match="line break"):
        concat_list(["/seg/a\nfile '/etc/passwd'"], [None])
    with pytest.raises(ValueError, match="one duration per segment"):
        concat_list(["/seg/a.mp4"], [])


def test_segment_argv_seeks_to_the_keyframe_and_stops_after_the_segments_frames() -> None:
    """The segment's argv seeks the input to its keyframe, encodes video only with the
    profile's encoder settings and stops after exactly its frames."""
    plan = make_plan(None, ENCODE, get_container("mp4"))
    segment = Segment(index=1, start=2.0213330000000003, end=4.0, frames=50)
    argv = segment_args("ffmpeg", "/media/a.ts", "/tmp/s1.mp4", segment, plan, ENCODE)
    assert argv[argv.index("-ss") + 1] == "2.021333" and argv.index("-ss") < argv.index("-i")
    for name, value in [("-c:v", "libx264"), ("-crf", "23"), ("-frames:v", "50"), ("-f", "mp4")]:
        assert argv[argv.index(name) + 1] == value, argv
    assert {"-an", "-sn"} <= set(argv) and "-c:a" not in argv and argv[-1] == "/tmp/s1.mp4"
    with pytest.raises(ValueError, match="only an encoded video"):
        segment_args(
            "ffmpeg",
            "/a.mp4",
            "/s.mp4",
            segment,
            msgspec.structs.replace(plan, video="copy"),
            ENCODE,
        )


def _vfr_clip(path: Path) -> Path:
    """3.5 s at 24 fps then 3.5 s at 30 fps (189 frames), keyframes every 20 frames, with sound."""
    parts = [f"testsrc2=size=320x180:rate={rate}:duration=3.5" for rate in (24, 30)]
    argv = [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", parts[0], "-f", "lavfi", "-i"]
    argv += [parts[1], "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=7"]
    argv += ["-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-map", "2:a"]
    argv += ["-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast", "-g", "20"]
    argv += ["-c:a", "aac", str(path)]
    return _checked(path, argv)


def test_a_source_whose_timestamps_restart_is_indexed_as_not_continuous(tmp_path: Path) -> None:
    """Given two 3 s MPEG-TS clips joined byte for byte (`cat a.ts b.ts`), whose video times
    restart at the join, the index says its timestamps are not continuous; each clip alone,
    a clip with B-frames (presentation times reordered) and a VFR clip say they are."""
    first = make_clip(tmp_path / "first.ts", seconds=3, fps=25, container="mpegts")
    second = make_clip(tmp_path / "second.ts", seconds=3, fps=25, container="mpegts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    reordered = [
        make_clip(tmp_path / f"b-frames.{kind}", seconds=3, container=kind, extra_args=B_FRAMES)
        for kind in ("mpegts", "mkv")
    ]
    assert all(_has_b_frames(clip) for clip in reordered)

    assert not keyframes(str(joined)).continuous
    for clip in [first, *reordered, _vfr_clip(tmp_path / "vfr.mkv")]:
        assert keyframes(str(clip)).continuous, clip


def test_the_index_ends_near_the_probed_duration_of_a_whole_source(tmp_path: Path) -> None:
    """Given a 4 s clip, its index's last frame agrees with the probed duration, and not with
    one 2 s longer or shorter (a frame's length and a second either side are slack)."""
    clip = make_clip(tmp_path / "clip.mp4", seconds=4, fps=25, extra_args=B_FRAMES)
    index, duration = keyframes(str(clip)), probe(str(clip)).duration
    assert duration is not None and index.ends_near(duration)
    assert not index.ends_near(duration + 2.0) and not index.ends_near(duration - 2.0)


def _checked(path: Path, argv: list[str]) -> Path:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return path


async def _run(argv: list[str]) -> None:
    result = await run_ffmpeg(argv)
    assert result.returncode == 0, result.stderr_tail


async def _split_encode_join(
    source: Path,
    out_dir: Path,
    profile: Profile,
    container: ContainerSpec,
    *,
    target_seconds: float,
) -> tuple[Path, list[Segment]]:
    """Encode `source` the segmented way: index, plan, each segment, the audio, the join."""
    plan = make_plan(probe(str(source)), profile, container)
    segments = plan_segments(
        keyframes(str(source)), probe(str(source)).duration, target_seconds=target_seconds
    )
    files = []
    for segment in segments:
        part = out_dir / f"segment-{segment.index}.mp4"
        await _run(segment_args(ffmpeg_exe(), str(source), str(part), segment, plan, profile))
        files.append(str(part))
    audio = out_dir / f"audio{container.extension}"
    await _run(audio_args(ffmpeg_exe(), str(source), str(audio), plan, profile, container))
    listing = write_concat_list(
        out_dir / "segments.ffconcat", files, [s.duration for s in segments]
    )
    output = out_dir / f"joined{container.extension}"
    await _run(
        join_args(
            ffmpeg_exe(),
            str(listing),
            str(audio),
            str(output),
            container,
            video_start=segments[0].start,
        )
    )
    return output, segments


def _frame_times(path: Path) -> list[float]:
    """Every decoded video frame's presentation time, from the container's start."""
    with av.open(str(path)) as clip:
        origin = (clip.start_time or 0) / 1_000_000
        return [float(f.time) - origin for f in clip.decode(video=0) if f.time is not None]


def _audio_seconds(path: Path) -> float:
    with av.open(str(path)) as clip:
        rate = clip.streams.audio[0].codec_context.sample_rate
        return sum(f.samples for f in clip.decode(audio=0)) / rate


def _has_b_frames(path: Path) -> bool:
    with av.open(str(path)) as clip:
        return any(
            p.pts is not None and p.dts is not None and p.pts != p.dts for p in clip.demux(video=0)
        )


@pytest.mark.parametrize(
    ("case", "output"),
    [("constant", "mp4"), ("constant", "mkv"), ("b-frames", "mp4"), ("vfr", "mp4"), ("vfr", "mkv")],
)
async def test_a_segmented_encode_has_every_source_frame_at_its_own_time(
    case: str, output: str, tmp_path: Path
) -> None:
    """Given a 7 s clip split into segments of about 2 s, when each segment is encoded apart,
    the audio once and the parts joined, then the output has exactly the source's frames at the
    source's times (no frame repeated or lost at a join), plays through, and has its audio."""
    if case == "vfr":
        source = _vfr_clip(tmp_path / "source.mkv")
    else:
        extra = B_FRAMES if case == "b-frames" else []
        source = make_clip(tmp_path / "source.mp4", seconds=7, fps=25, extra_args=extra)
    assert _has_b_frames(source) == (case == "b-frames")
    container = get_container(output)

    joined, segments = await _split_encode_join(
        source, tmp_path, ENCODE, container, target_seconds=2.0
    )

    assert len(segments) >= 3
    before, after = _frame_times(source), _frame_times(joined)
    assert len(after) == len(before) == sum(s.frames for s in segments)
    assert after == pytest.approx(before, abs=0.002)
    assert _has_b_frames(joined)  # the rendition's own B-frames went through the joins
    last_frame = before[-1] - before[-2]
    source_seconds, joined_seconds = probe(str(source)).duration, probe(str(joined)).duration
    assert source_seconds is not None and joined_seconds is not None
    assert joined_seconds == pytest.approx(source_seconds, abs=last_frame)
    assert _audio_seconds(joined) == pytest.approx(after[-1] + last_frame, abs=0.1)
    with av.open(str(joined)) as clip:
        assert clip.format.name.startswith("mov" if output == "mp4" else "matroska")
        assert clip.streams.audio[0].codec_context.codec.canonical_name == "aac"


async def test_the_joined_file_is_about_the_size_of_a_whole_file_encode(tmp_path: Path) -> None:
    """Given 20 s of 720p with motion, the segmented encode (five 4 s segments) is within 3 %
    of the size of one whole-file encode with the same settings."""
    source = tmp_path / "source.mp4"
    picture = "testsrc2=size=1280x720:rate=24:duration=20,rotate=a=t/3:c=black"
    argv = [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", picture, "-f", "lavfi", "-i"]
    argv += ["sine=frequency=440:sample_rate=48000:duration=20", "-c:v", "libx264"]
    argv += ["-preset", "ultrafast", "-g", "48", "-c:a", "aac", str(source)]
    _checked(source, argv)
    container = get_container("mp4")
    parts = tmp_path / "parts"
    parts.mkdir()

    joined, segments = await _split_encode_join(
        source, parts, ENCODE, container, target_seconds=4.0
    )
    whole = tmp_path / "whole.mp4"
    plan = make_plan(probe(str(source)), ENCODE, container)
    await _run(build_args(ffmpeg_exe(), str(source), str(whole), plan, ENCODE, container))

    assert len(segments) == 5
    ratio = joined.stat().st_size / whole.stat().st_size
    print(f"segmented/whole size: {ratio:.4f}")
    assert ratio == pytest.approx(1.0, abs=0.03)
    assert len(_frame_times(joined)) == len(_frame_times(source)) == 480


async def test_a_frame_rate_cap_gives_the_frames_of_a_whole_file_encode(tmp_path: Path) -> None:
    """Given the 24/30 fps clip and a profile capped at 20 fps, the segmented encode has the
    frames a whole-file encode has (each segment stops at its end time, not a frame count)."""
    source = _vfr_clip(tmp_path / "source.mkv")
    capped = msgspec.structs.replace(ENCODE, max_fps=20.0)
    container = get_container("mp4")

    joined, _ = await _split_encode_join(source, tmp_path, capped, container, target_seconds=2.0)
    whole = tmp_path / "whole.mp4"
    plan = make_plan(probe(str(source)), capped, container)
    await _run(build_args(ffmpeg_exe(), str(source), str(whole), plan, capped, container))

    expected = _frame_times(whole)
    assert len(expected) < 189  # the cap dropped frames
    # the cuts (keyframes at 2.5 s and 4.7 s) lie on the 20 fps grid, so the times match too
    assert _frame_times(joined) == pytest.approx(expected, abs=0.002)


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    """A real HTTP server giving the files of tmp_path (Range-capable), at the returned base URL."""

    async def files(request: web.Request) -> web.FileResponse:
        return web.FileResponse(tmp_path / request.match_info["name"])

    app = web.Application()
    app.router.add_get("/{name}", files)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_segment_is_read_from_an_http_source_by_range(served: str, tmp_path: Path) -> None:
    """Given a source with B-frames behind an HTTP server, the keyframe index read over HTTP is
    the local one, and a middle segment encoded from the URL has exactly that segment's frames."""
    source = make_clip(tmp_path / "source.mp4", seconds=7, fps=25, extra_args=B_FRAMES)
    url = f"{served}/source.mp4"
    index = await asyncio.to_thread(keyframes, url)
    assert index == keyframes(str(source))
    segment = plan_segments(index, 7.0, target_seconds=2.0)[1]
    plan = make_plan(probe(str(source)), ENCODE, get_container("mp4"))
    part = tmp_path / "segment-1.mp4"

    await _run(segment_args(ffmpeg_exe(), url, str(part), segment, plan, ENCODE))

    assert segment.end is not None
    expected = [t - segment.start for t in _frame_times(source) if segment.start <= t < segment.end]
    assert len(expected) == segment.frames == 50
    assert _frame_times(part) == pytest.approx(expected, abs=0.002)
