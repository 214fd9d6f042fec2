"""OpenEncoder's preset `data`, `{"raw": ["-vf scale=-2:720", "-c:v libx264", ...]}`, read
against an allow-list into the preset spec, and a spec written back as such options.

No option reaches ffmpeg: each allowed one sets a field of the spec (whose values are enums and
bounded numbers), or is checked and left to the fleet (`-minrate`, `-keyint_min`, `-movflags`,
`-pix_fmt yuv420p`: what the fleet does anyway), or is refused with a 400 that names it.
`-b:v` caps the rate like `-maxrate` (the fleet encodes at a quality, CRF, within the cap).
OpenEncoder's own presets read as they are: their `-x264opts scenecut=0:open_gop=0:min-keyint=72:
keyint=72` sets the keyframe interval (the other keys are checked and left to the fleet), and a
VP9 preset's `-level:v` (a VP9 level) is checked and dropped with VP9 itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import msgspec

from shared.errors import BadRequest
from shared.media import PresetSpec
from shared.media.presets import H264Level, validate_preset
from shared.media.profiles import CONTAINERS

_VIDEO_CODECS = {
    "libx264": "h264",
    "h264": "h264",
    "libx265": "hevc",
    "hevc": "hevc",
    "libsvtav1": "av1",
    "libaom-av1": "av1",
    "av1": "av1",
    # This fleet encodes no VP9: webm outputs carry AV1, the codec that replaces it.
    "libvpx-vp9": "av1",
    "vp9": "av1",
}
_VIDEO_ENCODER = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}
_AUDIO_CODECS = {"aac": "aac", "libfdk_aac": "aac", "libopus": "opus", "opus": "opus"}
_AUDIO_ENCODER = {"aac": "aac", "opus": "libopus"}
_FORMATS = {"mp4": "mp4", "webm": "webm", "matroska": "mkv", "mkv": "mkv", "mpegts": "ts"}
_MUXER = {"mp4": "mp4", "fmp4": "mp4", "webm": "webm", "mkv": "matroska", "ts": "mpegts"}
_SPEEDS = {"ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"}
_SPEEDS |= {"veryslow"}
_PROFILES = {"baseline", "main", "high"}
# ASCII digits only, and few of them: int() refuses "²" (which str.isdigit() accepts) and a
# number past Python's int-string limit, float() makes 1e400 infinite; each must be a 400.
_SCALE = re.compile(r"^scale=(-[12]|[0-9]{2,5}):([0-9]{3,4})$", re.ASCII)
_RATE = re.compile(r"^([0-9]{1,9}(?:\.[0-9]{1,6})?)([kKmM]?)$", re.ASCII)
_COUNT = re.compile(r"^[0-9]{1,9}$", re.ASCII)
_LEVELS = set(get_args(H264Level))
_MAX_OPTIONS = 64


class PresetData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenEncoder's preset data: ffmpeg options, one option (and its value) per item."""

    raw: list[str]


@dataclass
class _Reading:
    """What the options said so far."""

    container: str | None = None
    video: dict[str, Any] = field(default_factory=dict)
    audio: dict[str, Any] = field(default_factory=dict)
    no_audio: bool = False
    vp9: bool = False  # asked for VP9: webm unless a format is given
    # -x264opts keyint=..., used when -g does not say
    keyint: int | None = None


def _refuse(option: str, why: str) -> BadRequest:
    if len(option) > 80:  # a 5,000-digit value is named, not repeated
        option = option[:77] + "..."
    return BadRequest(f"Preset option {option!r} is not allowed: {why}", details={"option": option})


def _kbps(option: str, value: str, low: int = 0, high: int = 400_000) -> int:
    """A bit rate in kb/s, from `low` to `high`."""
    match = _RATE.match(value)
    if match is None:
        raise _refuse(f"{option} {value}", "give a bit rate such as 3000k or 3M.")
    number, unit = float(match.group(1)), match.group(2).lower()
    kbps = round(number * {"": 0.001, "k": 1, "m": 1000}[unit])
    if not low <= kbps <= high:
        raise _refuse(f"{option} {value}", f"give a bit rate from {low}k to {high}k.")
    return kbps


def _count(option: str, value: str, low: int, high: int) -> int:
    if not _COUNT.match(value) or not low <= int(value) <= high:
        raise _refuse(f"{option} {value}", f"give a whole number from {low} to {high}.")
    return int(value)


