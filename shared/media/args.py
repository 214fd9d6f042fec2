"""Turn a Plan and a Profile into the ffmpeg argv.

Every option and value here comes from a Profile (built by our own code from validated, enum-only
presets) and numbers formatted here; nothing a request sends reaches the argv as free text, except
the source (always the argument of `-i`) and the output path (always last).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import ffmpeg as ffmpeg_python

from shared.media.plan import Plan
from shared.media.probe import is_http
from shared.media.profiles import ContainerSpec, Profile

RECONNECT_ARGS = {"reconnect": 1, "reconnect_on_network_error": 1, "reconnect_delay_max": 5}
# fail (and let the reconnect logic retry) instead of waiting forever on a stalled server
HTTP_RW_TIMEOUT_US = 30_000_000
# bwdif on frames marked interlaced only, one output frame per input frame
DEINTERLACE_FILTER = "bwdif=mode=send_frame:parity=auto:deint=interlaced"
# x265 logs every encode's settings at "info"; errors are what a failed job needs
X265_PARAMS = "log-level=error"
# a fragment per keyframe after an empty moov: playable from the first fragment, no seeking back
FRAGMENTED_MOVFLAGS = "+frag_keyframe+empty_moov+default_base_moof"
OPUS_MAX_BITRATE_PER_CHANNEL = 256_000


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
    kwargs.update(_video_kwargs(plan, profile, container))
    kwargs.update(_audio_kwargs(plan, profile))
    if plan.subtitles:
        kwargs["c:s"] = plan.subtitle_codec
    else:
        kwargs["sn"] = None
    if container.fragmented:
        kwargs["movflags"] = FRAGMENTED_MOVFLAGS
    elif container.faststart:
        kwargs["movflags"] = "+faststart"
    # ffmpeg-python sorts the output options by name, so argv order does not depend on this code
    node = ffmpeg_python.output(*streams, output, **kwargs)
    argv: list[str] = node.compile(cmd=[ffmpeg, *global_args])
    return [str(arg) for arg in argv]


def rate_text(fps: float) -> str:
    """A frame rate as ffmpeg reads it: "30", "2997/100", "1/2" (never an exponent)."""
    rate = Fraction(fps).limit_denominator(1001)
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def _video_kwargs(plan: Plan, profile: Profile, container: ContainerSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if profile.video_codec is None:
        # an audio-only rendition: no video, not even cover art
        kwargs["vn"] = None
    if plan.video == "none":
        return kwargs
    if profile.video_codec == "hevc" and container.muxer == "mp4":
        # Apple players refuse HEVC in MP4 unless it is tagged hvc1 (ffmpeg writes hev1)
        kwargs["tag:v"] = "hvc1"
    if plan.video == "copy":
        return {**kwargs, "c:v": "copy"}
    kwargs.update(
        {
            "c:v": profile.encoder,
            "preset": profile.preset,
            "crf": profile.crf,
            "pix_fmt": profile.pix_fmt,
        }
    )
    if profile.max_video_bitrate is not None:
        kwargs["maxrate"] = profile.max_video_bitrate
        kwargs["bufsize"] = profile.bufsize or 2 * profile.max_video_bitrate
    if profile.video_codec == "h264":
        kwargs["profile:v"] = profile.h264_profile
        kwargs["level:v"] = profile.h264_level
    if profile.encoder == "libx265":
        kwargs["x265-params"] = X265_PARAMS
    if profile.max_fps is not None:
        # a cap: a source below it keeps its own rate
        kwargs["fpsmax"] = rate_text(profile.max_fps)
    filters = [DEINTERLACE_FILTER] if plan.deinterlace else []
    if plan.scale is not None:
        filters.append(f"scale={plan.scale[0]}:{plan.scale[1]}")
    elif plan.cap_size:
        # quotes keep the commas inside min() from splitting the filtergraph
        filters.append(
            f"scale='min(iw,{profile.max_width})':'min(ih,{profile.max_height})'"
            ":force_original_aspect_ratio=decrease:force_divisible_by=2"
        )
    if filters:
        kwargs["vf"] = ",".join(filters)
    return kwargs


def _audio_kwargs(plan: Plan, profile: Profile) -> dict[str, Any]:
    if profile.audio_codec is None:
        return {"an": None}
    if plan.audio == "copy":
        return {"c:a": "copy"}
    if plan.audio != "encode":
        return {}
    channels = plan.audio_channels or profile.audio_channels
    bitrate = profile.audio_bitrate
    if profile.audio_encoder == "libopus":
        # libopus refuses more than 256 kb/s a channel, and a mono source keeps one channel
        bitrate = min(bitrate, OPUS_MAX_BITRATE_PER_CHANNEL * channels)
    return {
        "c:a": profile.audio_encoder,
        "b:a": f"{bitrate // 1000}k" if bitrate % 1000 == 0 else str(bitrate),
        "ac": channels,
    }
