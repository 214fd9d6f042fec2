"""Which renditions the planner splits into segments (`services/transcoder/split.py`): pure, no
system started."""

from __future__ import annotations

import msgspec
import pytest

from services.transcoder.config import TranscoderSettings
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
