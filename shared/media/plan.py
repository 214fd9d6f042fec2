"""Decide, per stream, whether a source is copied or encoded, and why.

The product promise: the default profile is an optimized H.264/AAC stereo, faststart rendition
capped at 1080p; a source that already fits is stream-copied instead of re-encoded. Other
profiles (HEVC, AV1, audio-only...) follow the same rules with their own codec and caps.
"""

from __future__ import annotations

import msgspec

from shared.errors import SourceError
from shared.media.probe import ProbeResult, StreamInfo
from shared.media.profiles import COPYABLE_PIX_FMTS, ContainerSpec, Profile

# subtitle codecs Matroska carries as they are
MATROSKA_SUBTITLES = frozenset(
    {"subrip", "ass", "ssa", "webvtt", "text", "hdmv_pgs_subtitle", "dvd_subtitle", "dvb_subtitle"}
)
# text subtitles that can be rewritten as SubRip when the container cannot carry them as they are
TEXT_SUBTITLES = frozenset({"subrip", "ass", "ssa", "webvtt", "text", "mov_text"})
# a source at 30.00003 fps (an average over a variable rate) still fits a 30 fps cap
_FPS_SLACK = 0.01


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What a transcode does with each kind of stream, and why."""

    video: str  # "copy" | "encode" | "none"
    audio: str  # "copy" | "encode" | "none"
    subtitles: bool  # map every subtitle stream; only for containers that keep them
    scale: tuple[int, int] | None = None  # exact even (w, h) when the known size must change
    cap_size: bool = False  # source size unknown: cap to the profile's box with an expression
    deinterlace: bool = False  # run bwdif on frames marked interlaced
    audio_channels: int | None = None  # channels to encode when not the profile's (no upmix)
    subtitle_codec: str = "copy"  # "copy", or "srt" for text subtitles the muxer cannot carry
    reasons: list[str] = []

    @property
    def mode(self) -> str:
        """Either "copy" (no stream is re-encoded) or "transcode"."""
        copied = self.video in ("copy", "none") and self.audio in ("copy", "none")
        return "copy" if copied else "transcode"


def make_plan(probe: ProbeResult | None, profile: Profile, container: ContainerSpec) -> Plan:
    """Choose copy or encode for video and audio, and whether subtitles are kept.

    Without a probe (probing failed) everything the profile makes is encoded and the size
    capped by expression, which is always safe. Raises SourceError (not retryable) when the
    source has none of the streams the profile makes (an audio-only profile on a silent video).
    """
    if probe is None:
        return _unprobed_plan(profile)
    reasons: list[str] = []
    video, scale, cap_size, deinterlace = _plan_video(probe, profile, reasons)
    audio, channels = _plan_audio(probe.audio(), profile, reasons)
    if video == "none" and audio == "none":
        raise _nothing_to_make(profile, reasons)
    subtitles, subtitle_codec = _plan_subtitles(probe, profile, container, reasons)
    return Plan(
        video=video,
        audio=audio,
        subtitles=subtitles,
        scale=scale,
        cap_size=cap_size,
        deinterlace=deinterlace,
        audio_channels=channels,
        subtitle_codec=subtitle_codec,
        reasons=reasons,
    )


def fit_size(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The largest even size within max_width x max_height keeping the aspect; never larger."""
    if width > max_width or height > max_height:
        # integer arithmetic, so the bound side lands exactly on the limit
        if width * max_height >= height * max_width:
            width, height = max_width, height * max_width // width
        else:
            width, height = width * max_height // height, max_height
    return max(2, width - width % 2), max(2, height - height % 2)


def _unprobed_plan(profile: Profile) -> Plan:
    box = f"{profile.max_width}x{profile.max_height}"
    if profile.video_codec is not None and profile.audio_codec is not None:
        what = f"video and audio are encoded, capped at {box}"
    elif profile.video_codec is not None:
        what = f"video is encoded, capped at {box}"
    else:
        what = "audio is encoded"
    return Plan(
        video="encode" if profile.video_codec is not None else "none",
        audio="encode" if profile.audio_codec is not None else "none",
        subtitles=False,
        cap_size=profile.video_codec is not None,
        deinterlace=profile.deinterlace and profile.video_codec is not None,
        reasons=[
            f"the source could not be probed: {what}",
            "the source could not be probed: subtitles are dropped",
        ],
    )


def _nothing_to_make(profile: Profile, reasons: list[str]) -> SourceError:
    if profile.video_codec is None:
        why = f"the source has no audio stream, and profile {profile.name} makes audio only"
    elif profile.audio_codec is None:
        why = f"the source has no video stream, and profile {profile.name} makes video only"
    else:
        why = "the source has neither a video nor an audio stream"
    return SourceError(
        f"Nothing to transcode: {why}.",
        retryable=False,
        details={"profile": profile.name, "reasons": reasons},
    )


