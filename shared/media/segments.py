"""Split one encode into segments cut on the source's keyframes, and join them frame-exactly.

The timeline is the one ffmpeg's input `-ss` reads: seconds from the container's start time.
`keyframes` indexes the source's video packets (demuxed, not decoded), `plan_segments` chooses
the cuts, `segment_args` encodes exactly one segment's frames, `audio_args` the audio (and
subtitles) once, whole, and `join_args` concatenates the segments by stream copy with that audio
into the final container.

Segments are encoded into MP4: it keeps each packet's decode and presentation times exactly in
the encoder's time base (Matroska rounds to milliseconds, MPEG-TS to 1/90000 s and carries no
AV1), it carries every codec a profile makes, and it is the concat demuxer's everyday input.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import av
import av.error
import msgspec
from av.container import InputContainer

from shared.errors import SourceError
from shared.media.args import FRAGMENTED_MOVFLAGS, build_args
from shared.media.pipelines import PipelineChoice
from shared.media.plan import Plan
from shared.media.probe import _source_error, is_http
from shared.media.profiles import ContainerSpec, Profile

DEFAULT_SEGMENT_SECONDS = 60.0
# plain MP4 (moov at the end: nobody streams an intermediate file)
SEGMENT_CONTAINER = ContainerSpec(name="segment", muxer="mp4", mime="video/mp4", extension=".mp4")
_MICROS = 1_000_000
# a larger step forward between two video packets' decode times is a break, not a pause
MAX_DECODE_GAP = 10.0
END_SLACK = 1.0  # seconds the last frame may fall from the probed duration, past its own length


class KeyframeIndex(msgspec.Struct, frozen=True, kw_only=True):
    """Where a source's video can be cut: its keyframes and the frames between them.

    Times are seconds on the `-ss` timeline (from the container's start time).
    """

    keyframe_times: list[float]  # presentation times of the keyframes, ascending
    # frames shown from each keyframe up to the next one (the last: to the end)
    frame_counts: list[int]
    leading_frames: int = 0  # frames shown before the first keyframe: no decoder can show them
    last_frame_time: float | None = None  # presentation time of the last frame shown
    # decode times, in packet order, never go back nor jump past MAX_DECODE_GAP; a source
    # joined from two files (`cat a.ts b.ts`) restarts them, and its sorted times lie
    continuous: bool = True

    @property
    def frames(self) -> int:
        """Frames from the first keyframe to the end: what the segments encode in all."""
        return sum(self.frame_counts)

    def ends_near(self, duration: float) -> bool:
        """Whether the last frame falls where the probe says the source ends: within END_SLACK
        of it, past the frame's own length (the index's mean frame length)."""
        if self.last_frame_time is None or not self.keyframe_times:
            return True
        span = self.last_frame_time - self.keyframe_times[0]
        frame_seconds = span / max(self.frames - 1, 1)
        late = duration - self.last_frame_time
        return -END_SLACK <= late <= END_SLACK + frame_seconds


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    """One part of a source's video, from a keyframe up to the next segment's keyframe."""

    index: int
    start: float  # seconds on the `-ss` timeline; a keyframe's presentation time
    end: float | None  # the next segment's start; None for the last segment
    frames: int  # video frames shown in [start, end)

    @property
    def duration(self) -> float | None:
        """Seconds from this segment's start to the next one's; None for the last segment."""
        return None if self.end is None else self.end - self.start


def keyframes(
    source: str, *, input_options: Mapping[str, str] | None = None, timeout: float = 15.0
) -> KeyframeIndex:
    """Index the keyframes of `source`'s video (local path or http(s) URL) by demuxing every
    video packet, without decoding. Blocks, and reads the whole source: run it in a thread.

    `input_options` are libavformat's (shared.media.inputs). Raises SourceError as `probe` does,
    and a non-retryable one when the source has no video or no keyframe.
    """
    try:
        container = av.open(
            source,
            mode="r",
            options=dict(input_options or {}),
            timeout=(timeout, timeout),
            metadata_errors="replace",
        )
    except av.error.FFmpegError as exc:
        raise _source_error(exc, source, timeout) from exc
    assert isinstance(container, InputContainer)  # mode="r"
    with container:
        times, key_times, continuous = _packet_times(container)
    return _index(times, key_times, continuous=continuous)


def plan_segments(
    index: KeyframeIndex, duration: float | None, *, target_seconds: float = DEFAULT_SEGMENT_SECONDS
) -> list[Segment]:
    """Cut at the first keyframe at or after `target_seconds` past the previous cut.

    Every segment but the last is at least `target_seconds` long; a last one shorter than half of
    it joins the one before, so no segment is shorter than half the target unless the source is.
    `duration`: the source's (probe); None measures the tail up to the last frame.
    """
    if target_seconds <= 0:
        raise ValueError("target_seconds must be positive")
    if not index.keyframe_times:
        raise ValueError("the index has no keyframe to cut at")
    cuts = [0]  # positions in index.keyframe_times
    for position, time in enumerate(index.keyframe_times):
        if time >= index.keyframe_times[cuts[-1]] + target_seconds:
            cuts.append(position)
    end_of_source = duration if duration is not None else index.last_frame_time
    if len(cuts) > 1 and end_of_source is not None:
        tail = end_of_source - index.keyframe_times[cuts[-1]]
        if tail < target_seconds / 2:
            cuts.pop()
    bounds = [*cuts, len(index.keyframe_times)]
    return [
        Segment(
            index=number,
            start=index.keyframe_times[first],
            end=index.keyframe_times[after] if after < len(index.keyframe_times) else None,
            frames=sum(index.frame_counts[first:after]),
        )
        for number, (first, after) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]


def segment_args(
    ffmpeg: str,
    source: str,
    output: str,
    segment: Segment,
    plan: Plan,
    profile: Profile,
    *,
    progress: bool = True,
    http_source: bool | None = None,
    pipeline: PipelineChoice | None = None,
    threads: int = 0,
    input_options: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv that encodes exactly `segment`'s frames of `source`, video only, into an MP4
    (SEGMENT_CONTAINER) at `output`, with the encoder settings `build_args` gives the plan.

    Input seeking lands on the segment's keyframe (ffmpeg decodes from the keyframe at or before
    it and drops what precedes `start`); `-frames:v` stops after the segment's last frame (under a
    frame-rate cap, whose frames are not the source's, output `-t` stops at its end). Each
    segment starts with a key frame and closes its GOPs, so it decodes without the one before.
    ValueError when the plan does not encode video.
    """
    if plan.video != "encode":
        raise ValueError(f"only an encoded video is split into segments, not {plan.video!r}")
    options = dict(input_options or {})
    if segment.start > 0:
        options["ss"] = _seconds_text(segment.start)
    video_only = msgspec.structs.replace(plan, audio="none", subtitles=False)
    argv = build_args(
        ffmpeg,
        source,
        output,
        video_only,
        profile,
        SEGMENT_CONTAINER,
        progress=progress,
        http_source=http_source,
        pipeline=pipeline,
        threads=threads,
        input_options=options,
    )
    extra = ["-flags", "+cgop", "-an"]
    if profile.max_fps is None:
        extra += ["-frames:v", str(segment.frames)]
    elif segment.duration is not None:
        # a frame-rate cap changes how many frames come out: stop at the segment's end instead
        extra += ["-t", _seconds_text(segment.duration)]
    return [*argv[:-1], *extra, argv[-1]]


