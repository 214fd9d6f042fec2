"""A job's estimate: the wall time and output size of transcoding a probed source with a preset
in a pool, from the plan (copy or encode, per stream) and the pool's recent finished sessions.

Pure: the caller passes the probe, the preset and the pool's history.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from services.statistics.snapshot import RECENT_SESSIONS, Finished
from shared.media import Plan, ProbeResult, Profile, get_container, make_plan, preset_profile
from shared.messages.telemetry import Estimate, EstimateRequest, SpeedBasis

# a preset's own history is used once it has this many finished sessions in the pool
MIN_PRESET_SESSIONS = 3
_END_TO_END = " (media seconds per wall second, from start to stored output)"


def estimate(request: EstimateRequest, history: Sequence[Finished]) -> Estimate:
    """The estimate, with one sentence per figure saying what it rests on.

    `history`: the pool's finished sessions, newest first. Raises SourceError when the preset
    makes nothing from this source (an audio-only preset on a silent video).
    """
    profile = preset_profile(request.preset, request.spec)
    plan = make_plan(request.probe, profile, get_container(request.spec.container))
    duration = request.probe.duration if request.probe.duration else None
    speed, speed_words = speed_basis(history, request.preset, plan.mode, request.pool)
    size, size_words = output_bytes(request.probe, profile, plan, duration)
    if duration is None:
        duration_words = "the probe found no duration: wall time and size are not estimated"
        wall = None
    else:
        duration_words = f"duration {duration:.2f} s, from the probe"
        wall = round(duration / speed.speed, 2)
    return Estimate(
        preset=request.preset,
        pool=request.pool,
        mode=plan.mode,
        video=plan.video,
        audio=plan.audio,
        duration_seconds=duration,
        expected_wall_seconds=wall,
        expected_output_bytes=size,
        speed=speed,
        basis=[duration_words, speed_words, size_words],
        reasons=plan.reasons,
    )


def speed_basis(
    history: Sequence[Finished], preset: str, mode: str, pool: str
) -> tuple[SpeedBasis, str]:
    """The median speed of the pool's recent sessions like this one: the same preset and mode
    when there are enough, else the pool's (same mode when it has any), else real time."""
    same = [f.speed for f in history if f.preset == preset and f.mode == mode][:RECENT_SESSIONS]
    if len(same) >= MIN_PRESET_SESSIONS:
        speed = statistics.median(same)
        words = (
            f"wall time = duration / {speed:.2f}x: the median speed{_END_TO_END} of the last "
            f"{len(same)} finished {mode} sessions with preset {preset} in pool {pool}"
        )
        return SpeedBasis(scope="preset", speed=round(speed, 3), sessions=len(same)), words
    like = [f.speed for f in history if f.mode == mode][:RECENT_SESSIONS]
    anything = [f.speed for f in history][:RECENT_SESSIONS]
    chosen = like or anything
    if chosen:
        speed = statistics.median(chosen)
        which = f"{mode} session(s)" if like else f"session(s), none of them a {mode},"
        words = (
            f"wall time = duration / {speed:.2f}x: the median speed{_END_TO_END} of the last "
            f"{len(chosen)} finished {which} in pool {pool}, any preset (fewer than "
            f"{MIN_PRESET_SESSIONS} with preset {preset})"
        )
        return SpeedBasis(scope="pool", speed=round(speed, 3), sessions=len(chosen)), words
    words = f"no history: assumes real time (1x); pool {pool} has no finished session yet"
    return SpeedBasis(scope="none", speed=1.0, sessions=0), words


def output_bytes(
    probe: ProbeResult, profile: Profile, plan: Plan, duration: float | None
) -> tuple[int | None, str]:
    """The expected output size: a copy is about the source's size; an encode is the video at
    the lower of the source's rate and the preset's cap, plus the audio rate, times duration."""
    if plan.mode == "copy":
        if probe.size:
            return probe.size, f"output size = the source's {probe.size} bytes (a copy)"
        if probe.bit_rate and duration:
            size = round(probe.bit_rate * duration / 8)
            return size, f"output size = the source's {_kbps(probe.bit_rate)} x duration (a copy)"
        return None, "output size unknown: a copy, of a source whose size and rate are unknown"
    video, video_words = _video_rate(probe, profile, plan)
    audio, audio_words = _audio_rate(probe, profile, plan)
    if video is None or audio is None:
        return None, f"output size unknown: {video_words if video is None else audio_words}"
    words = f"output size = ({video_words} + {audio_words}) x duration"
    if duration is None:
        return None, f"output size unknown: {words}, and the duration is unknown"
    return round((video + audio) * duration / 8), words


def _video_rate(probe: ProbeResult, profile: Profile, plan: Plan) -> tuple[int | None, str]:
    if plan.video == "none":
        return 0, "no video"
    source = _source_video_rate(probe)
    if plan.video == "copy":
        if source is None:
            return None, "the copied video's bit rate is unknown"
        return source, f"video copied at {_kbps(source)}"
    cap = profile.max_video_bitrate
    if source is not None and cap is not None:
        rate = min(source, cap)
        return rate, f"video at min(source {_kbps(source)}, preset cap {_kbps(cap)})"
    if cap is not None:
        return cap, f"video at the preset's cap {_kbps(cap)} (the source's rate is unknown)"
    if source is not None:
        return source, f"video at the source's {_kbps(source)} (the preset has no cap)"
    return None, "the source's video bit rate is unknown and the preset has no cap"


def _audio_rate(probe: ProbeResult, profile: Profile, plan: Plan) -> tuple[int | None, str]:
    if plan.audio == "none":
        return 0, "no audio"
    if plan.audio == "encode":
        return profile.audio_bitrate, f"audio at {_kbps(profile.audio_bitrate)}"
    stream = probe.audio()
    if stream is None or stream.bit_rate is None:
        return None, "the copied audio's bit rate is unknown"
    return stream.bit_rate, f"audio copied at {_kbps(stream.bit_rate)}"


def _source_video_rate(probe: ProbeResult) -> int | None:
    """The video stream's rate, else the container's less the other streams' known rates."""
    stream = probe.video()
    if stream is None:
        return None
    if stream.bit_rate is not None:
        return stream.bit_rate
    if probe.bit_rate is None:
        return None
    others = sum(s.bit_rate or 0 for s in probe.streams if s.index != stream.index)
    return max(probe.bit_rate - others, 0) or None


def _kbps(bits_per_second: int) -> str:
    return f"{bits_per_second / 1000:.0f} kb/s"
