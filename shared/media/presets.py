"""Presets: structured, validated descriptions of a rendition, and the Profiles made from them.

A preset holds only enum values, bounded numbers and booleans. Shared code (`preset_profile`,
then `shared.media.args`) maps them onto encoder names and ffmpeg options, so no preset, field or
request can put free text into ffmpeg's argv.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal, NoReturn

import msgspec
from msgspec import Meta

from shared.errors import BadRequest
from shared.media.profiles import CONTAINERS, Profile

Speed = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
]

H264Profile = Literal["baseline", "main", "high"]
H264Level = Literal[
    "1.0", "1.1", "1.2", "1.3", "2.0", "2.1", "2.2", "3.0", "3.1", "3.2",
    "4.0", "4.1", "4.2", "5.0", "5.1", "5.2", "6.0", "6.1", "6.2",
]  # fmt: skip
# VideoSpec fields added later: left out of a fingerprint while unset, so a spec that does not
# use them keeps the fingerprint (and the shared renditions) it had before they existed.
_LATER_VIDEO_FIELDS = ("profile", "level", "keyframe_interval", "buffer_kbps")

# x264/x265 name their speed/quality trade-offs; SVT-AV1 numbers them (higher is faster). This
# SVT-AV1 maps M12/M13 onto M11 and calls M10+ "for automation tooling", so the scale ends at 11.
SVT_AV1_PRESETS: dict[str, int] = {
    "ultrafast": 11,
    "superfast": 10,
    "veryfast": 9,
    "faster": 8,
    "fast": 7,
    "medium": 6,
    "slow": 5,
    "slower": 4,
    "veryslow": 3,
}
VIDEO_ENCODERS = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus"}
# CRF range per codec: x264/x265 stop at 51; SVT-AV1 below 10 made streams dav1d refused
CRF_RANGE = {"h264": (1, 51), "hevc": (1, 51), "av1": (10, 63)}
MAX_KBPS = {"h264": 200_000, "hevc": 200_000, "av1": 100_000}  # SVT-AV1 refuses more
OPUS_MAX_KBPS_PER_CHANNEL = 256  # libopus refuses more
_FINGERPRINT_VERSION = b"vidmesh-preset-v1\n"


# Specs travel inside records and work items: they take unknown fields (a newer writer's) in
# stride. Requests are checked strictly with the *Input subclasses below.
class VideoSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The video of a rendition: codec, quality (CRF), caps on bit rate, size and frame rate."""

    codec: Annotated[
        Literal["h264", "hevc", "av1"],
        Meta(description="h264 (x264), hevc (x265, tagged hvc1 in mp4) or av1 (SVT-AV1)"),
    ]
    quality: Annotated[
        int,
        Meta(ge=1, le=63, description="CRF, lower is better: 1-51 for h264/hevc, 10-63 for av1"),
    ] = 23
    max_bitrate_kbps: Annotated[
        Annotated[int, Meta(ge=100, le=200_000)] | None,
        Meta(description="Peak kb/s, at most 100000 for av1; null: no cap"),
    ] = None
    max_height: Annotated[
        int,
        Meta(
            ge=144,
            le=4320,
            description="Height cap; the width cap is its 16:9 width. Never upscales.",
        ),
    ] = 1080
    max_fps: Annotated[
        Annotated[float, Meta(gt=0, le=240)] | None,
        Meta(description="Frame-rate cap; a slower source keeps its rate. null: no cap"),
    ] = None
    speed: Annotated[
        Speed,
        Meta(description="Encoder speed: x264/x265 preset names, mapped onto SVT-AV1 11..3"),
    ] = "veryfast"
    deinterlace: Annotated[
        bool,
        Meta(description="Deinterlace (bwdif) frames marked interlaced; progressive ones pass"),
    ] = False
    profile: Annotated[
        H264Profile | None,
        Meta(description="H.264 profile (h264 only); null: high"),
    ] = None
    level: Annotated[
        H264Level | None,
        Meta(description="H.264 level (h264 only); null: the lowest that holds max_height"),
    ] = None
    keyframe_interval: Annotated[
        Annotated[int, Meta(ge=1, le=1000)] | None,
        Meta(description="Frames from one keyframe to the next at most; null: the encoder's"),
    ] = None
    buffer_kbps: Annotated[
        Annotated[int, Meta(ge=100, le=400_000)] | None,
        Meta(description="Rate-control buffer in kb with max_bitrate_kbps; null: twice the cap"),
    ] = None


class AudioSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The audio of a rendition: codec, channel count (never upmixed from fewer) and bit rate."""

    codec: Literal["aac", "opus"] = "aac"
    channels: Annotated[
        Literal[1, 2, 6],
        Meta(description="1, 2 or 6 (5.1); a source with fewer channels is not upmixed to 5.1"),
    ] = 2
    bitrate_kbps: Annotated[
        int, Meta(ge=32, le=512, description="Bit rate in kb/s; opus takes at most 256 a channel")
    ] = 160


class PresetSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A rendition preset: container, video, audio, subtitles and when to copy instead of encode."""

    container: Annotated[
        Literal["mp4", "fmp4", "mkv", "webm", "ts", "m4a"],
        Meta(
            description="mp4 (faststart), fmp4 (fragmented MP4, uploaded while it is written) "
            "and mkv: h264/hevc/av1 with aac/opus; webm: av1 with opus; ts (MPEG-TS, uploaded "
            "while it is written): h264/hevc with aac; m4a: aac audio only"
        ),
    ] = "mp4"
    video: Annotated[VideoSpec | None, Meta(description="null: an audio-only rendition")] = (
        VideoSpec(codec="h264")
    )
    audio: Annotated[AudioSpec | None, Meta(description="null: a rendition without sound")] = (
        AudioSpec()
    )
    subtitles: Annotated[bool, Meta(description="Keep the source's subtitles (mkv only)")] = False
    copy_when_compatible: Annotated[
        bool, Meta(description="Copy a source stream that fits (same codec, within every cap)")
    ] = True