def audio_args(
    ffmpeg: str,
    source: str,
    output: str,
    plan: Plan,
    profile: Profile,
    container: ContainerSpec,
    *,
    progress: bool = True,
    http_source: bool | None = None,
    threads: int = 0,
    input_options: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv that encodes (or copies) the whole source's audio, and the subtitles the plan
    keeps, exactly as `build_args` would, without video, into `output` in `container`'s muxer.

    ValueError when the plan keeps neither audio nor subtitles: the join then needs no such file.
    """
    rest = msgspec.structs.replace(plan, video="none")
    plain = msgspec.structs.replace(container, faststart=False, fragmented=False)
    return build_args(
        ffmpeg,
        source,
        output,
        rest,
        profile,
        plain,
        progress=progress,
        http_source=http_source,
        threads=threads,
        input_options=input_options,
    )


def concat_list(segment_files: Sequence[str], segment_durations: Sequence[float | None]) -> str:
    """The concat demuxer's script: each segment file, with its exact duration where known.

    Local paths are made absolute behind `file:` so no name reads as a protocol or an option.
    ValueError for a name the script cannot hold (a line break) or mismatched lengths.
    """
    if len(segment_files) != len(segment_durations):
        raise ValueError("one duration per segment file (None for the last)")
    if not segment_files:
        raise ValueError("no segment to join")
    lines = ["ffconcat version 1.0"]
    for name, duration in zip(segment_files, segment_durations, strict=True):
        if "\n" in name or "\r" in name or "\0" in name:
            raise ValueError(f"a segment file name cannot hold a line break: {name!r}")
        target = name if is_http(name) else "file:" + os.path.abspath(name)
        # inside single quotes everything is literal; a quote closes, escapes and reopens
        lines.append("file '" + target.replace("'", "'\\''") + "'")
        if duration is not None:
            lines.append(f"duration {duration:.6f}")
    return "\n".join(lines) + "\n"


def write_concat_list(
    path: str | Path, segment_files: Sequence[str], segment_durations: Sequence[float | None]
) -> Path:
    """Write `concat_list` to `path` (blocking, small) and return the path."""
    out = Path(path)
    out.write_text(concat_list(segment_files, segment_durations), encoding="utf-8")
    return out


def join_args(
    ffmpeg: str,
    concat_file: str,
    audio_file: str | None,
    output: str,
    container: ContainerSpec,
    *,
    video_start: float = 0.0,
    progress: bool = True,
) -> list[str]:
    """The argv that joins the segments listed in `concat_file` (`write_concat_list`) by stream
    copy, adds the audio file's streams (`audio_args`; None for none) and writes `output` in
    `container`, moov first for MP4 as `build_args` does.

    `video_start`: the first segment's start, so the video keeps its place beside the audio.
    """
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error"]
    if progress:
        argv += ["-progress", "pipe:1", "-nostats", "-stats_period", "0.5"]
    argv += ["-f", "concat", "-safe", "0"]
    if video_start > 0:
        argv += ["-itsoffset", _seconds_text(video_start)]
    argv += ["-i", concat_file]
    maps = ["-map", "0:v:0"]
    if audio_file is not None:
        argv += ["-i", audio_file]
        # the source's metadata and chapters come with its audio (a segment holds a slice)
        maps += ["-map", "1", "-map_metadata", "1", "-map_chapters", "1"]
    argv += maps
    argv += ["-c", "copy"]
    if container.fragmented:
        argv += ["-movflags", FRAGMENTED_MOVFLAGS]
    elif container.faststart:
        argv += ["-movflags", "+faststart"]
    return [*argv, "-f", container.muxer, output]


def _packet_times(container: InputContainer) -> tuple[list[float], list[float], bool]:
    """Presentation times (on the `-ss` timeline) of every shown video packet, of the
    keyframes among them, and whether the decode times run on without a break."""
    # "V:0" in build_args: the first video stream that is not an attached picture
    stream = next(
        (
            s
            for s in container.streams.video
            if not s.disposition & av.stream.Disposition.attached_pic
        ),
        None,
    )
    if stream is None or stream.time_base is None:
        raise _no_video("The source has no video stream to split into segments.")
    origin = (container.start_time or 0) / _MICROS
    times: list[float] = []
    key_times: list[float] = []
    continuous = True
    last_decode: float | None = None
    for packet in container.demux(stream):
        if packet.dts is not None and packet.size:
            # decode order is packet order: B-frames reorder presentation times, never these
            decode = float(packet.dts * stream.time_base)
            if last_decode is not None and not 0 <= decode - last_decode <= MAX_DECODE_GAP:
                continuous = False
            last_decode = decode
        stamp = packet.pts if packet.pts is not None else packet.dts
        # the flush packet has no time; an edit list's discarded packets are never shown
        if stamp is None or packet.size == 0 or packet.is_discard:
            continue
        time = float(stamp * stream.time_base) - origin
        times.append(time)
        if packet.is_keyframe:
            key_times.append(time)
    return times, key_times, continuous


def _index(times: list[float], key_times: list[float], *, continuous: bool) -> KeyframeIndex:
    if not key_times:
        raise _no_video("The source's video has no keyframe to cut at.")
    times.sort()
    keys = sorted(set(key_times))
    counts = [0] * len(keys)
    leading = 0
    position = -1
    for time in times:
        while position + 1 < len(keys) and time >= keys[position + 1]:
            position += 1
        if position < 0:
            leading += 1
        else:
            counts[position] += 1
    return KeyframeIndex(
        keyframe_times=keys,
        frame_counts=counts,
        leading_frames=leading,
        last_frame_time=times[-1],
        continuous=continuous,
    )


def _no_video(message: str) -> SourceError:
    return SourceError(message, retryable=False)


def _seconds_text(seconds: float) -> str:
    """Seconds as ffmpeg reads them, rounded down to its microseconds: never past a keyframe."""
    micros = math.floor(seconds * _MICROS + 1e-3)
    return f"{micros // _MICROS}.{micros % _MICROS:06d}"
