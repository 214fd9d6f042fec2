"""Rendition profiles (what a transcode produces) and output containers (how it is packaged)."""

from __future__ import annotations

import msgspec

from shared.errors import BadRequest


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    """How a rendition is encoded, and the limits under which a source is copied instead."""

    name: str
    video_codec: str = "h264"  # codec of the rendition; a source in it may be copied
    encoder: str = "libx264"
    preset: str = "veryfast"
    crf: int = 23
    max_video_bitrate: int = 8_000_000  # bits/s: -maxrate, and the most a copied source may use
    bufsize: int = 16_000_000
    max_width: int = 1920
    max_height: int = 1080
    pix_fmt: str = "yuv420p"
    h264_profile: str = "high"
    h264_level: str = "4.1"
    audio_codec: str = "aac"
    audio_encoder: str = "aac"
    audio_bitrate: int = 160_000
    audio_channels: int = 2
    allow_copy: bool = True


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An output container: its ffmpeg muxer, MIME type, file extension and what it can carry."""

    name: str
    muxer: str
    mime: str
    extension: str
    faststart: bool = False  # moov atom first, so players start before the download ends
    keeps_subtitles: bool = False


DEFAULT_PROFILE = Profile(name="optimized")

PROFILES: dict[str, Profile] = {
    DEFAULT_PROFILE.name: DEFAULT_PROFILE,
    "optimized-720p": Profile(
        name="optimized-720p",
        max_width=1280,
        max_height=720,
        max_video_bitrate=4_000_000,
        bufsize=8_000_000,
    ),
}

CONTAINERS: dict[str, ContainerSpec] = {
    "mp4": ContainerSpec(
        name="mp4",
        muxer="mp4",
        mime="video/mp4",
        extension=".mp4",
        faststart=True,
        keeps_subtitles=False,
    ),
    "mkv": ContainerSpec(
        name="mkv",
        muxer="matroska",
        mime="video/x-matroska",
        extension=".mkv",
        faststart=False,
        keeps_subtitles=True,
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called `name`; BadRequest naming the known ones when there is none."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise BadRequest(
            f"Unknown profile {name!r}; use one of: {known}.",
            details={"profile": name, "allowed": sorted(PROFILES)},
        ) from None


def get_container(ext: str) -> ContainerSpec:
    """The container for an extension ("mp4", ".MP4", "mkv"); BadRequest for anything else."""
    key = ext.strip().lower().removeprefix(".")
    try:
        return CONTAINERS[key]
    except KeyError:
        known = ", ".join(sorted(CONTAINERS))
        raise BadRequest(
            f"Unsupported container {ext!r}; use one of: {known}.",
            details={"container": ext, "allowed": sorted(CONTAINERS)},
        ) from None
