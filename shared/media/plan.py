"""Decide, per stream, whether a source is copied or encoded, then build the ffmpeg argv.

The product promise: the default profile is an optimized H.264/AAC stereo, faststart rendition
capped at 1080p; a source that already fits is stream-copied instead of re-encoded.
"""

from __future__ import annotations

from typing import Any

import ffmpeg as ffmpeg_python
import msgspec

from shared.media.probe import ProbeResult, StreamInfo, is_http
from shared.media.profiles import ContainerSpec, Profile

COPYABLE_PIX_FMTS = frozenset({"yuv420p", "yuvj420p"})
# subtitle codecs Matroska carries as they are
MATROSKA_SUBTITLES = frozenset(
    {"subrip", "ass", "ssa", "webvtt", "text", "hdmv_pgs_subtitle", "dvd_subtitle", "dvb_subtitle"}
)
# text subtitles that can be rewritten as SubRip when the container cannot carry them as they are
TEXT_SUBTITLES = frozenset({"subrip", "ass", "ssa", "webvtt", "text", "mov_text"})
RECONNECT_ARGS = {"reconnect": 1, "reconnect_on_network_error": 1, "reconnect_delay_max": 5}
# fail (and let the reconnect logic retry) instead of waiting forever on a stalled server
HTTP_RW_TIMEOUT_US = 30_000_000


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What a transcode does with each kind of stream, and why."""

    video: str  # "copy" | "encode" | "none"
    audio: str  # "copy" | "encode" | "none"
    subtitles: bool  # map every subtitle stream; only for containers that keep them
    scale: tuple[int, int] | None = None  # exact even (w, h) when the known size must change
    cap_size: bool = False  # source size unknown: cap to the profile's box with an expression
    subtitle_codec: str = "copy"  # "copy", or "srt" for text subtitles the muxer cannot carry
    reasons: list[str] = []

    @property
    def mode(self) -> str:
        """Either "copy" (no stream is re-encoded) or "transcode"."""
        copied = self.video in ("copy", "none") and self.audio in ("copy", "none")
        return "copy" if copied else "transcode"


def make_plan(probe: ProbeResult | None, profile: Profile, container: ContainerSpec) -> Plan:
    """Choose copy or encode for video and audio, and whether subtitles are kept.

    Without a probe (probing failed) everything is encoded and the size capped by expression,
    which is always safe.
    """
    if probe is None:
        return Plan(
            video="encode",
            audio="encode",
            subtitles=False,
            cap_size=True,
            reasons=[
                "the source could not be probed: video and audio are encoded, "
                f"capped at {profile.max_width}x{profile.max_height}",
                "the source could not be probed: subtitles are dropped",
            ],
        )
    reasons: list[str] = []
    video, scale, cap_size = _plan_video(probe, profile, reasons)
    audio = _plan_audio(probe.audio(), profile, reasons)
    subtitles, subtitle_codec = _plan_subtitles(probe, container, reasons)
    return Plan(
        video=video,
        audio=audio,
        subtitles=subtitles,
        scale=scale,
        cap_size=cap_size,
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


def _plan_video(
    probe: ProbeResult, profile: Profile, reasons: list[str]
) -> tuple[str, tuple[int, int] | None, bool]:
    stream = probe.video()
    if stream is None:
        reasons.append("the source has no video stream")
        return "none", None, False
    blockers = _video_copy_blockers(stream, _video_bit_rate(probe, stream), profile)
    if not blockers:
        reasons.append(
            f"video {stream.codec} {stream.pix_fmt} {stream.width}x{stream.height} "
            "fits the profile: copied"
        )
        return "copy", None, False
    reasons.extend(blockers)
    if stream.width is None or stream.height is None:
        return "encode", None, True
    target = fit_size(stream.width, stream.height, profile.max_width, profile.max_height)
    if target == (stream.width, stream.height):
        reasons.append(f"{stream.width}x{stream.height} fits")
        return "encode", None, False
    reasons.append(f"{stream.width}x{stream.height} is scaled to {target[0]}x{target[1]}")
    return "encode", target, False


def _video_copy_blockers(stream: StreamInfo, bit_rate: int | None, profile: Profile) -> list[str]:
    blockers: list[str] = []
    if not profile.allow_copy:
        blockers.append(f"profile {profile.name} does not allow stream copy")
    if stream.codec != profile.video_codec:
        blockers.append(f"video {stream.codec or 'of unknown codec'} is not {profile.video_codec}")
    if stream.pix_fmt not in COPYABLE_PIX_FMTS:
        blockers.append(f"video pixel format {stream.pix_fmt or 'unknown'} is not 8-bit 4:2:0")
    if stream.width is None or stream.height is None:
        blockers.append("video size is unknown")
    elif stream.width > profile.max_width or stream.height > profile.max_height:
        blockers.append(
            f"{stream.width}x{stream.height} exceeds {profile.max_width}x{profile.max_height}"
        )
    if bit_rate is not None and bit_rate > profile.max_video_bitrate:
        blockers.append(
            f"video bit rate {bit_rate / 1e6:.1f} Mb/s exceeds "
            f"{profile.max_video_bitrate / 1e6:.1f} Mb/s"
        )
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


def _plan_audio(stream: StreamInfo | None, profile: Profile, reasons: list[str]) -> str:
    if stream is None:
        reasons.append("the source has no audio stream")
        return "none"
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
        return "copy"
    reasons.extend(blockers)
    return "encode"


def _plan_subtitles(
    probe: ProbeResult, container: ContainerSpec, reasons: list[str]
) -> tuple[bool, str]:
    streams = probe.subtitles()
    if not streams:
        return False, "copy"
    if not container.keeps_subtitles:
        reasons.append(f"{container.name} does not keep subtitles: dropped")
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


def build_args(
    ffmpeg: str,
    source: str,
    output: str,
    plan: Plan,
    profile: Profile,
    container: ContainerSpec,
    *,
    progress: bool = True,
    http_source: bool | None = None,
) -> list[str]:
    """The full ffmpeg argv (binary first, output path last) that carries out `plan`."""
    global_args = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error"]
    if progress:
        global_args += ["-progress", "pipe:1", "-nostats", "-stats_period", "0.5"]
    input_kwargs: dict[str, Any] = {}
    if is_http(source) if http_source is None else http_source:
        input_kwargs.update(RECONNECT_ARGS, rw_timeout=HTTP_RW_TIMEOUT_US)
    source_node = ffmpeg_python.input(source, **input_kwargs)

    streams: list[Any] = []
    # "V" skips attached pictures (cover art), which "v" would pick when it comes first
    if plan.video != "none":
        streams.append(source_node["V:0?"])
    if plan.audio != "none":
        streams.append(source_node["a:0?"])
    if plan.subtitles:
        streams.append(source_node["s?"])
    if not streams:
        raise ValueError("the plan maps no stream: the source has neither video nor audio")

    kwargs: dict[str, Any] = {"format": container.muxer}
    kwargs.update(_video_kwargs(plan, profile))
    kwargs.update(_audio_kwargs(plan, profile))
    if plan.subtitles:
        kwargs["c:s"] = plan.subtitle_codec
    else:
        kwargs["sn"] = None
    if container.faststart:
        kwargs["movflags"] = "+faststart"
    node = ffmpeg_python.output(*streams, output, **kwargs)
    argv: list[str] = node.compile(cmd=[ffmpeg, *global_args])
    return [str(arg) for arg in argv]


def _video_kwargs(plan: Plan, profile: Profile) -> dict[str, Any]:
    if plan.video == "copy":
        return {"c:v": "copy"}
    if plan.video != "encode":
        return {}
    kwargs: dict[str, Any] = {
        "c:v": profile.encoder,
        "preset": profile.preset,
        "crf": profile.crf,
        "maxrate": profile.max_video_bitrate,
        "bufsize": profile.bufsize,
        "pix_fmt": profile.pix_fmt,
    }
    if profile.video_codec == "h264":
        kwargs["profile:v"] = profile.h264_profile
        kwargs["level:v"] = profile.h264_level
    if plan.scale is not None:
        kwargs["vf"] = f"scale={plan.scale[0]}:{plan.scale[1]}"
    elif plan.cap_size:
        # quotes keep the commas inside min() from splitting the filtergraph
        kwargs["vf"] = (
            f"scale='min(iw,{profile.max_width})':'min(ih,{profile.max_height})'"
            ":force_original_aspect_ratio=decrease:force_divisible_by=2"
        )
    return kwargs


def _audio_kwargs(plan: Plan, profile: Profile) -> dict[str, Any]:
    if plan.audio == "copy":
        return {"c:a": "copy"}
    if plan.audio != "encode":
        return {}
    bitrate = profile.audio_bitrate
    return {
        "c:a": profile.audio_encoder,
        "b:a": f"{bitrate // 1000}k" if bitrate % 1000 == 0 else str(bitrate),
        "ac": profile.audio_channels,
    }