class VideoSpecInput(VideoSpec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The video of a rendition, as a request gives it (unknown fields are refused)."""


class AudioSpecInput(AudioSpec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The audio of a rendition, as a request gives it (unknown fields are refused)."""


class PresetSpecInput(PresetSpec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A rendition preset, as a request gives it (unknown fields are refused)."""

    video: Annotated[VideoSpecInput | None, Meta(description="null: an audio-only rendition")] = (
        VideoSpecInput(codec="h264")
    )
    audio: Annotated[AudioSpecInput | None, Meta(description="null: a rendition without sound")] = (
        AudioSpecInput()
    )


DEFAULT_PRESET = "optimized"

BUILTIN_PRESETS: dict[str, PresetSpec] = {
    # exactly the original default: what Streamyfin's POST /optimize-version gets
    "optimized": PresetSpec(video=VideoSpec(codec="h264", max_bitrate_kbps=8000)),
    "h264-1080p": PresetSpec(video=VideoSpec(codec="h264", max_bitrate_kbps=8000)),
    "h264-720p": PresetSpec(video=VideoSpec(codec="h264", max_bitrate_kbps=4000, max_height=720)),
    "h264-480p": PresetSpec(video=VideoSpec(codec="h264", max_bitrate_kbps=2000, max_height=480)),
    "hevc-1080p": PresetSpec(video=VideoSpec(codec="hevc", quality=26, max_bitrate_kbps=6000)),
    "av1-1080p": PresetSpec(video=VideoSpec(codec="av1", quality=32, max_bitrate_kbps=6000)),
    "audio-aac": PresetSpec(container="m4a", video=None, audio=AudioSpec()),
}
# names that existed before presets, still accepted where a name is looked up
LEGACY_ALIASES = {"optimized-720p": "h264-720p"}


def builtin(name: str) -> PresetSpec:
    """The built-in preset called `name`; BadRequest naming the known ones when there is none."""
    spec = BUILTIN_PRESETS.get(LEGACY_ALIASES.get(name, name))
    if spec is None:
        known = sorted(BUILTIN_PRESETS)
        raise BadRequest(
            f"Unknown preset {name!r}; use one of: {', '.join(known)}.",
            details={"preset": name, "allowed": known},
        )
    return spec


def validate_preset(spec: PresetSpec) -> PresetSpec:
    """The spec, type-checked again and normalized; BadRequest when a rule is broken.

    A Struct built in Python skips msgspec's checks, so every field is checked again here, then
    the rules between fields, so that every preset that passes actually encodes.
    """
    spec = _normalized(spec)
    container = CONTAINERS[spec.container]
    video, audio = spec.video, spec.audio
    if video is None and audio is None:
        _refuse("A preset needs video, audio or both; both are null.", "video")
    if video is not None and video.codec not in container.video_codecs:
        allowed = ", ".join(sorted(container.video_codecs)) or "no video (set video to null)"
        _refuse(
            f"Container {spec.container} cannot carry {video.codec} video; it takes: {allowed}.",
            "video.codec",
        )
    if audio is not None and audio.codec not in container.audio_codecs:
        allowed = ", ".join(sorted(container.audio_codecs))
        _refuse(
            f"Container {spec.container} cannot carry {audio.codec} audio; it takes: {allowed}.",
            "audio.codec",
        )
    if spec.subtitles and not container.keeps_subtitles:
        _refuse(
            f"Subtitles can be kept in mkv only, not in {spec.container}; "
            "set subtitles to false or container to mkv.",
            "subtitles",
        )
    if video is not None:
        _check_video_limits(video)
        _check_video_options(video, spec.copy_when_compatible)
    if audio is not None and audio.codec == "opus":
        most = OPUS_MAX_KBPS_PER_CHANNEL * audio.channels
        if audio.bitrate_kbps > most:
            _refuse(
                f"Opus takes at most {most} kb/s for {audio.channels} channel(s); "
                f"{audio.bitrate_kbps} kb/s is too much.",
                "audio.bitrate_kbps",
            )
    return spec


def _check_video_limits(video: VideoSpec) -> None:
    low, high = CRF_RANGE[video.codec]
    if not low <= video.quality <= high:
        _refuse(
            f"quality {video.quality} is outside {low}-{high}, the CRF range for {video.codec}.",
            "video.quality",
        )
    rate, most = video.max_bitrate_kbps, MAX_KBPS[video.codec]
    if rate is not None and rate > most:
        _refuse(
            f"max_bitrate_kbps {rate} is above {most}, the most {video.codec} takes.",
            "video.max_bitrate_kbps",
        )


def _check_video_options(video: VideoSpec, copy_when_compatible: bool) -> None:
    if video.codec != "h264":
        for name in ("profile", "level"):
            if getattr(video, name) is not None:
                _refuse(f"{name} is for h264 video only, not {video.codec}.", f"video.{name}")
    if video.buffer_kbps is not None and video.max_bitrate_kbps is None:
        _refuse("buffer_kbps needs max_bitrate_kbps (the rate it buffers).", "video.buffer_kbps")
    chosen = [name for name in ("profile", "level", "keyframe_interval") if getattr(video, name)]
    if chosen and copy_when_compatible:
        _refuse(
            f"A copied stream keeps its own {', '.join(chosen)}: set copy_when_compatible to "
            "false to encode with them.",
            "copy_when_compatible",
        )


def spec_fingerprint(spec: PresetSpec) -> str:
    """A short stable hash of the spec's canonical JSON: equal specs, equal fingerprints."""
    shape = msgspec.to_builtins(_normalized(spec))
    video = shape.get("video")
    if isinstance(video, dict):
        for name in _LATER_VIDEO_FIELDS:
            if video.get(name) is None:
                video.pop(name, None)
    canonical = msgspec.json.encode(shape, order="sorted")
    return hashlib.sha256(_FINGERPRINT_VERSION + canonical).hexdigest()[:16]


def preset_profile(name: str, spec: PresetSpec) -> Profile:
    """The Profile that the plan and argv code use for a preset (validated here again)."""
    spec = validate_preset(spec)
    video, audio = spec.video, spec.audio
    profile = Profile(
        name=name,
        video_codec=None,
        audio_codec=None,
        allow_copy=spec.copy_when_compatible,
        keep_subtitles=spec.subtitles,
    )
    if video is not None:
        max_rate = video.max_bitrate_kbps * 1000 if video.max_bitrate_kbps is not None else None
        profile = msgspec.structs.replace(
            profile,
            video_codec=video.codec,
            encoder=VIDEO_ENCODERS[video.codec],
            preset=_encoder_preset(video.codec, video.speed),
            crf=video.quality,
            max_video_bitrate=max_rate,
            bufsize=_buffer(video, max_rate),
            max_width=max_width(video.max_height),
            max_height=video.max_height,
            max_fps=video.max_fps,
            deinterlace=video.deinterlace,
            h264_profile=video.profile or "high",
            h264_level=video.level or _h264_level(video.max_height),
            gop=video.keyframe_interval,
        )
    if audio is not None:
        profile = msgspec.structs.replace(
            profile,
            audio_codec=audio.codec,
            audio_encoder=AUDIO_ENCODERS[audio.codec],
            audio_bitrate=audio.bitrate_kbps * 1000,
            audio_channels=audio.channels,
        )
    return profile


def max_width(max_height: int) -> int:
    """The width cap that goes with a height cap: its 16:9 width, rounded to even."""
    return round(max_height * 16 / 9 / 2) * 2


def _normalized(spec: PresetSpec) -> PresetSpec:
    """Every field checked against its type and bounds (30 becomes 30.0 where a float is due)."""
    try:
        return msgspec.convert(msgspec.to_builtins(spec), PresetSpec)
    except (msgspec.ValidationError, TypeError) as exc:
        raise BadRequest(f"Invalid preset: {exc}", details={"error": str(exc)}) from exc


def _buffer(video: VideoSpec, max_rate: int | None) -> int | None:
    if max_rate is None:
        return None
    return video.buffer_kbps * 1000 if video.buffer_kbps is not None else 2 * max_rate


def _encoder_preset(codec: str, speed: str) -> str:
    return str(SVT_AV1_PRESETS[speed]) if codec == "av1" else speed


def _h264_level(max_height: int) -> str:
    # the lowest level whose frame size holds the 16:9 cap (4.1 up to 1080p, as always)
    if max_height <= 1080:
        return "4.1"
    if max_height <= 1440:
        return "5.0"
    if max_height <= 2160:
        return "5.1"
    return "6.1"


def _refuse(message: str, field: str) -> NoReturn:
    raise BadRequest(message, details={"field": field})


def _legacy_profile(name: str, spec: PresetSpec) -> Profile:
    # looked up by name, the container is chosen apart (Streamyfin's fileExtension): keep
    # subtitles whenever that container carries them, as before presets existed
    return msgspec.structs.replace(preset_profile(name, spec), keep_subtitles=True)


PROFILES: dict[str, Profile] = {
    name: _legacy_profile(name, builtin(name)) for name in [*BUILTIN_PRESETS, *LEGACY_ALIASES]
}
DEFAULT_PROFILE = PROFILES[DEFAULT_PRESET]


def get_profile(name: str) -> Profile:
    """The profile of the built-in preset `name`; BadRequest naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise BadRequest(
            f"Unknown profile {name!r}; use one of: {known}.",
            details={"profile": name, "allowed": sorted(PROFILES)},
        ) from None


def within_ceilings(
    spec: PresetSpec, *, max_height: int | None, max_video_bitrate_kbps: int | None
) -> PresetSpec:
    """The spec lowered to the fleet's quality ceilings (never raised); a spec already within
    them comes back as it is, so its fingerprint (and shared renditions) stay the same."""
    video = spec.video
    if video is None:
        return spec
    changes: dict[str, int] = {}
    if max_height is not None and video.max_height > max_height:
        changes["max_height"] = max_height
    if max_video_bitrate_kbps is not None and (
        video.max_bitrate_kbps is None or video.max_bitrate_kbps > max_video_bitrate_kbps
    ):
        changes["max_bitrate_kbps"] = min(max_video_bitrate_kbps, MAX_KBPS[video.codec])
    if not changes:
        return spec
    return msgspec.structs.replace(spec, video=msgspec.structs.replace(video, **changes))
