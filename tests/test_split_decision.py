"""Which renditions the planner splits into segments (`services/transcoder/split.py`): pure, no
system started."""

from __future__ import annotations

import msgspec
import pytest

from services.transcoder.config import TranscoderSettings
from services.transcoder.source_copy import copy_args
from services.transcoder.split import why_not_split
from shared.media.plan import Plan
from shared.media.presets import get_profile
from shared.media.probe import ProbeResult

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