def _plan_video(
    probe: ProbeResult, profile: Profile, reasons: list[str]
) -> tuple[str, tuple[int, int] | None, bool, bool]:
    stream = probe.video()
    if stream is None:
        reasons.append("the source has no video stream")
        return "none", None, False, False
    if profile.video_codec is None:
        reasons.append(f"profile {profile.name} makes no video: the video is dropped")
        return "none", None, False, False
    blockers = _video_copy_blockers(stream, _video_bit_rate(probe, stream), profile)
    if not blockers:
        reasons.append(
            f"video {stream.codec} {stream.pix_fmt} {stream.width}x{stream.height} "
            "fits the profile: copied"
        )
        return "copy", None, False, False
    reasons.extend(blockers)
    # bwdif passes progressive frames untouched; skip it only when the source says progressive
    deinterlace = profile.deinterlace and stream.interlaced is not False
    if stream.width is None or stream.height is None:
        return "encode", None, True, deinterlace
    target = fit_size(stream.width, stream.height, profile.max_width, profile.max_height)
    if target == (stream.width, stream.height):
        reasons.append(f"{stream.width}x{stream.height} fits")
        return "encode", None, False, deinterlace
    reasons.append(f"{stream.width}x{stream.height} is scaled to {target[0]}x{target[1]}")
    return "encode", target, False, deinterlace


def _video_copy_blockers(stream: StreamInfo, bit_rate: int | None, profile: Profile) -> list[str]:
    codec = profile.video_codec
    blockers: list[str] = []
    if not profile.allow_copy:
        blockers.append(f"profile {profile.name} does not allow stream copy")
    if stream.codec != codec:
        blockers.append(f"video {stream.codec or 'of unknown codec'} is not {codec}")
    if stream.pix_fmt not in COPYABLE_PIX_FMTS.get(codec or "", frozenset()):
        depth = "8-bit" if codec == "h264" else "8- or 10-bit"
        blockers.append(f"video pixel format {stream.pix_fmt or 'unknown'} is not {depth} 4:2:0")
    if stream.width is None or stream.height is None:
        blockers.append("video size is unknown")
    elif stream.width > profile.max_width or stream.height > profile.max_height:
        blockers.append(
            f"{stream.width}x{stream.height} exceeds {profile.max_width}x{profile.max_height}"
        )
    cap = profile.max_video_bitrate
    if bit_rate is not None and cap is not None and bit_rate > cap:
        blockers.append(f"video bit rate {bit_rate / 1e6:.1f} Mb/s exceeds {cap / 1e6:.1f} Mb/s")
    if profile.max_fps is not None:
        if stream.frame_rate is None:
            blockers.append("video frame rate is unknown")
        elif stream.frame_rate > profile.max_fps + _FPS_SLACK:
            blockers.append(
                f"video frame rate {stream.frame_rate:.3g} fps exceeds {profile.max_fps:.3g} fps"
            )
    if profile.deinterlace and stream.interlaced is not False:
        state = "interlaced" if stream.interlaced else "possibly interlaced"
        blockers.append(f"video is {state} and profile {profile.name} deinterlaces")
    return blockers


def _video_bit_rate(probe: ProbeResult, stream: StreamInfo) -> int | None:
    """The stream's bit rate, else the container's minus the other streams' known rates."""
    if stream.bit_rate is not None:
        return stream.bit_rate
    if probe.bit_rate is None:
        return None
    others = sum(s.bit_rate or 0 for s in probe.streams if s.index != stream.index)
    # Matroska rarely states per-stream rates; the container's is an upper bound for the video
    return max(probe.bit_rate - others, 0) or None


def _plan_audio(
    stream: StreamInfo | None, profile: Profile, reasons: list[str]
) -> tuple[str, int | None]:
    if stream is None:
        reasons.append("the source has no audio stream")
        return "none", None
    if profile.audio_codec is None:
        reasons.append(f"profile {profile.name} makes no audio: the audio is dropped")
        return "none", None
    blockers: list[str] = []
    if not profile.allow_copy:
        blockers.append(f"profile {profile.name} does not allow stream copy")
    if stream.codec != profile.audio_codec:
        blockers.append(f"audio {stream.codec or 'of unknown codec'} is not {profile.audio_codec}")
    if stream.channels is None:
        blockers.append("audio channel count is unknown")
    elif stream.channels > profile.audio_channels:
        blockers.append(f"audio has {stream.channels} channels, more than {profile.audio_channels}")
    if not blockers:
        reasons.append(f"audio {stream.codec} with {stream.channels} channel(s): copied")
        return "copy", None
    reasons.extend(blockers)
    target = profile.audio_channels
    # a surround profile does not upmix: fewer source channels become stereo (or stay mono)
    if target > 2 and stream.channels is not None and stream.channels < target:
        channels = min(stream.channels, 2)
        reasons.append(f"{stream.channels}-channel audio is encoded with {channels}, not upmixed")
        return "encode", channels
    return "encode", None


def _plan_subtitles(
    probe: ProbeResult, profile: Profile, container: ContainerSpec, reasons: list[str]
) -> tuple[bool, str]:
    streams = probe.subtitles()
    if not streams:
        return False, "copy"
    if not container.keeps_subtitles:
        reasons.append(f"{container.name} does not keep subtitles: dropped")
        return False, "copy"
    if not profile.keep_subtitles:
        reasons.append(f"profile {profile.name} does not keep subtitles: dropped")
        return False, "copy"
    codecs = {s.codec or "unknown" for s in streams}
    if codecs <= MATROSKA_SUBTITLES:
        reasons.append(f"subtitles ({', '.join(sorted(codecs))}) copied")
        return True, "copy"
    if codecs <= TEXT_SUBTITLES:
        reasons.append(f"text subtitles ({', '.join(sorted(codecs))}) converted to SubRip")
        return True, "srt"
    reasons.append(f"subtitles ({', '.join(sorted(codecs))}) cannot go into {container.name}")
    return False, "copy"