def _one_of(option: str, value: str, allowed: set[str] | dict[str, str]) -> str:
    if value not in allowed:
        known = ", ".join(sorted(allowed))
        raise _refuse(f"{option} {value}", f"use one of {known}.")
    return allowed[value] if isinstance(allowed, dict) else value


def _scale(r: _Reading, option: str, value: str) -> None:
    match = _SCALE.match(value)
    if match is None:
        raise _refuse(f"{option} {value}", "the only filter is scale=-2:<height>.")
    r.video["max_height"] = _count(option, match.group(2), 144, 4320)


def _video_codec(r: _Reading, option: str, value: str) -> None:
    r.video["codec"] = _one_of(option, value, _VIDEO_CODECS)
    r.vp9 = value in ("libvpx-vp9", "vp9")


def _bitrate(r: _Reading, option: str, value: str) -> None:
    # A target (-b:v) or a cap (-maxrate): both cap the rate; the larger one wins.
    kbps = _kbps(option, value, 100, 200_000)
    r.video["max_bitrate_kbps"] = max(kbps, r.video.get("max_bitrate_kbps", 0))


def _checked(check: Callable[[str, str], object]) -> Callable[[_Reading, str, str], None]:
    """An option that is checked and left to the fleet (the spec has no field for it)."""

    def handle(r: _Reading, option: str, value: str) -> None:
        check(option, value)

    return handle


def _level(r: _Reading, option: str, value: str) -> None:
    level = value if "." in value else f"{value}.0"  # x264 reads 3 as 3.0
    r.video["level"] = _one_of(option, level, _LEVELS)


# -x264opts keys: each value's bounds; `keyint` sets the keyframe interval, the rest are checked
# and left to the fleet (it places keyframes itself, on closed GOPs).
_X264_KEYS = {
    "keyint": (1, 1000),
    "min-keyint": (1, 1000),
    "scenecut": (0, 100),
    "open_gop": (0, 1),
    "bframes": (0, 16),
    "ref": (1, 16),
}


def _x264opts(r: _Reading, option: str, value: str) -> None:
    for pair in value.split(":"):
        key, equals, number = pair.partition("=")
        if key not in _X264_KEYS or not equals:
            known = ", ".join(f"{k}=N" for k in sorted(_X264_KEYS))
            raise _refuse(f"{option} {pair}", f"the allowed keys are {known}.")
        low, high = _X264_KEYS[key]
        count = _count(f"{option} {key}", number, low, high)
        if key == "keyint":
            r.keyint = count


_WITH_VALUE: dict[str, Callable[[_Reading, str, str], None]] = {
    "-vf": _scale,
    "-filter:v": _scale,
    "-c:v": _video_codec,
    "-vcodec": _video_codec,
    "-b:v": _bitrate,
    "-maxrate": _bitrate,
    "-minrate": _checked(_kbps),
    "-bufsize": lambda r, o, v: r.video.__setitem__("buffer_kbps", _kbps(o, v, 100, 400_000)),
    "-crf": lambda r, o, v: r.video.__setitem__("quality", _count(o, v, 1, 63)),
    "-preset": lambda r, o, v: r.video.__setitem__("speed", _one_of(o, v, _SPEEDS)),
    "-profile:v": lambda r, o, v: r.video.__setitem__("profile", _one_of(o, v, _PROFILES)),
    "-level": _level,
    "-level:v": _level,
    "-g": lambda r, o, v: r.video.__setitem__("keyframe_interval", _count(o, v, 1, 1000)),
    "-x264opts": _x264opts,
    "-x264-params": _x264opts,
    "-keyint_min": _checked(lambda o, v: _count(o, v, 1, 1000)),
    "-pix_fmt": _checked(lambda o, v: _one_of(o, v, {"yuv420p"})),
    "-r": lambda r, o, v: r.video.__setitem__("max_fps", float(_count(o, v, 1, 240))),
    "-c:a": lambda r, o, v: r.audio.__setitem__("codec", _one_of(o, v, _AUDIO_CODECS)),
    "-acodec": lambda r, o, v: r.audio.__setitem__("codec", _one_of(o, v, _AUDIO_CODECS)),
    "-b:a": lambda r, o, v: r.audio.__setitem__("bitrate_kbps", _kbps(o, v, 32, 512)),
    "-ac": lambda r, o, v: r.audio.__setitem__("channels", int(_one_of(o, v, {"1", "2", "6"}))),
    "-f": lambda r, o, v: setattr(r, "container", _one_of(o, v, _FORMATS)),
    "-movflags": _checked(lambda o, v: _one_of(o, v, {"+faststart", "faststart"})),
}
_FLAGS: dict[str, Callable[[_Reading], None]] = {
    "-y": lambda r: None,
    "-an": lambda r: setattr(r, "no_audio", True),
}


