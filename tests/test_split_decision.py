"""Which renditions the planner splits into segments (`services/transcoder/split.py`): pure, no
system started."""

from __future__ import annotations

import msgspec
import pytest

from services.transcoder.config import TranscoderSettings
from services.transcoder.source_copy import copy_args
from services.transcoder.split import why_not_cut, why_not_split
from shared.media.plan import Plan
from shared.media.presets import get_profile
from shared.media.probe import ProbeResult
from shared.media.segments import KeyframeIndex

SETTINGS = TranscoderSettings(segment_seconds=60, segment_min_seconds=600)
ENCODE = Plan(video="encode", audio="encode", subtitles=False)
FILM = ProbeResult(duration=7200.0)
PROFILE = get_profile("optimized")


def test_a_long_source_whose_video_is_encoded_is_split() -> None:
    assert why_not_split(ENCODE, FILM, PROFILE, SETTINGS) is None
    at_the_minimum = ProbeResult(duration=600.0)
    assert why_not_split(ENCODE, at_the_minimum, PROFILE, SETTINGS) is None


@pytest.mark.parametrize(
    ("plan", "probe", "profile_changes", "settings_changes", "reason"),
    [
        (ENCODE, FILM, {}, {"segment_seconds": 0}, "splitting is off"),
        (ENCODE, None, {}, {}, "the source's duration is unknown"),
        (ENCODE, ProbeResult(), {}, {}, "the source's duration is unknown"),
        (ENCODE, ProbeResult(duration=599.0), {}, {}, "shorter than the segment minimum"),
        (Plan(video="copy", audio="encode", subtitles=False), FILM, {}, {}, "not re-encoded"),
        (Plan(video="none", audio="encode", subtitles=False), FILM, {}, {}, "not re-encoded"),
        (ENCODE, FILM, {"max_fps": 30.0}, {}, "caps the frame rate"),
        (Plan(video="encode", audio="encode", subtitles=True), FILM, {}, {}, "subtitles"),
    ],
    ids=["off", "no-probe", "no-duration", "short", "remux", "audio-only", "fps-cap", "subtitles"],
)
def test_what_runs_whole_and_why(
    plan: Plan,
    probe: ProbeResult | None,
    profile_changes: dict[str, object],
    settings_changes: dict[str, object],
    reason: str,
) -> None:
    profile = msgspec.structs.replace(PROFILE, **profile_changes)
    settings = msgspec.structs.replace(SETTINGS, **settings_changes)
    found = why_not_split(plan, probe, profile, settings)
    assert found is not None and reason in found


# 2 hours at 25 fps, a keyframe every 2 s
CUTTABLE = KeyframeIndex(
    keyframe_times=[2.0 * n for n in range(3600)], frame_counts=[50] * 3600, last_frame_time=7199.96
)


@pytest.mark.parametrize(
    ("changes", "duration", "reason"),
    [
        ({"continuous": False}, 7200.0, "the source's timestamps are not continuous"),
        ({"leading_frames": 3}, 7200.0, "frames before its first keyframe"),
        ({}, 3600.0, "does not end where its duration says"),
        ({}, 7203.0, "does not end where its duration says"),
    ],
    ids=["discontinuous", "leading-frames", "probe-shorter", "probe-longer"],
)
def test_an_index_that_cannot_be_cut_runs_whole_and_why(
    changes: dict[str, object], duration: float, reason: str
) -> None:
    """Given the keyframe index of a source that would be split, one whose timestamps restart
    (two files joined), show frames before the first keyframe, or end away from the probed
    duration is not cut, and the planner says why; the index as it is, is cut."""
    assert why_not_cut(CUTTABLE, 7200.0) is None
    assert why_not_cut(CUTTABLE, 7200.9) is None  # a second of slack past the last frame
    index = msgspec.structs.replace(CUTTABLE, **changes)
    found = why_not_cut(index, duration)
    assert found is not None and reason in found


def test_a_source_that_cannot_seek_is_copied_with_its_video_and_audio_as_they_are() -> None:
    """The copy reads the source as a transcode does (reconnects, the attempt's input options
    before `-i`) and writes the first video (never cover art) and the audio, unchanged, into
    Matroska; its progress is read, and the output path comes last."""
    url = "http://media.example/Videos/1/live?api_key=k"
    argv = copy_args("ffmpeg", url, "/scratch/r-1-1-source.mkv", input_options={"http_proxy": "P"})
    source_at = argv.index("-i") + 1
    assert argv[source_at] == url and argv[-1] == "/scratch/r-1-1-source.mkv"
    before_input = argv[:source_at]
    assert "-http_proxy" in before_input and "-reconnect" in before_input
    after_input = argv[source_at + 1 :]
    assert after_input == ["-map", "0:V:0", "-map", "0:a?", "-c", "copy", "-f", "matroska"] + [
        "/scratch/r-1-1-source.mkv"
    ]
    assert argv[argv.index("-progress") + 1] == "pipe:1"