def parse_data(data: str) -> PresetSpec:
    """The spec OpenEncoder's preset `data` (a JSON string) describes; 400 naming the first
    option that is not allowed, or the rule the options break together."""
    try:
        options = msgspec.json.decode(data, type=PresetData).raw
    except msgspec.DecodeError as exc:
        raise BadRequest(
            f'`data` must be a JSON string like {{"raw": ["-c:v libx264", ...]}}: {exc}',
            details={"field": "data"},
        ) from None
    tokens = [token for item in options[:_MAX_OPTIONS] for token in item.split()]
    if len(options) > _MAX_OPTIONS:
        raise BadRequest(f"`data` has more than {_MAX_OPTIONS} options.")
    reading = _Reading()
    at = 0
    while at < len(tokens):
        option = tokens[at]
        if option in _FLAGS:
            _FLAGS[option](reading)
            at += 1
            continue
        handle = _WITH_VALUE.get(option)
        if handle is None:
            allowed = ", ".join(sorted([*_WITH_VALUE, *_FLAGS]))
            raise _refuse(option, f"the allowed options are {allowed}.")
        if at + 1 >= len(tokens):
            raise _refuse(option, "it needs a value.")
        handle(reading, option, tokens[at + 1])
        at += 2
    return _spec(reading)


def _spec(r: _Reading) -> PresetSpec:
    if r.keyint is not None:
        r.video.setdefault("keyframe_interval", r.keyint)
    if r.vp9:
        r.video.pop("level", None)  # a VP9 level says nothing of the AV1 encoded instead
    container = r.container or ("webm" if r.vp9 else "mp4")
    default_audio = "opus" if container == "webm" else "aac"
    shape: dict[str, Any] = {
        "container": container,
        "video": {"codec": "h264", **r.video},
        "audio": None if r.no_audio else {"codec": default_audio, **r.audio},
        "copy_when_compatible": False,  # the options describe an encode
    }
    try:
        spec = msgspec.convert(shape, PresetSpec)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"The preset's options are out of range: {exc}") from None
    return validate_preset(spec)


def render_data(spec: PresetSpec) -> str:
    """The spec as OpenEncoder's preset `data`: the options this fleet's encode amounts to."""
    raw: list[str] = []
    video, audio = spec.video, spec.audio
    if video is not None:
        raw += [f"-vf scale=-2:{video.max_height}", f"-c:v {_VIDEO_ENCODER[video.codec]}"]
        if video.codec == "h264":
            raw.append(f"-profile:v {video.profile or 'high'}")
            if video.level is not None:
                raw.append(f"-level {video.level}")
        raw += [f"-crf {video.quality}", f"-preset {video.speed}", "-pix_fmt yuv420p"]
        if video.keyframe_interval is not None:
            raw.append(f"-g {video.keyframe_interval}")
        if video.max_bitrate_kbps is not None:
            raw.append(f"-maxrate {video.max_bitrate_kbps}k")
        if video.buffer_kbps is not None:
            raw.append(f"-bufsize {video.buffer_kbps}k")
        if video.max_fps is not None:
            raw.append(f"-r {round(video.max_fps)}")
    if audio is None:
        raw.append("-an")
    else:
        raw += [
            f"-c:a {_AUDIO_ENCODER[audio.codec]}",
            f"-b:a {audio.bitrate_kbps}k",
            f"-ac {audio.channels}",
        ]
    raw.append(f"-f {_MUXER.get(spec.container, spec.container)}")
    return msgspec.json.encode(PresetData(raw=raw)).decode()


def output_name(name: str, spec: PresetSpec) -> str:
    """The file name a preset's output gets (OpenEncoder's `output`)."""
    return name + CONTAINERS[spec.container].extension
